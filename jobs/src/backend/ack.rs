//! Outcomes: the tower layer that turns each attempt's result into a verdict, and the acker
//! that writes verdicts back in batches, every one fenced by `(id, attempt, state = running)`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::error::{AbortError, BoxDynError, RetryAfterError};
use apalis_core::task::Task;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tower::{Layer, Service};
use tracing::Instrument;

use super::Shared;
use crate::JobContext;
use crate::error::JobError;

/// What happens to a job after an attempt.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    Completed,
    /// Retryable after `delay`, or discarded when attempts are used up.
    Retry {
        message: String,
        delay: Duration,
        error_kind: &'static str,
    },
    /// Discarded now.
    Discard {
        message: String,
        error_kind: &'static str,
    },
    /// Scheduled after `delay` without using an attempt.
    Snooze(Duration),
    /// Cancelled.
    Cancel(String),
}

impl Verdict {
    /// The verdict with its delay cut to `max` (a provider's `Retry-After` can be absurd).
    fn capped(self, max: Duration) -> Verdict {
        match self {
            Verdict::Retry {
                message,
                delay,
                error_kind,
            } => Verdict::Retry {
                message,
                delay: delay.min(max),
                error_kind,
            },
            Verdict::Snooze(delay) => Verdict::Snooze(delay.min(max)),
            other => other,
        }
    }

    /// The same verdict with a fixed error text, for when the original cannot be stored.
    fn minimal(&self) -> Option<Verdict> {
        let message = "the outcome's error text could not be stored".to_owned();
        match self {
            Verdict::Retry { delay, .. } => Some(Verdict::Retry {
                message,
                delay: *delay,
                error_kind: "unstorable",
            }),
            Verdict::Discard { .. } => Some(Verdict::Discard {
                message,
                error_kind: "unstorable",
            }),
            Verdict::Cancel(_) => Some(Verdict::Cancel(message)),
            Verdict::Completed | Verdict::Snooze(_) => None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) ctx: JobContext,
    pub(crate) verdict: Verdict,
    /// How long the attempt ran (zero when it never started).
    pub(crate) elapsed: Duration,
}

#[derive(Debug)]
pub(crate) enum AckMessage {
    Outcome(Outcome),
    Flush(oneshot::Sender<()>),
}

/// The backend's layer: sees the final result of every attempt, after the user's layers.
#[derive(Debug, Clone)]
pub struct OutcomeLayer {
    shared: Arc<Shared>,
}

impl OutcomeLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        OutcomeLayer { shared }
    }
}

impl<S> Layer<S> for OutcomeLayer {
    type Service = OutcomeService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OutcomeService {
            shared: self.shared.clone(),
            inner,
        }
    }
}

/// Runs an attempt under its kind's timeout, catches panics and cancellation, and sends the
/// verdict to the acker. Always answers `Ok(())` to apalis: the verdict is ours to record.
#[derive(Debug, Clone)]
pub struct OutcomeService<S> {
    shared: Arc<Shared>,
    inner: S,
}

impl<S, Args> Service<Task<Args>> for OutcomeService<S>
where
    S: Service<Task<Args>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
{
    type Response = ();
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let ctx = task.ctx().data().get::<JobContext>().cloned();
        if let Some(ctx) = &ctx {
            let started = self
                .shared
                .unstarted
                .lock()
                .expect("unstarted lock")
                .remove(&ctx.id)
                .is_some();
            if !started {
                // Handed back at shutdown before it could start: another worker runs it.
                return Box::pin(async { Ok(()) });
            }
        }
        let attempt = self.inner.call(task);
        let shared = self.shared.clone();
        Box::pin(async move {
            let Some(ctx) = ctx else {
                return Err("task without a job context".into());
            };
            let span =
                tracing::info_span!("job", id = ctx.id, kind = %ctx.kind, attempt = ctx.attempt);
            let started = std::time::Instant::now();
            let verdict = judge(&shared, &ctx, attempt)
                .instrument(span)
                .await
                .capped(shared.config.max_delay);
            let outcome = verdict.outcome(&ctx);
            let elapsed = started.elapsed();
            crate::metrics::attempt(&ctx.queue, &ctx.kind, outcome, elapsed);
            let outcome = Outcome {
                ctx,
                verdict,
                elapsed,
            };
            if outcome.ctx.is_settled() {
                // The handler's own committed transaction recorded the outcome.
                settle(&shared, std::slice::from_ref(&outcome));
            } else {
                let _ = shared.acks.send(AckMessage::Outcome(outcome));
            }
            Ok(())
        })
    }
}

impl Verdict {
    /// The outcome's name in the metrics: a retry past the last attempt is a discard.
    fn outcome(&self, ctx: &JobContext) -> &'static str {
        match self {
            Verdict::Completed => "completed",
            Verdict::Retry { .. } if ctx.attempt >= ctx.max_attempts => "discarded",
            Verdict::Retry { .. } => "retried",
            Verdict::Discard { .. } => "discarded",
            Verdict::Snooze(_) => "snoozed",
            Verdict::Cancel(_) => "cancelled",
        }
    }
}

async fn judge<F, R, E>(shared: &Shared, ctx: &JobContext, attempt: F) -> Verdict
where
    F: Future<Output = Result<R, E>> + Send,
    E: Into<BoxDynError>,
{
    let options = shared.config.kinds.get(&ctx.kind);
    let timeout = options.timeout;
    let backoff = options.retry.delay(ctx.attempt);
    let run = tokio::time::timeout(timeout, AssertUnwindSafe(attempt).catch_unwind());
    tokio::select! {
        result = run => match result {
            Err(_) => Verdict::Retry {
                message: format!("timed out after {timeout:?}"),
                delay: backoff,
                error_kind: "timeout",
            },
            Ok(Err(panic)) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(%message, "job panicked");
                Verdict::Retry { message: format!("panicked: {message}"), delay: backoff, error_kind: "panic" }
            }
            Ok(Ok(Ok(_))) => Verdict::Completed,
            Ok(Ok(Err(error))) => classify(error.into(), backoff),
        },
        () = ctx.cancellation.cancelled() => Verdict::Cancel("cancelled while running".to_owned()),
    }
}

/// Maps a handler's error to a verdict; unknown errors are retried with the kind's backoff.
fn classify(error: BoxDynError, backoff: Duration) -> Verdict {
    let error = match error.downcast::<JobError>() {
        Ok(job_error) => {
            return match *job_error {
                JobError::Retry(message) => Verdict::Retry {
                    message,
                    delay: backoff,
                    error_kind: "error",
                },
                JobError::Permanent(message) => Verdict::Discard {
                    message,
                    error_kind: "permanent",
                },
                JobError::RetryAfter(delay, message) => Verdict::Retry {
                    message,
                    delay,
                    error_kind: "retry_after",
                },
                JobError::Snooze(delay) => Verdict::Snooze(delay),
                JobError::Cancel(message) => Verdict::Cancel(message),
            };
        }
        Err(other) => other,
    };
    if let Some(retry) = error.downcast_ref::<RetryAfterError>() {
        return Verdict::Retry {
            message: retry.to_string(),
            delay: retry.get_duration(),
            error_kind: "retry_after",
        };
    }
    if error.downcast_ref::<AbortError>().is_some() {
        return Verdict::Discard {
            message: error.to_string(),
            error_kind: "permanent",
        };
    }
    Verdict::Retry {
        message: error_chain(error.as_ref()),
        delay: backoff,
        error_kind: "error",
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_owned())
}

pub const COMPLETE: &str = "
update onboard.job
   set state = 'completed', finalized_at = now(), lease_owner = null, lease_expires_at = null
 where id = any($1) and state = 'running' and attempt = ($2::int[])[array_position($1, id)]";

const FAIL: &str = "
update onboard.job
   set state = case when $3 or attempt >= max_attempts then 'discarded' else 'retryable' end::onboard.job_state,
       run_at = case when $3 or attempt >= max_attempts then run_at
                     else now() + $4 * interval '1 millisecond' end,
       finalized_at = case when $3 or attempt >= max_attempts then now() end,
       errors = array_append(errors, $5::jsonb),
       lease_owner = null, lease_expires_at = null
 where id = $1 and attempt = $2 and state = 'running'";

const SNOOZE: &str = "
update onboard.job
   set state = 'scheduled', run_at = now() + $3 * interval '1 millisecond',
       max_attempts = max_attempts + 1, lease_owner = null, lease_expires_at = null
 where id = $1 and attempt = $2 and state = 'running'";

const CANCEL: &str = "
update onboard.job
   set state = 'cancelled', finalized_at = now(), errors = array_append(errors, $3::jsonb),
       lease_owner = null, lease_expires_at = null
 where id = $1 and attempt = $2 and state = 'running'";

/// Writes verdicts until every sender is gone. Never drops one on a database error: it retries,
/// and a verdict that arrives after its lease was lost is a fenced no-op.
pub(crate) async fn run_acker(
    shared: Arc<Shared>,
    mut messages: mpsc::UnboundedReceiver<AckMessage>,
) {
    let max = shared.config.ack_batch.max(1);
    let mut batch = Vec::with_capacity(max);
    let mut flushes = Vec::new();
    loop {
        let mut stopping = false;
        let first = tokio::select! {
            message = messages.recv() => message,
            () = shared.stop.cancelled() => {
                // Attempts that finished before the stop have sent their verdicts: drain them.
                stopping = true;
                messages.try_recv().ok()
            }
        };
        let mut next = first;
        while let Some(message) = next {
            match message {
                AckMessage::Outcome(outcome) => batch.push(outcome),
                AckMessage::Flush(done) => flushes.push(done),
            }
            next = if batch.len() < max || stopping {
                messages.try_recv().ok()
            } else {
                None
            };
        }
        let mut failures = 0u32;
        while !batch.is_empty() {
            let error = match write(&shared, &batch).await {
                Ok(()) => {
                    settle(&shared, &batch);
                    batch.clear();
                    continue;
                }
                Err(error) if rejected(&error) => {
                    // Some outcome cannot be stored: one by one, so it cannot hold back the rest.
                    tracing::warn!(%error, "the database rejected a batch of outcomes; writing them one by one");
                    write_each(&shared, &mut batch).await;
                    if batch.is_empty() {
                        continue;
                    }
                    "the database is unavailable".to_owned()
                }
                Err(error) => error.to_string(),
            };
            failures += 1;
            let delay = Duration::from_millis(50 * 2u64.pow(failures.min(6)));
            tracing::warn!(%error, ?delay, "acknowledging outcomes failed; retrying");
            if stopping && failures > 8 {
                tracing::error!(
                    "giving up on {} outcomes at shutdown; their leases will expire",
                    batch.len()
                );
                batch.clear();
            }
            tokio::time::sleep(delay).await;
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        if stopping {
            return;
        }
    }
}

/// True when the database refused the statement itself (bad data, a constraint, a trigger):
/// retrying it unchanged cannot help. Lost connections, deadlocks, lock timeouts and the like
/// are worth retrying.
fn rejected(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    let code = error.code().unwrap_or_default();
    let transient = ["08", "40", "53", "55", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class));
    !transient
}

/// Writes outcomes one at a time. One the database rejects is written again with a fixed
/// error text; if that is rejected too it is given up: its job leaves the in-flight set, its
/// lease lapses and the lease reaper rescues it. Outcomes that failed for a passing reason stay
/// in `batch`.
async fn write_each(shared: &Shared, batch: &mut Vec<Outcome>) {
    let mut retry = Vec::new();
    for outcome in batch.drain(..) {
        let one = std::slice::from_ref(&outcome);
        match write(shared, one).await {
            Ok(()) => {}
            Err(error) if rejected(&error) => {
                let minimal = outcome.verdict.minimal().map(|verdict| Outcome {
                    ctx: outcome.ctx.clone(),
                    verdict,
                    elapsed: outcome.elapsed,
                });
                let stored = match &minimal {
                    Some(minimal) => write(shared, std::slice::from_ref(minimal)).await,
                    None => Err(error),
                };
                match stored {
                    Ok(()) => {}
                    Err(again) if !rejected(&again) => {
                        retry.push(outcome);
                        continue;
                    }
                    Err(again) => tracing::error!(
                        job = outcome.ctx.id,
                        attempt = outcome.ctx.attempt,
                        error = %again,
                        "the database rejects this outcome; leaving the job to the lease reaper"
                    ),
                }
            }
            Err(_) => {
                retry.push(outcome);
                continue;
            }
        }
        settle(shared, one);
    }
    *batch = retry;
}

/// Frees the in-flight slots of acknowledged jobs.
fn settle(shared: &Shared, batch: &[Outcome]) {
    {
        let mut in_flight = shared.in_flight.lock().expect("in-flight lock");
        for outcome in batch {
            in_flight.remove(&outcome.ctx.id);
        }
    }
    shared.capacity.add_permits(batch.len());
    // A retry or snooze may set a nearer run_at than the fetcher's timer knows.
    if batch
        .iter()
        .any(|o| !matches!(o.verdict, Verdict::Completed))
    {
        shared.wake.notify_one();
    }
}

async fn write(shared: &Shared, batch: &[Outcome]) -> Result<(), sqlx::Error> {
    let (ids, attempts): (Vec<i64>, Vec<i32>) = batch
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Completed))
        .map(|o| (o.ctx.id, o.ctx.attempt))
        .unzip();
    let others: Vec<&Outcome> = batch
        .iter()
        .filter(|o| !matches!(o.verdict, Verdict::Completed))
        .collect();
    if others.is_empty() {
        if !ids.is_empty() {
            sqlx::query(COMPLETE)
                .bind(&ids)
                .bind(&attempts)
                .execute(&shared.pool)
                .await?;
        }
        return Ok(());
    }
    let mut tx = shared.pool.begin().await?;
    if !ids.is_empty() {
        sqlx::query(COMPLETE)
            .bind(&ids)
            .bind(&attempts)
            .execute(&mut *tx)
            .await?;
    }
    for outcome in others {
        let ctx = &outcome.ctx;
        match &outcome.verdict {
            Verdict::Completed => {}
            Verdict::Retry {
                message,
                delay,
                error_kind,
            } => {
                let record = error_record(shared, ctx, message, error_kind, outcome.elapsed);
                fail(&mut tx, ctx, message, record, false, *delay).await?;
            }
            Verdict::Discard {
                message,
                error_kind,
            } => {
                let record = error_record(shared, ctx, message, error_kind, outcome.elapsed);
                fail(&mut tx, ctx, message, record, true, Duration::ZERO).await?;
            }
            Verdict::Snooze(delay) => {
                sqlx::query(SNOOZE)
                    .bind(ctx.id)
                    .bind(ctx.attempt)
                    .bind(millis(*delay))
                    .execute(&mut *tx)
                    .await?;
            }
            Verdict::Cancel(message) => {
                sqlx::query(CANCEL)
                    .bind(ctx.id)
                    .bind(ctx.attempt)
                    .bind(sqlx::types::Json(error_record(
                        shared,
                        ctx,
                        message,
                        "cancelled",
                        outcome.elapsed,
                    )))
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await
}

async fn fail(
    tx: &mut sqlx::PgConnection,
    ctx: &JobContext,
    message: &str,
    record: serde_json::Value,
    permanent: bool,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    tracing::warn!(job = ctx.id, kind = %ctx.kind, attempt = ctx.attempt, error = %message, permanent, "attempt failed");
    sqlx::query(FAIL)
        .bind(ctx.id)
        .bind(ctx.attempt)
        .bind(permanent)
        .bind(millis(delay))
        .bind(sqlx::types::Json(record))
        .execute(tx)
        .await?;
    Ok(())
}

/// One entry of `job.errors`: what an operator reads on the dashboard. `at` is when the
/// outcome was recorded, `duration_ms` how long the attempt ran.
pub(crate) fn error_record(
    shared: &Shared,
    ctx: &JobContext,
    message: &str,
    kind: &str,
    elapsed: Duration,
) -> serde_json::Value {
    serde_json::json!({
        "attempt": ctx.attempt,
        "at": chrono::Utc::now(),
        "worker": shared.owner,
        "duration_ms": millis(elapsed),
        "message": crate::error::storable(message),
        "kind": kind,
    })
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Waits until every outcome sent so far is written.
pub(crate) async fn flush(shared: &Shared) {
    let (done, wait) = oneshot::channel();
    if shared.acks.send(AckMessage::Flush(done)).is_ok() {
        let _ = wait.await;
    }
}

/// Hands claimed-but-unstarted jobs back: `available` again, the claim's attempt undone.
pub(crate) async fn release(shared: &Shared, jobs: &[(i64, i32)]) {
    if jobs.is_empty() {
        return;
    }
    let (ids, attempts): (Vec<i64>, Vec<i32>) = jobs.iter().copied().unzip();
    let result = sqlx::query(
        "update onboard.job
            set state = 'available', attempt = attempt - 1, lease_owner = null, lease_expires_at = null
          where id = any($1) and state = 'running' and lease_owner = $3
            and attempt = ($2::int[])[array_position($1, id)]",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&shared.owner)
    .execute(&shared.pool)
    .await;
    match result {
        Ok(_) => {
            let mut in_flight = shared.in_flight.lock().expect("in-flight lock");
            for id in &ids {
                in_flight.remove(id);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "releasing unstarted jobs failed; their leases will expire")
        }
    }
}
