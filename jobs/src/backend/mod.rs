//! Our PostgreSQL storage behind apalis 1.0's `Backend`: apalis runs the handlers, this module
//! claims rows, holds their leases and records each attempt's outcome.
//!
//! One backend serves one queue for one apalis worker. On first poll it spawns its driver:
//! a fetch loop (batched `FOR UPDATE SKIP LOCKED`, woken by LISTEN/NOTIFY, a timer for the
//! earliest future `run_at`, and a fallback poll), an acker (batched, fenced by attempt), a
//! heartbeat (lease extension, cancellation) and a listener. Database errors are retried inside
//! the driver, so the apalis worker never dies of one.

mod ack;
mod drain;
mod fetch;
mod heartbeat;

/// The NOTIFY channels the workers listen on.
pub mod heartbeat_channels {
    pub use super::heartbeat::{CANCEL_CHANNEL, JOB_CHANNEL};
}

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;

pub use ack::{OutcomeLayer, OutcomeService};

/// The hot statements, for plan checks: the fetch (`$1` queue, `$2` owner, `$3` lease ms,
/// `$4` limit) and the batched completion (`$1` ids, `$2` attempts).
pub mod sql {
    pub use super::ack::COMPLETE;
    pub use super::fetch::FETCH;
}

use crate::job::{Cancellation, JobArgs};
use crate::policy::Kinds;

/// The default cap on the delay an outcome may set: one day.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// How one queue's worker fetches and runs jobs.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// The queue to serve.
    pub queue: String,
    /// Rows claimed per fetch at most.
    pub batch_size: usize,
    /// Jobs claimed by this worker and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// Fetch at least this often even with no notification (LISTEN can be unavailable).
    pub poll_interval: Duration,
    /// Lease of a claimed job; raised to twice the longest kind timeout when shorter.
    pub lease: Duration,
    /// Per-kind options: backoff and timeout.
    pub kinds: Kinds,
    /// Outcomes acknowledged per statement at most.
    pub ack_batch: usize,
    /// Fetch statements in flight at once (each claims up to `batch_size`).
    pub fetchers: usize,
    /// The longest delay an outcome may set (`RetryAfter`, `Snooze`, backoff): longer ones are
    /// cut to it.
    pub max_delay: Duration,
}

impl QueueConfig {
    /// Defaults for `queue`: batches of 100, 200 in flight, 1 s fallback poll, 30 s lease.
    pub fn new(queue: impl Into<String>) -> Self {
        QueueConfig {
            queue: queue.into(),
            batch_size: 100,
            max_in_flight: 200,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            kinds: Kinds::default(),
            ack_batch: 1000,
            fetchers: 2,
            max_delay: DEFAULT_MAX_DELAY,
        }
    }

    /// Sets the kinds registry.
    pub fn kinds(mut self, kinds: Kinds) -> Self {
        self.kinds = kinds;
        self
    }

    /// Connections this queue's backend may hold at once: one per job in flight (a handler
    /// holds at most one), one per fetcher, and the acker's, heartbeat's and listener's.
    pub fn connections(&self) -> u32 {
        let n = self.max_in_flight.max(1) + self.fetchers.max(1) + 3;
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The lease actually used: at least twice the longest kind timeout.
    pub fn effective_lease(&self) -> Duration {
        self.lease.max(self.kinds.longest_timeout() * 2)
    }
}

/// State shared by the backend, its driver tasks and its outcome layer.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) config: QueueConfig,
    /// This backend's lease owner: unique per process start and per backend instance.
    pub(crate) owner: String,
    /// Claimed jobs not yet acknowledged, with their cancellation signal.
    pub(crate) in_flight: Mutex<HashMap<i64, Cancellation>>,
    /// Free in-flight slots.
    pub(crate) capacity: Semaphore,
    /// Poked to fetch now.
    pub(crate) wake: Notify,
    /// Set when the backend closes or is dropped.
    pub(crate) stop: Cancellation,
    /// Set at the shutdown signal (and by `stop`'s causes): the fetchers end.
    pub(crate) draining: Cancellation,
    /// Claimed jobs no handler has started yet, with their attempt: handed back at shutdown.
    pub(crate) unstarted: Mutex<HashMap<i64, i32>>,
    /// Set once the unstarted jobs have been handed back.
    pub(crate) drained: tokio::sync::OnceCell<()>,
    pub(crate) acks: mpsc::UnboundedSender<ack::AckMessage>,
    pub(crate) fetchers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn lease_ms(&self) -> i64 {
        i64::try_from(self.config.effective_lease().as_millis()).unwrap_or(i64::MAX)
    }
}

/// An apalis backend over `onboard.job` for one queue. Build with [`PgBackend::new`].
pub struct PgBackend<Args> {
    shared: Arc<Shared>,
    tasks: mpsc::UnboundedReceiver<Task<Args>>,
    driver: Option<Driver<Args>>,
    closing: Option<BoxFuture<'static, ()>>,
}

struct Driver<Args> {
    tasks: mpsc::UnboundedSender<Task<Args>>,
    acks: mpsc::UnboundedReceiver<ack::AckMessage>,
}

impl<Args> std::fmt::Debug for PgBackend<Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("queue", &self.shared.config.queue)
            .field("owner", &self.shared.owner)
            .finish_non_exhaustive()
    }
}

impl<Args: JobArgs> PgBackend<Args> {
    /// A backend for `config.queue`. Spawns nothing until the worker first polls it.
    pub fn new(pool: PgPool, config: QueueConfig) -> Self {
        let (tasks_tx, tasks) = mpsc::unbounded_channel();
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let owner = worker_id(&config.queue);
        let capacity = Semaphore::new(config.max_in_flight.max(1));
        let shared = Arc::new(Shared {
            pool,
            config,
            owner,
            in_flight: Mutex::default(),
            capacity,
            wake: Notify::new(),
            stop: Cancellation::default(),
            draining: Cancellation::default(),
            unstarted: Mutex::default(),
            drained: tokio::sync::OnceCell::new(),
            acks: acks_tx,
            fetchers: Mutex::default(),
        });
        PgBackend {
            shared,
            tasks,
            driver: Some(Driver {
                tasks: tasks_tx,
                acks,
            }),
            closing: None,
        }
    }

    /// The lease owner id this backend claims jobs under.
    pub fn worker_id(&self) -> &str {
        &self.shared.owner
    }

    fn start(&mut self, worker: &WorkerContext) {
        let Some(driver) = self.driver.take() else {
            return;
        };
        tokio::spawn(drain::watch(self.shared.clone(), worker.clone()));
        let (listening_tx, listening_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(heartbeat::listen(self.shared.clone(), listening_tx));
        tokio::spawn(heartbeat::beat(self.shared.clone()));
        tokio::spawn(ack::run_acker(self.shared.clone(), driver.acks));
        let listening = listening_rx.shared();
        let fetchers = (0..self.shared.config.fetchers.max(1))
            .map(|_| {
                tokio::spawn(fetch::run_fetcher(
                    self.shared.clone(),
                    driver.tasks.clone(),
                    listening.clone(),
                ))
            })
            .collect();
        *self.shared.fetchers.lock().expect("fetcher lock") = fetchers;
    }
}

impl<Args: JobArgs> Backend for PgBackend<Args> {
    type Task = Task<Args>;
    type Error = sqlx::Error;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.start(worker);
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        self.start(worker);
        self.tasks.poll_recv(cx).map(|task| task.map(Ok))
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if self.closing.is_none() {
            let (_, closed) = mpsc::unbounded_channel();
            let tasks = std::mem::replace(&mut self.tasks, closed);
            self.closing = Some(Box::pin(close(self.shared.clone(), tasks)));
        }
        match self.closing.as_mut() {
            Some(closing) => Pin::new(closing).poll(cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Graceful close, once no handler runs: hand back claimed-but-unstarted jobs (if the shutdown
/// watcher has not yet), flush outcomes, then stop the driver.
async fn close<Args>(shared: Arc<Shared>, mut tasks: mpsc::UnboundedReceiver<Task<Args>>) {
    tasks.close();
    drain::drain(&shared).await;
    ack::flush(&shared).await;
    shared.stop.cancel();
    let _ = sqlx::query("delete from onboard.worker where id = $1")
        .bind(&shared.owner)
        .execute(&shared.pool)
        .await;
}

impl<Args> Drop for PgBackend<Args> {
    fn drop(&mut self) {
        // The shutdown watcher, if running, still hands back what was claimed.
        self.shared.draining.cancel();
        self.shared.stop.cancel();
        self.shared.wake.notify_one();
    }
}

impl<Args: JobArgs> BackendConfig for PgBackend<Args> {
    type Args = Args;
    type Id = i64;
    type Kind = Ephemeral;
    type Config = QueueConfig;
    type Layer = OutcomeLayer;

    fn config(&self) -> &Self::Config {
        &self.shared.config
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        OutcomeLayer::new(self.shared.clone())
    }
}

/// `<queue>:<host>:<pid>:<random>`: unique per process start and per backend.
fn worker_id(queue: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{queue}:{host}:{}:{}", std::process::id(), &random[..8])
}
