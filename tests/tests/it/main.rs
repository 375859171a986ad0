//! Integration tests: real PostgreSQL, real processes, real HTTP.

mod clerk_events;
mod ingress;
mod plans;
mod platform;
mod processes;
mod queue;
mod saga;
