//! Integration tests: real PostgreSQL, real processes, real HTTP.

mod burst;
mod clerk_events;
mod ingress;
mod magic;
mod migrations;
mod platform;
mod saga;
mod send;
