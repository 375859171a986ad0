//! Group commit for the webhook: concurrent deliveries are stored together, in one statement
//! and one commit, and each request is answered only after the commit that stored it.
//!
//! A single collector takes whatever deliveries are waiting (no timer: batches form while
//! earlier ones are in flight) and runs at most [`IN_FLIGHT`] batches at once. A batch that
//! PostgreSQL refuses as a whole (a payload it cannot store) is retried one delivery at a time,
//! so only the bad delivery is rejected.

use std::sync::Arc;

use onboarding::inbox::{self, OwnedEntry, ReceiveError, Received};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Deliveries per statement at most.
pub const MAX_BATCH: usize = 64;
/// Batches being written at once at most.
pub const IN_FLIGHT: usize = 1;

type Reply = oneshot::Sender<Result<Received, ReceiveError>>;

/// The handle requests store their delivery through.
#[derive(Debug, Clone)]
pub struct InboxWriter {
    queue: mpsc::UnboundedSender<(OwnedEntry, Reply)>,
}

impl InboxWriter {
    /// Starts the collector on `pool`; it ends when every handle is dropped.
    pub fn spawn(pool: PgPool) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(collect(pool, waiting));
        InboxWriter { queue }
    }

    /// Stores one delivery (with its job) and returns once it is committed.
    pub async fn receive(&self, entry: OwnedEntry) -> Result<Received, ReceiveError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((entry, reply))
            .map_err(|_| ReceiveError::Database(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| ReceiveError::Database(sqlx::Error::PoolClosed))?
    }
}

async fn collect(pool: PgPool, mut waiting: mpsc::UnboundedReceiver<(OwnedEntry, Reply)>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = waiting.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Everything that arrived while we waited for a slot joins this batch.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            write(&pool, batch).await;
            drop(slot);
        });
    }
}

async fn write(pool: &PgPool, batch: Vec<(OwnedEntry, Reply)>) {
    let (entries, replies): (Vec<OwnedEntry>, Vec<Reply>) = batch.into_iter().unzip();
    let result = match pool.acquire().await {
        Ok(mut conn) => inbox::receive_many(&mut conn, &entries).await,
        Err(error) => Err(ReceiveError::Database(error)),
    };
    match result {
        Ok(received) => {
            for (reply, received) in replies.into_iter().zip(received) {
                let _ = reply.send(Ok(received));
            }
        }
        Err(ReceiveError::Unstorable(_)) if entries.len() > 1 => {
            // Isolate the delivery PostgreSQL refuses; store the others.
            for (entry, reply) in entries.into_iter().zip(replies) {
                let result = match pool.acquire().await {
                    Ok(mut conn) => inbox::receive_many(&mut conn, std::slice::from_ref(&entry))
                        .await
                        .map(|mut r| r.remove(0)),
                    Err(error) => Err(ReceiveError::Database(error)),
                };
                let _ = reply.send(result);
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
