//! Integration tests: real PostgreSQL, real processes, real HTTP.

mod clerk_events;
mod ingress;
mod saga;
