//! Integration tests: real PostgreSQL, real processes, real HTTP.

mod browser;
mod burst;
mod clerk_events;
mod dashboard;
mod dashboard_detail;
mod fuzz;
mod ingress;
mod ingress_limits;
mod magic;
mod migrations;
mod platform;
mod privacy;
mod retention;
mod saga;
mod saga_succeed;
mod send;
