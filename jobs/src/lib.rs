//! The domain and all SQL of onboard: the durable job queue (our PostgreSQL storage under
//! apalis 1.0), its maintenance services and operations.

pub mod admin;
pub mod api_key;
pub mod backend;
pub mod clerk_event;
pub mod db;
pub mod directory;
pub mod enqueue;
pub mod error;
pub mod inbox;
pub mod job;
pub mod local_pg;
pub mod maintenance;
pub mod notify;
pub mod onboarding;
pub mod permissions;
pub mod policy;
pub mod saga;

pub use backend::{PgBackend, QueueConfig};
pub use enqueue::{Enqueued, complete, discard, enqueue, enqueue_many};
pub use error::JobError;
pub use job::{AnyJob, Cancellation, JobArgs, JobContext, JobKind, JobState, NewJob};
pub use policy::{KindOptions, Kinds, RetryPolicy};
