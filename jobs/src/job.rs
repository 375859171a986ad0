//! What a job is: its states, how one is described for enqueue, how its arguments are typed,
//! and the context a handler sees while it runs.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use apalis_core::task::Task;
use apalis_core::task::from_request::FromRequest;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::policy::KindOptions;

/// A job's state, as River names them. Finished states: `completed`, `cancelled`, `discarded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Runnable now.
    Available,
    /// Waiting for a future `run_at` (enqueued for later, or snoozed).
    Scheduled,
    /// Claimed by a worker, under a lease.
    Running,
    /// Failed an attempt; runs again at `run_at` (its backoff).
    Retryable,
    /// Finished successfully.
    Completed,
    /// Cancelled by an operator or its handler.
    Cancelled,
    /// Failed for good: a permanent error or attempts exhausted.
    Discarded,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Available,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Discarded,
    ];

    /// The name used in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
            JobState::Discarded => "discarded",
        }
    }

    /// True for `completed`, `cancelled` and `discarded`.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Discarded
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown job state `{s}`"))
    }
}

/// A job kind with typed arguments: its name in the `kind` column and its default options.
pub trait JobKind: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind's name, stored in `job.kind`; never rename it once jobs exist.
    const KIND: &'static str;

    /// Queue, attempts, backoff, timeout and uniqueness for this kind.
    fn options() -> KindOptions {
        KindOptions::default()
    }
}

/// Arguments a queue's worker can decode from a row's `kind` and `args`.
pub trait JobArgs: Sized + Send + Sync + 'static {
    /// Builds the arguments, or says why the row cannot be run (it is then discarded).
    fn decode(kind: &str, args: serde_json::Value) -> Result<Self, String>;
}

impl<T: JobKind> JobArgs for T {
    fn decode(kind: &str, args: serde_json::Value) -> Result<Self, String> {
        if kind != T::KIND {
            return Err(format!("a worker for `{}` fetched a `{kind}` job", T::KIND));
        }
        serde_json::from_value(args).map_err(|e| format!("undecodable `{kind}` arguments: {e}"))
    }
}

/// Any job, undecoded: for workers that dispatch on `kind` themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct AnyJob {
    /// The `kind` column.
    pub kind: String,
    /// The `args` column.
    pub args: serde_json::Value,
}

impl JobArgs for AnyJob {
    fn decode(kind: &str, args: serde_json::Value) -> Result<Self, String> {
        Ok(AnyJob {
            kind: kind.to_owned(),
            args,
        })
    }
}

/// A job to enqueue. Build it with [`NewJob::new`] or [`NewJob::of`], then adjust.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The kind's name.
    pub kind: String,
    /// The queue it runs on.
    pub queue: String,
    /// Arguments, as JSON.
    pub args: serde_json::Value,
    /// Lower runs first; 0 by default.
    pub priority: i16,
    /// Run no earlier than this; `None` = now.
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts before the job is discarded.
    pub max_attempts: i32,
    /// At most one live job (available, scheduled, running, retryable) holds a key.
    pub unique_key: Option<String>,
    /// The key also stays taken by a completed job.
    pub unique_completed: bool,
}

impl NewJob {
    /// A job of `kind` with JSON arguments and default options.
    pub fn new(kind: impl Into<String>, args: serde_json::Value) -> Self {
        let defaults = KindOptions::default();
        NewJob {
            kind: kind.into(),
            queue: defaults.queue,
            args,
            priority: 0,
            run_at: None,
            max_attempts: defaults.max_attempts,
            unique_key: None,
            unique_completed: defaults.unique_completed,
        }
    }

    /// A typed job with its kind's options.
    pub fn of<T: JobKind>(job: &T) -> Self {
        let options = T::options();
        NewJob {
            kind: T::KIND.to_owned(),
            queue: options.queue,
            args: serde_json::to_value(job).expect("job arguments serialize to JSON"),
            priority: 0,
            run_at: None,
            max_attempts: options.max_attempts,
            unique_key: None,
            unique_completed: options.unique_completed,
        }
    }

    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Sets the unique key.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Runs the job no earlier than `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Sets the attempts before discard.
    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the priority (lower runs first).
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }
}

/// Set when an operator cancels a running job; the runtime stops the handler.
#[derive(Debug, Clone, Default)]
pub struct Cancellation(Arc<(AtomicBool, Notify)>);

impl Cancellation {
    /// Signals the job; idempotent.
    pub fn cancel(&self) {
        self.0.0.store(true, Ordering::SeqCst);
        self.0.1.notify_waiters();
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.0.load(Ordering::SeqCst)
    }

    /// Resolves when the job is cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// What a handler knows about the attempt it runs: extract it as a handler argument.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job's id.
    pub id: i64,
    /// This attempt's number, from 1; also the fencing token for completing the job.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The job's kind.
    pub kind: String,
    /// The job's queue.
    pub queue: String,
    /// The worker (lease owner) running it.
    pub worker: String,
    /// Set when an operator cancels the job.
    pub cancellation: Cancellation,
    /// Set by [`JobContext::settle`]: the handler recorded the outcome itself.
    pub(crate) settled: Arc<AtomicBool>,
}

impl JobContext {
    /// Tells the runtime that the handler completed or discarded this attempt's job in its own
    /// transaction ([`crate::complete`], [`crate::discard`]) and that transaction committed: the
    /// runtime then frees the job's slot without writing the outcome again. Call it only after
    /// the commit.
    pub fn settle(&self) {
        self.settled.store(true, Ordering::SeqCst);
    }

    /// True once [`JobContext::settle`] was called.
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst)
    }
}

impl<Args: Sync> FromRequest<Task<Args>> for JobContext {
    type Error = apalis_core::task::data::MissingDataError;

    async fn from_request(task: &Task<Args>) -> Result<Self, Self::Error> {
        task.ctx().data().get_checked::<JobContext>().cloned()
    }
}
