//! Coalesced wake-ups for a high-rate producer (DESIGN.md §3, *Wake-ups*: notify sparingly).
//!
//! Enqueues normally wake the workers from their own statement ([`crate::enqueue::insert_sql`]):
//! one `NOTIFY onboard_job, '<queue>'` per enqueueing statement. That is cheap for one transaction
//! but not for many: PostgreSQL serialises the commits of notifying transactions with a
//! cluster-wide lock that is held through the commit's WAL flush, so notifying commits cannot
//! share a flush (no group commit). Measured on a 2-core box, a one-statement
//! "row + job" producer reaches ~11.6k commits/s at 16 clients without the NOTIFY and ~3.4k with
//! it.
//!
//! A producer that enqueues at a high rate (a receiver of events, say) therefore inserts its
//! jobs without a NOTIFY and, once its transaction has committed, [`Coalescer::note`]s
//! the queue instead. The coalescer's background task sends the noted queues in ONE
//! statement of its own, at most once per queue per `every` (5 ms by default): one notifying
//! commit per round instead of one per request, while a lone enqueue still wakes the workers
//! at once (the first round after a quiet spell is not delayed). Listeners treat a NOTIFY as
//! "look now", so one per queue per round wakes them as well as a thousand would.
//!
//! Nothing noted is lost: a queue noted while a round is being sent is sent by the next round,
//! and a round that fails (database down) is logged and retried with a capped backoff. Workers
//! also poll as a fallback, so a wake-up lost with the process (it crashed between commit and
//! round) only delays a job, never strands it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Cancellation;

/// Counter of coalesced wake-up rounds, by `outcome` (`sent`, `failed`).
pub const ROUNDS: &str = "onboard_queue_wakeup_rounds_total";

/// The default pacing of rounds: at most one NOTIFY per queue per 5 ms.
pub const DEFAULT_EVERY: Duration = Duration::from_millis(5);

/// The longest wait between retries of a failing round.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// One round: one NOTIFY on the workers' channel per noted queue, all in one statement (so in
/// one transaction, one commit).
pub const SEND_ROUND: &str = "select pg_notify('onboard_job', q) from unnest($1::text[]) q";

/// The queues noted since the last round, each once. Producers touch a handful of queues, so
/// a vector beats a hash set here.
#[derive(Debug, Default)]
struct Pending {
    queues: Vec<String>,
}

impl Pending {
    /// Adds `queue` unless present; true when the set was empty before (the task must wake).
    fn note(&mut self, queue: &str) -> bool {
        if self.queues.iter().any(|q| q == queue) {
            return false;
        }
        self.queues.push(queue.to_owned());
        self.queues.len() == 1
    }

    /// Takes every noted queue, leaving the set empty.
    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.queues)
    }

    /// Puts back the queues of a round that failed, merging with those noted meanwhile.
    fn restore(&mut self, queues: Vec<String>) {
        for queue in queues {
            if !self.queues.contains(&queue) {
                self.queues.push(queue);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when the pending set becomes non-empty.
    wake: Notify,
    stop: Cancellation,
    sent: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave `Pending` inconsistent: keep going.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sends the wake-ups of a high-rate producer, coalesced: see the [module docs](self).
///
/// Create one per process with [`Coalescer::spawn`] and share the `Arc`. The background task
/// ends when the last `Arc` is dropped or on [`Coalescer::stop`], after one last round for
/// whatever was noted before.
pub struct Coalescer {
    shared: Arc<Shared>,
    every: Duration,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("every", &self.every)
            .field("pending", &self.shared.pending().queues)
            .field("stopped", &self.shared.stop.is_cancelled())
            .finish()
    }
}

impl Coalescer {
    /// Starts the background task that sends the noted queues on `pool`, at most once per
    /// queue per `every` ([`DEFAULT_EVERY`] is a good value). Needs a Tokio runtime.
    pub fn spawn(pool: PgPool, every: Duration) -> Arc<Coalescer> {
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(shared.clone(), pool, every));
        Arc::new(Coalescer { shared, every })
    }

    /// Asks for a NOTIFY of `queue`: call it after the transaction that enqueued on `queue`
    /// (without a NOTIFY of its own) has committed. Cheap and never blocks on I/O: it
    /// adds the queue to a small set and, if the set was empty, wakes the task.
    pub fn note(&self, queue: &str) {
        let wake = self.shared.pending().note(queue);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Stops the background task after a last round for the queues noted so far. Idempotent;
    /// notes made afterwards are not sent (the workers' fallback poll finds their jobs).
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }

    /// The pacing of rounds.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Rounds sent and rounds failed so far (for metrics and tests).
    pub fn stats(&self) -> CoalescerStats {
        CoalescerStats {
            rounds_sent: self.shared.sent.load(Ordering::Relaxed),
            rounds_failed: self.shared.failed.load(Ordering::Relaxed),
        }
    }
}

/// Counters of a [`Coalescer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoalescerStats {
    /// Rounds (one statement each) that reached the database.
    pub rounds_sent: u64,
    /// Rounds that failed and were put back for the next one.
    pub rounds_failed: u64,
}

impl Drop for Coalescer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn send(pool: &PgPool, queues: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query(SEND_ROUND).bind(queues).execute(pool).await?;
    Ok(())
}

/// The wait before retrying after `failures` failed rounds in a row: `every` doubled per
/// failure, at most [`MAX_RETRY_DELAY`].
fn retry_delay(every: Duration, failures: u32) -> Duration {
    let base = every.max(Duration::from_millis(1));
    base.saturating_mul(1 << failures.min(16))
        .min(MAX_RETRY_DELAY)
}

async fn run(shared: Arc<Shared>, pool: PgPool, every: Duration) {
    // The earliest start of the next round. Starts in the past: after a quiet spell, the first
    // note is sent at once; only a busy producer's notes wait (at most `every`) and coalesce.
    let mut next_round = Instant::now();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            () = shared.wake.notified() => {}
        }
        if Instant::now() < next_round {
            tokio::select! {
                biased;
                () = shared.stop.cancelled() => break,
                () = tokio::time::sleep_until(next_round) => {}
            }
        }
        let queues = shared.pending().take();
        if queues.is_empty() {
            continue;
        }
        let started = Instant::now();
        match send(&pool, &queues).await {
            Ok(()) => {
                shared.sent.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(ROUNDS, "outcome" => "sent").increment(1);
                failures = 0;
                next_round = started + every;
            }
            Err(error) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(ROUNDS, "outcome" => "failed").increment(1);
                failures = failures.saturating_add(1);
                let delay = retry_delay(every, failures);
                tracing::warn!(%error, ?queues, ?delay, "sending coalesced NOTIFYs failed; retrying");
                shared.pending().restore(queues);
                shared.wake.notify_one();
                next_round = Instant::now() + delay;
            }
        }
    }
    let queues = shared.pending().take();
    if !queues.is_empty() {
        match send(&pool, &queues).await {
            Ok(()) => {
                shared.sent.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(ROUNDS, "outcome" => "sent").increment(1);
            }
            Err(error) => {
                tracing::warn!(%error, ?queues, "the last round of coalesced NOTIFYs failed");
                shared.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(ROUNDS, "outcome" => "failed").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_is_pending_once_and_only_the_first_note_wakes_the_task() {
        let mut pending = Pending::default();
        assert!(pending.note("default"));
        assert!(!pending.note("default"));
        assert!(!pending.note("bulk"));
        assert!(!pending.note("default"));
        assert_eq!(pending.take(), ["default", "bulk"]);
        assert!(pending.take().is_empty());
        // Empty again: the next note wakes the task again.
        assert!(pending.note("bulk"));
    }

    #[test]
    fn a_queue_noted_during_a_round_is_in_the_next_one() {
        let mut pending = Pending::default();
        pending.note("default");
        let round = pending.take();
        assert_eq!(round, ["default"]);
        // Noted while `round` is being sent: pending for the next round, with a wake-up.
        assert!(pending.note("default"));
        assert_eq!(pending.take(), ["default"]);
    }

    #[test]
    fn a_failed_round_is_put_back_without_duplicates() {
        let mut pending = Pending::default();
        pending.note("default");
        pending.note("mail");
        let failed = pending.take();
        pending.note("mail");
        pending.note("bulk");
        pending.restore(failed);
        assert_eq!(pending.take(), ["mail", "bulk", "default"]);
    }

    #[test]
    fn retries_back_off_to_a_cap() {
        let every = Duration::from_millis(5);
        assert_eq!(retry_delay(every, 1), Duration::from_millis(10));
        assert_eq!(retry_delay(every, 3), Duration::from_millis(40));
        assert_eq!(retry_delay(every, 40), MAX_RETRY_DELAY);
        assert_eq!(
            retry_delay(Duration::ZERO, 1),
            Duration::from_millis(2),
            "a zero pacing still backs off"
        );
    }

    #[test]
    fn a_round_notifies_the_channel_the_workers_listen_on() {
        let channel = crate::backend::heartbeat_channels::JOB_CHANNEL;
        assert!(SEND_ROUND.contains(&format!("pg_notify('{channel}', q)")));
    }
}
