//! The saga reconciler: keeps the invariant *no saga is non-terminal without a live job of its
//! current run*. A job can end outside its handler (its settling attempt's database error,
//! commit failure, timeout or crash, then the acker or the lease reaper discards it; an
//! operator's raw cancel): the reconciler then settles its saga as the handler would have — a
//! running saga's current step fails for good (it compensates, or ends `completed_with_errors`
//! past the point of no return), a compensating saga ends `compensation_failed`.

use std::time::Duration;

use jobs::NewJob;
use jobs::maintenance::PeriodicJob;
use serde_json::json;
use sqlx::PgConnection;

use super::{
    Saga, compensation_failed, finish, has_live_job, job_names, next_compensation, step_failed,
};
use crate::start::QUEUE;

/// The kind of the periodic job that runs [`reconcile`].
pub const RECONCILE_KIND: &str = "onboarding.reconcile";
/// How often [`reconcile_job`] is enqueued.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// Sagas settled per pass at most.
const BATCH: i64 = 100;
/// The transaction-scoped advisory lock that lets one replica reconcile at a time.
const RECONCILE_LOCK: i64 = crate::advisory_lock::RECONCILE;

/// Sagas that are not terminal and have no live job of their current run. The keys are
/// `super::job_key`'s, built in SQL: `onboarding:<id>:<name>` for run 1,
/// `onboarding:<id>:run<run>:<name>` after. $1 job names, $2 batch.
const UNSETTLED: &str = "
select o.id from onboard.onboarding o
 where o.state in ('running', 'compensating')
   and not exists (
       select 1 from onboard.job j
        where j.unique_key = any(array(
                  select case when o.run <= 1 then 'onboarding:' || o.id || ':' || n
                              else 'onboarding:' || o.id || ':run' || o.run || ':' || n end
                    from unnest($1::text[]) n))
          and j.state in ('available', 'scheduled', 'running', 'retryable'))
 order by o.id
 limit $2";

/// The periodic job the worker registers (one per tick across all replicas).
pub fn reconcile_job() -> PeriodicJob {
    PeriodicJob {
        name: RECONCILE_KIND.to_owned(),
        every: RECONCILE_EVERY,
        job: NewJob::new(RECONCILE_KIND, json!({}))
            .queue(QUEUE)
            .max_attempts(3),
    }
}

/// What one pass of [`reconcile`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Running sagas whose current step was failed for good.
    pub steps_failed: u64,
    /// Compensating sagas ended (`compensation_failed`, or `compensated` if nothing was left).
    pub compensations_ended: u64,
}

/// One pass in the caller's transaction; `None` when another replica holds the pass's lock.
/// Sagas whose row is locked (a handler is working on them) are left for a later pass.
pub async fn reconcile(conn: &mut PgConnection) -> Result<Option<Reconciled>, sqlx::Error> {
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
        .bind(RECONCILE_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    let candidates = stranded(conn, BATCH).await?;
    let mut done = Reconciled::default();
    for id in candidates {
        let Some(saga) = try_lock(conn, id).await? else {
            continue;
        };
        // Checked again under the lock, by a statement that sees every commit before it.
        if saga.is_terminal() || has_live_job(conn, &saga).await? {
            continue;
        }
        let reason =
            "its job ended without settling the saga (discarded or cancelled outside its handler)";
        if saga.state == "running" {
            let current: Option<String> = sqlx::query_scalar(
                "select name from onboard.onboarding_step
                  where onboarding_id = $1 and state not in ('done', 'skipped')
                  order by position limit 1",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            match current {
                Some(step) => step_failed(conn, &saga, &step, reason).await?,
                None => finish(conn, id, "completed").await?,
            }
            done.steps_failed += 1;
        } else {
            let current: Option<String> = sqlx::query_scalar(
                "select name from onboard.onboarding_step
                  where onboarding_id = $1 and state = 'compensating'
                  order by position desc limit 1",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            match current {
                Some(step) => compensation_failed(conn, &saga, &step, reason).await?,
                None => next_compensation(conn, &saga).await?,
            }
            done.compensations_ended += 1;
        }
        tracing::warn!(
            onboarding = id,
            state = %saga.state,
            "settled an onboarding that had no live job"
        );
    }
    Ok(Some(done))
}

/// Up to `limit` sagas, oldest first, that are not terminal and have no live job of their
/// current run: what [`reconcile`] settles (none, once it has run, is the invariant).
pub async fn stranded(conn: &mut PgConnection, limit: i64) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(UNSETTLED)
        .bind(job_names())
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// Locks the saga's row unless someone holds it.
async fn try_lock(conn: &mut PgConnection, id: i64) -> Result<Option<Saga>, sqlx::Error> {
    let locked: Option<i64> = sqlx::query_scalar(
        "select id from onboard.onboarding where id = $1 for update skip locked",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match locked {
        Some(id) => super::lock(conn, id).await,
        None => Ok(None),
    }
}
