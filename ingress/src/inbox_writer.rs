//! Group commit for the webhook: concurrent deliveries are stored together, in one statement
//! and one commit, and each request is answered only after the commit that stored it.
//!
//! A single collector takes whatever deliveries are waiting (no timer: batches form while
//! earlier ones are in flight) and writes one batch at a time, on the writer's own connection
//! (held, not taken from the pool per write: a pooled connection costs a task spawn each time it
//! goes back). A batch that
//! PostgreSQL refuses as a whole (a payload it cannot store) is retried one delivery at a time,
//! so only the bad delivery is rejected.
//!
//! At low concurrency there is nothing to batch, and the hand-off to the collector only adds
//! latency: while the last write carried a single delivery, a delivery that finds nothing
//! queued and no batch being written is written by its own request, in the one-delivery
//! statement. Once deliveries queue up behind a write, the collector's batches take over, and
//! the direct path stays closed until a batch of one says concurrency has fallen again (so
//! under load no lone write slips in between two batches).
//!
//! The queue is bounded ([`QUEUE_CAPACITY`]): a delivery that finds it full is refused at
//! once. A request is answered 2xx only if its delivery committed: a delivery still queued at
//! its deadline is abandoned (the collector skips it, it is never written) and answered 503;
//! one a batch already took waits for that batch's outcome instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use onboarding::inbox::{self, OwnedEntry, ReceiveError, Received};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Deliveries per statement at most.
pub const MAX_BATCH: usize = 64;
/// Deliveries waiting for a batch at most; more are refused (`503`).
pub const QUEUE_CAPACITY: usize = 2048;

type Reply = oneshot::Sender<Result<Received, ReceiveError>>;

const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// A queued delivery; `claim` decides, once, whether a batch takes it or its request gives up.
struct Pending {
    entry: OwnedEntry,
    reply: Reply,
    claim: Arc<AtomicU8>,
}

impl Pending {
    fn take(&self) -> bool {
        self.claim
            .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Why a delivery was not stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The queue is full: nothing was written.
    #[error("the inbox write queue is full")]
    Full,
    /// The deadline passed before a batch took the delivery: nothing was or will be written.
    #[error("the delivery waited {0:?} for a batch")]
    TimedOut(Duration),
    /// The batch that took it failed (or the payload is not storable).
    #[error(transparent)]
    Receive(#[from] ReceiveError),
}

/// The handle requests store their delivery through.
#[derive(Debug, Clone)]
pub struct InboxWriter {
    queue: mpsc::Sender<Pending>,
    flow: Arc<Flow>,
}

/// What the requests and the collector share.
#[derive(Debug)]
struct Flow {
    /// The writer's connection, locked by the one write in flight (a batch, or a delivery its
    /// own request writes).
    link: Arc<Mutex<Link>>,
    /// The last write carried one delivery: concurrency is low, the direct path is open.
    low: AtomicBool,
    written_alone: AtomicU64,
    batches: AtomicU64,
    batched: AtomicU64,
}

/// How deliveries were written so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterStats {
    /// Deliveries written by their own request (the low-concurrency path).
    pub written_alone: u64,
    /// Statements the collector ran.
    pub batches: u64,
    /// Deliveries those statements carried.
    pub batched: u64,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("svix_id", &self.entry.svix_id)
            .finish_non_exhaustive()
    }
}

impl InboxWriter {
    /// Starts the collector on `pool` with a queue of [`QUEUE_CAPACITY`]; it ends when every
    /// handle is dropped.
    pub fn spawn(pool: PgPool) -> Self {
        Self::spawn_with_capacity(pool, QUEUE_CAPACITY)
    }

    /// [`InboxWriter::spawn`] with a queue of `capacity` deliveries (at least 1).
    pub fn spawn_with_capacity(pool: PgPool, capacity: usize) -> Self {
        let (queue, waiting) = mpsc::channel(capacity.max(1));
        let flow = Arc::new(Flow {
            link: Arc::new(Mutex::new(Link { pool, conn: None })),
            low: AtomicBool::new(true),
            written_alone: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batched: AtomicU64::new(0),
        });
        tokio::spawn(collect(waiting, flow.clone()));
        InboxWriter { queue, flow }
    }

    /// How deliveries were written so far.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            written_alone: self.flow.written_alone.load(Ordering::Relaxed),
            batches: self.flow.batches.load(Ordering::Relaxed),
            batched: self.flow.batched.load(Ordering::Relaxed),
        }
    }

    /// Deliveries in the queue (abandoned ones included until the collector skips them).
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Stores one delivery (with its job) and returns once it is committed. Refused at once
    /// when the queue is full; abandoned (never written) when no batch took it by `deadline`.
    pub async fn receive(
        &self,
        entry: OwnedEntry,
        deadline: Duration,
    ) -> Result<Received, WriteError> {
        if self.flow.low.load(Ordering::Relaxed)
            && self.queued() == 0
            && let Ok(mut link) = self.flow.link.try_lock()
        {
            let result = link.store_one(&entry).await;
            self.flow.written_alone.fetch_add(1, Ordering::Relaxed);
            return Ok(result?);
        }
        let closed = || WriteError::Receive(ReceiveError::Database(sqlx::Error::PoolClosed));
        let (reply, mut answer) = oneshot::channel();
        let claim = Arc::new(AtomicU8::new(WAITING));
        let pending = Pending {
            entry,
            reply,
            claim: claim.clone(),
        };
        self.queue.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WriteError::Full,
            mpsc::error::TrySendError::Closed(_) => closed(),
        })?;
        // Dropped unanswered (the client went away): abandon it if no batch took it yet.
        let abandon = Abandon(claim);
        if let Ok(result) = tokio::time::timeout(deadline, &mut answer).await {
            return Ok(result.map_err(|_| closed())??);
        }
        if abandon.now() {
            return Err(WriteError::TimedOut(deadline));
        }
        // A batch took it before the deadline: its outcome is the answer, whenever it comes.
        Ok(answer.await.map_err(|_| closed())??)
    }
}

/// Abandons a still-waiting delivery when its request gives up or is dropped.
struct Abandon(Arc<AtomicU8>);

impl Abandon {
    /// True when this abandoned it (no batch had taken it).
    fn now(&self) -> bool {
        self.0
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        self.now();
    }
}

async fn collect(mut waiting: mpsc::Receiver<Pending>, flow: Arc<Flow>) {
    while let Some(first) = waiting.recv().await {
        let mut link = flow.link.lock().await;
        // Everything that arrived while we waited for the connection joins this batch;
        // deliveries whose request gave up are dropped here, unwritten.
        let mut batch = Vec::new();
        if first.take() {
            batch.push(first);
        }
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) if next.take() => batch.push(next),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        flow.low.store(batch.len() == 1, Ordering::Relaxed);
        flow.batches.fetch_add(1, Ordering::Relaxed);
        flow.batched
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        link.write(batch).await;
    }
}

/// The writer's own connection: taken out of the pool on first use, and again after a database
/// error (which may have broken it) or a write that was cancelled mid-statement.
#[derive(Debug)]
struct Link {
    pool: PgPool,
    conn: Option<PgConnection>,
}

impl Link {
    /// Runs `write` on the connection; keeps the connection only if it answered.
    async fn on_conn<T>(
        &mut self,
        write: impl AsyncFnOnce(&mut PgConnection) -> Result<T, ReceiveError>,
    ) -> Result<T, ReceiveError> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self
                .pool
                .acquire()
                .await
                .map_err(ReceiveError::Database)?
                .detach(),
        };
        let result = write(&mut conn).await;
        if !matches!(result, Err(ReceiveError::Database(_))) {
            self.conn = Some(conn);
        }
        result
    }

    /// Stores one delivery in a statement of its own.
    async fn store_one(&mut self, entry: &OwnedEntry) -> Result<Received, ReceiveError> {
        self.on_conn(async |conn| inbox::receive_owned(conn, entry).await)
            .await
    }

    /// Stores a batch in one statement and answers each of its requests.
    async fn write(&mut self, batch: Vec<Pending>) {
        let (entries, replies): (Vec<OwnedEntry>, Vec<Reply>) =
            batch.into_iter().map(|p| (p.entry, p.reply)).unzip();
        let result = self
            .on_conn(async |conn| inbox::receive_many(conn, &entries).await)
            .await;
        match result {
            Ok(received) => {
                for (reply, received) in replies.into_iter().zip(received) {
                    let _ = reply.send(Ok(received));
                }
            }
            Err(ReceiveError::Unstorable(_)) if entries.len() > 1 => {
                // Isolate the delivery PostgreSQL refuses; store the others.
                for (entry, reply) in entries.iter().zip(replies) {
                    let _ = reply.send(self.store_one(entry).await);
                }
            }
            Err(error) => {
                let message = error.to_string();
                let mut replies = replies.into_iter();
                if let Some(first) = replies.next() {
                    let _ = first.send(Err(error));
                }
                for reply in replies {
                    let _ = reply.send(Err(ReceiveError::Database(sqlx::Error::Protocol(
                        message.clone(),
                    ))));
                }
            }
        }
    }
}
