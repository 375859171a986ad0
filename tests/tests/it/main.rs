//! Integration tests: real PostgreSQL, real processes, real HTTP.

mod queue;
mod ingress;
mod processes;
mod plans;
mod clerk_events;
mod saga;
