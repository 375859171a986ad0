//! Integration tests: real PostgreSQL, real processes, real HTTP.

mod clerk_events;
mod ingress;
mod magic;
mod migrations;
mod plans;
mod processes;
mod queue;
mod saga;
mod send;
