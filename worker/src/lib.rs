//! Runs jobs: one apalis worker per queue on our PostgreSQL backend, the handlers of each job
//! kind, the provider clients they call, and the queue's maintenance services.

pub mod app;
pub mod handlers;
pub mod internal;
pub mod provider;
pub mod runtime;
pub mod saga;
pub mod settings;
pub mod sizing;
