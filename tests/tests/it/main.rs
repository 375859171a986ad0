//! Integration tests: real PostgreSQL, real processes, real HTTP.

mod browser;
mod clerk_events;
mod dashboard;
mod ingress;
mod plans;
mod processes;
mod queue;
mod saga;
