//! Integration tests: real PostgreSQL, real processes, real HTTP.

mod clerk_events;
mod fuzz;
mod ingress;
mod ingress_limits;
mod plans;
mod privacy;
mod processes;
mod queue;
mod retention;
mod saga;
mod secrets;
