//! The queue's tests: a throwaway PostgreSQL, in-process workers and worker processes; no
//! other crate of ours.

mod maintenance;
mod outcomes;
mod plans;
mod processes;
mod queue;
mod redact;
mod shutdown;
mod support;
