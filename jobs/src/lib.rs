//! A durable job queue on PostgreSQL under apalis 1.0: our storage backend, transactional
//! enqueue, job kinds and retry policy, operations, maintenance services and wake-ups.

pub mod admin;
pub mod backend;
pub mod db;
pub mod enqueue;
pub mod error;
pub mod fresh_db;
pub mod job;
pub mod local_pg;
pub mod maintenance;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod redact;
pub mod sampler;
pub mod wait;

pub use backend::{PgBackend, QueueConfig};
pub use enqueue::{Enqueued, complete, discard, enqueue, enqueue_many, hold};
pub use error::JobError;
pub use job::{AnyJob, Cancellation, JobArgs, JobContext, JobKind, JobState, NewJob};
pub use policy::{KindOptions, Kinds, RetryPolicy};
