//! Operator actions on a saga (restart, retry, cancel) and on a single job of one (cancel,
//! discard or retry a step or compensation job), each in the caller's transaction under the
//! saga's row lock, with typed errors whose [`SagaError::code`] is stable for the dashboard and
//! the API; `*_now` variants for callers outside a transaction that must not wait for a step in
//! flight; and check-only twins ([`saga_actions`], [`step_job_actions`]) that say which actions
//! would be accepted, so the dashboard shows only those.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::{
    POINT_OF_NO_RETURN, Saga, begin_compensation, cancel_live_jobs, compensable_steps,
    compensation_failed, lock, next_compensation, set_saga, set_step, step_failed, step_job,
    step_skipped,
};
use crate::start::STEPS;
use jobs::enqueue;

/// Errors of the operator actions; [`SagaError::code`] names each one stably.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// No saga with that id (`saga_not_found`).
    #[error("no onboarding {0}")]
    NotFound(i64),
    /// The saga has ended; only restart or retry act on an ended saga (`saga_terminal`).
    #[error("onboarding {id} is {state}: it has ended")]
    Terminal {
        /// The saga.
        id: i64,
        /// Its terminal state.
        state: String,
    },
    /// Only a `compensated` saga restarts (`saga_not_restartable`).
    #[error("onboarding {id} is {state}: only a compensated onboarding restarts")]
    NotRestartable {
        /// The saga.
        id: i64,
        /// Its state.
        state: String,
    },
    /// Only `completed_with_errors` and `compensation_failed` sagas retry (`saga_not_retryable`).
    #[error("onboarding {id} is {state}: nothing failed to retry")]
    NotRetryable {
        /// The saga.
        id: i64,
        /// Its state.
        state: String,
    },
    /// Only a `running` saga is cancelled (`saga_not_cancellable`).
    #[error("onboarding {id} is {state}: only a running onboarding is cancelled")]
    NotCancellable {
        /// The saga.
        id: i64,
        /// Its state.
        state: String,
    },
    /// The organization was deleted: it is never onboarded again (`organization_deleted`).
    #[error("organization {0} was deleted")]
    OrganizationDeleted(String),
    /// No job with that id (`job_not_found`).
    #[error("no job {0}")]
    JobNotFound(i64),
    /// The job is not a step or compensation of a saga (`not_a_saga_job`).
    #[error("job {0} is not a step or compensation of an onboarding")]
    NotASagaJob(i64),
    /// The job belongs to an earlier run of its saga, or to a phase the saga has left
    /// (`saga_job_stale`).
    #[error("job {job} is not current work of onboarding {id}")]
    StaleJob {
        /// The job.
        job: i64,
        /// Its saga.
        id: i64,
    },
    /// The job's state does not allow the action (`job_running`, `job_finished`).
    #[error("job {job} is {state}: cannot {action}")]
    JobState {
        /// The job.
        job: i64,
        /// Its state.
        state: String,
        /// What was asked.
        action: &'static str,
    },
    /// Another live job holds the job's unique key (`job_key_taken`).
    #[error("another live job does job {0}'s work")]
    JobKeyTaken(i64),
    /// The database failed (`internal`).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl SagaError {
    /// The stable code of this error, for `{"error":{"code","message"}}` bodies.
    pub fn code(&self) -> &'static str {
        match self {
            SagaError::NotFound(_) => "saga_not_found",
            SagaError::Terminal { .. } => "saga_terminal",
            SagaError::NotRestartable { .. } => "saga_not_restartable",
            SagaError::NotRetryable { .. } => "saga_not_retryable",
            SagaError::NotCancellable { .. } => "saga_not_cancellable",
            SagaError::OrganizationDeleted(_) => "organization_deleted",
            SagaError::JobNotFound(_) => "job_not_found",
            SagaError::NotASagaJob(_) => "not_a_saga_job",
            SagaError::StaleJob { .. } => "saga_job_stale",
            SagaError::JobState { state, .. } if state == "running" => "job_running",
            SagaError::JobState { .. } => "job_finished",
            SagaError::JobKeyTaken(_) => "job_key_taken",
            SagaError::Database(_) => "internal",
        }
    }
}

async fn lock_existing(conn: &mut PgConnection, id: i64) -> Result<Saga, SagaError> {
    lock(conn, id).await?.ok_or(SagaError::NotFound(id))
}

async fn org_deleted(conn: &mut PgConnection, saga: &Saga) -> Result<bool, sqlx::Error> {
    let deleted: Option<bool> = sqlx::query_scalar(
        "select deleted_at is not null from onboard.organization where clerk_org_id = $1",
    )
    .bind(&saga.clerk_org_id)
    .fetch_optional(conn)
    .await?;
    Ok(deleted == Some(true))
}

async fn refuse_deleted(conn: &mut PgConnection, saga: &Saga) -> Result<(), SagaError> {
    if org_deleted(conn, saga).await? {
        return Err(SagaError::OrganizationDeleted(saga.clerk_org_id.clone()));
    }
    Ok(())
}

/// What an operator may do with a saga now, as [`restart`], [`retry`] and [`cancel`] would
/// decide (to show only the allowed actions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SagaActions {
    /// [`restart`] would restart it.
    pub restart: bool,
    /// [`retry`] would retry its failed step or compensation.
    pub retry: bool,
    /// [`cancel`] would cancel it (it is running, before its point of no return).
    pub cancel: bool,
}

/// Checks only (no lock, no change): the actions on saga `id` allowed now.
pub async fn saga_actions(conn: &mut PgConnection, id: i64) -> Result<SagaActions, SagaError> {
    let saga = super::read(conn, id)
        .await?
        .ok_or(SagaError::NotFound(id))?;
    let deleted = org_deleted(conn, &saga).await?;
    let (failed, committed): (bool, bool) = sqlx::query_as(
        "select exists (select 1 from onboard.onboarding_step where onboarding_id = $1 and state = 'failed'),
                exists (select 1 from onboard.onboarding_step where onboarding_id = $1 and name = $2 and state = 'done')",
    )
    .bind(id)
    .bind(POINT_OF_NO_RETURN)
    .fetch_one(&mut *conn)
    .await?;
    Ok(SagaActions {
        restart: saga.state == "compensated" && !deleted,
        retry: (saga.state == "completed_with_errors" && failed)
            || saga.state == "compensation_failed",
        cancel: saga.state == "running" && !committed,
    })
}

/// Starts the saga's next run: cancels every live job of the current one, so none of them
/// can run out of order, and numbers the run up.
async fn next_run(conn: &mut PgConnection, saga: &mut Saga) -> Result<(), sqlx::Error> {
    cancel_live_jobs(conn, saga).await?;
    saga.run = sqlx::query_scalar(
        "update onboard.onboarding set run = run + 1, updated_at = now() where id = $1 returning run",
    )
    .bind(saga.id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

/// Operator: restarts a `compensated` saga from its first step, in a new run.
pub async fn restart(conn: &mut PgConnection, id: i64) -> Result<(), SagaError> {
    let mut saga = lock_existing(conn, id).await?;
    if saga.state != "compensated" {
        return Err(SagaError::NotRestartable {
            id,
            state: saga.state,
        });
    }
    refuse_deleted(conn, &saga).await?;
    next_run(conn, &mut saga).await?;
    sqlx::query(
        "update onboard.onboarding_step set state = 'pending', attempts = 0, last_error = null, output = '{}', updated_at = now()
          where onboarding_id = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    set_saga(conn, id, "running").await?;
    enqueue(conn, &step_job(&saga, STEPS[0])).await?;
    Ok(())
}

/// Operator: retries the failed step of a `completed_with_errors` saga, or the failed
/// compensation of a `compensation_failed` one, in a new run.
pub async fn retry(conn: &mut PgConnection, id: i64) -> Result<(), SagaError> {
    let mut saga = lock_existing(conn, id).await?;
    match saga.state.as_str() {
        "completed_with_errors" => {
            let failed: Option<String> = sqlx::query_scalar(
                "select name from onboard.onboarding_step where onboarding_id = $1 and state = 'failed'
                  order by position limit 1",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(step) = failed else {
                return Err(SagaError::NotRetryable {
                    id,
                    state: saga.state,
                });
            };
            next_run(conn, &mut saga).await?;
            set_step(conn, id, &step, "pending", None, None).await?;
            set_saga(conn, id, "running").await?;
            enqueue(conn, &step_job(&saga, &step)).await?;
            Ok(())
        }
        "compensation_failed" => {
            next_run(conn, &mut saga).await?;
            set_saga(conn, id, "compensating").await?;
            next_compensation(conn, &saga).await?;
            Ok(())
        }
        _ => Err(SagaError::NotRetryable {
            id,
            state: saga.state,
        }),
    }
}

/// Operator (and offboarding): cancels a `running` saga before its point of no return; it
/// compensates. Returns false when the saga is past the point of no return (it finishes).
pub async fn cancel(conn: &mut PgConnection, id: i64) -> Result<bool, SagaError> {
    let saga = lock_existing(conn, id).await?;
    if saga.is_terminal() {
        return Err(SagaError::Terminal {
            id,
            state: saga.state,
        });
    }
    if saga.state != "running" {
        return Err(SagaError::NotCancellable {
            id,
            state: saga.state,
        });
    }
    let committed: bool = sqlx::query_scalar(
        "select exists (select 1 from onboard.onboarding_step where onboarding_id = $1 and name = $2 and state = 'done')",
    )
    .bind(id)
    .bind(POINT_OF_NO_RETURN)
    .fetch_one(&mut *conn)
    .await?;
    if committed {
        return Ok(false);
    }
    // The step job waiting to run finds the saga compensating and skips itself.
    begin_compensation(conn, &saga).await?;
    Ok(true)
}

/// What a saga job is: a step, or the compensation of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SagaJob {
    Step(&'static str),
    Undo(&'static str),
}

struct JobRow {
    id: i64,
    job: SagaJob,
    saga: Saga,
    state: String,
    unique_key: Option<String>,
    current: bool,
}

/// The job states an operator can stop a job in: waiting, or running too for a cancel.
const WAITING: [&str; 3] = ["available", "scheduled", "retryable"];

/// How an operator stops a saga job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// A waiting or running job ends `cancelled`.
    Cancel,
    /// A waiting job ends `discarded`.
    Discard,
}

impl Stop {
    fn action(self) -> &'static str {
        match self {
            Stop::Cancel => "cancel",
            Stop::Discard => "discard",
        }
    }

    fn job_state(self) -> &'static str {
        match self {
            Stop::Cancel => "cancelled",
            Stop::Discard => "discarded",
        }
    }
}

/// Reads job `job_id` and its saga. With `lock`, locks the saga, then the job row (in that
/// order, as the saga's handlers do); without, reads both as they are (for checks only).
async fn read_job(conn: &mut PgConnection, job_id: i64, lock: bool) -> Result<JobRow, SagaError> {
    let row: Option<(String, sqlx::types::Json<Value>)> =
        sqlx::query_as("select kind, args from onboard.job where id = $1")
            .bind(job_id)
            .fetch_optional(&mut *conn)
            .await?;
    let (kind, args) = row.ok_or(SagaError::JobNotFound(job_id))?;
    let job = kind
        .strip_prefix("onboarding.")
        .and_then(|name| {
            let undo = name.strip_prefix("undo_");
            let step = undo.unwrap_or(name);
            let step = STEPS.iter().find(|s| **s == step)?;
            match undo {
                Some(_) => compensable_steps()
                    .contains(step)
                    .then_some(SagaJob::Undo(step)),
                None => Some(SagaJob::Step(step)),
            }
        })
        .ok_or(SagaError::NotASagaJob(job_id))?;
    let target = super::JobTarget::from_args(&args.0).ok_or(SagaError::NotASagaJob(job_id))?;
    let saga = if lock {
        lock_existing(conn, target.onboarding_id).await?
    } else {
        super::read(conn, target.onboarding_id)
            .await?
            .ok_or(SagaError::NotFound(target.onboarding_id))?
    };
    let sql = if lock {
        "select state::text, unique_key from onboard.job where id = $1 for update"
    } else {
        "select state::text, unique_key from onboard.job where id = $1"
    };
    let (state, unique_key): (String, Option<String>) = sqlx::query_as(sql)
        .bind(job_id)
        .fetch_one(&mut *conn)
        .await?;
    let phase = match job {
        SagaJob::Step(_) => "running",
        SagaJob::Undo(_) => "compensating",
    };
    let current = target.run == saga.run && saga.state == phase;
    Ok(JobRow {
        id: job_id,
        job,
        saga,
        state,
        unique_key,
        current,
    })
}

impl JobRow {
    /// Why stopping the job is refused, if it is. A job that was already cancelled outside
    /// its saga (a raw cancel, or the signal of [`cancel_step_job_now`]) while its saga still
    /// waits on it is stopped again: that settles the saga as a cancel would have.
    fn stop_refusal(&self, stop: Stop) -> Option<SagaError> {
        let stoppable = WAITING.contains(&self.state.as_str())
            || (stop == Stop::Cancel && self.state == "running")
            || (stop == Stop::Cancel && self.state == "cancelled" && self.current);
        (!stoppable).then(|| SagaError::JobState {
            job: self.id,
            state: self.state.clone(),
            action: stop.action(),
        })
    }

    /// Why retrying the job is refused, if it is; `taken`: another live job holds its key.
    fn retry_refusal(&self, taken: bool) -> Option<SagaError> {
        if self.saga.is_terminal() {
            return Some(SagaError::Terminal {
                id: self.saga.id,
                state: self.saga.state.clone(),
            });
        }
        if !self.current {
            return Some(SagaError::StaleJob {
                job: self.id,
                id: self.saga.id,
            });
        }
        if matches!(self.state.as_str(), "running" | "completed") {
            return Some(SagaError::JobState {
                job: self.id,
                state: self.state.clone(),
                action: "retry",
            });
        }
        taken.then_some(SagaError::JobKeyTaken(self.id))
    }

    /// True when another live job holds this job's unique key.
    async fn key_taken(&self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "select exists (select 1 from onboard.job where unique_key = $1 and id <> $2
                              and state in ('available', 'scheduled', 'running', 'retryable'))",
        )
        .bind(&self.unique_key)
        .bind(self.id)
        .fetch_one(conn)
        .await
    }
}

/// The outcome of [`cancel_step_job`] and [`discard_step_job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCancelled {
    /// The job's saga.
    pub onboarding_id: i64,
    /// The saga's state after the cancellation (`compensating`, `completed_with_errors`, …).
    pub saga_state: String,
}

async fn stop_step_job(
    conn: &mut PgConnection,
    job_id: i64,
    stop: Stop,
) -> Result<JobCancelled, SagaError> {
    let row = read_job(conn, job_id, true).await?;
    if let Some(refused) = row.stop_refusal(stop) {
        return Err(refused);
    }
    sqlx::query(
        "update onboard.job
            set state = $2::onboard.job_state, finalized_at = coalesce(finalized_at, now()),
                cancel_requested = true, lease_owner = null, lease_expires_at = null
          where id = $1",
    )
    .bind(job_id)
    .bind(stop.job_state())
    .execute(&mut *conn)
    .await?;
    let saga = row.saga;
    let reason = format!("job {job_id} {} by an operator", stop.job_state());
    match (row.job, row.current) {
        (SagaJob::Step(step), true) => step_failed(conn, &saga, step, &reason).await?,
        (SagaJob::Undo(step), true) => compensation_failed(conn, &saga, step, &reason).await?,
        (SagaJob::Step(step), false) if saga.state == "compensating" => {
            step_skipped(conn, saga.id, step).await?;
        }
        _ => {}
    }
    let saga_state: String =
        sqlx::query_scalar("select state from onboard.onboarding where id = $1")
            .bind(saga.id)
            .fetch_one(&mut *conn)
            .await?;
    Ok(JobCancelled {
        onboarding_id: saga.id,
        saga_state,
    })
}

/// Operator: cancels a waiting or running step or compensation job, saga-aware. Cancelling the
/// current step of a running saga fails that step for good (the saga compensates, or ends
/// `completed_with_errors` past its point of no return); cancelling the current compensation
/// ends the saga `compensation_failed`. Any other saga job (left over, of an earlier run) is
/// just cancelled. A running job's handler finds its job gone and commits nothing; while it
/// runs it holds the saga's lock, which this waits for: from outside a transaction, use
/// [`cancel_step_job_now`], which stops the handler first.
pub async fn cancel_step_job(
    conn: &mut PgConnection,
    job_id: i64,
) -> Result<JobCancelled, SagaError> {
    stop_step_job(conn, job_id, Stop::Cancel).await
}

/// Operator: discards a waiting step or compensation job, with [`cancel_step_job`]'s effect
/// on its saga.
pub async fn discard_step_job(
    conn: &mut PgConnection,
    job_id: i64,
) -> Result<JobCancelled, SagaError> {
    stop_step_job(conn, job_id, Stop::Discard).await
}

/// Operator: [`cancel_step_job`] in a transaction of its own, without waiting for a running
/// job's handler to end its provider call: a running job is first signalled to stop
/// (`jobs::admin::cancel`); its attempt's transaction rolls back, which frees the saga's lock.
pub async fn cancel_step_job_now(pool: &PgPool, job_id: i64) -> Result<JobCancelled, SagaError> {
    let row = read_job(&mut *pool.acquire().await?, job_id, false).await?;
    if let Some(refused) = row.stop_refusal(Stop::Cancel) {
        return Err(refused);
    }
    if row.state == "running" {
        match jobs::admin::cancel(pool, job_id).await {
            // Ended meanwhile: the locked check below says what that means.
            Ok(_) | Err(jobs::admin::AdminError::WrongState { .. }) => {}
            Err(jobs::admin::AdminError::Database(e)) => return Err(e.into()),
            Err(_) => return Err(SagaError::JobNotFound(job_id)),
        }
    }
    let mut tx = pool.begin().await?;
    let cancelled = cancel_step_job(&mut tx, job_id).await?;
    tx.commit().await?;
    Ok(cancelled)
}

/// Operator: [`cancel`] from outside a transaction, without waiting for a step in flight: the
/// running job of a step before the point of no return is cancelled first with
/// [`cancel_step_job_now`] (its step fails, the saga compensates, that step included).
/// Returns false when the saga is past the point of no return (it finishes).
pub async fn cancel_now(pool: &PgPool, id: i64) -> Result<bool, SagaError> {
    let running: Option<i64> = sqlx::query_scalar(
        "select j.id from onboard.onboarding s
           join onboard.job j on j.unique_key = any(
                    select case when s.run <= 1 then 'onboarding:' || s.id || ':' || n
                                else 'onboarding:' || s.id || ':run' || s.run || ':' || n end
                      from unnest($2::text[]) n)
          where s.id = $1 and s.state = 'running' and j.state = 'running'
          limit 1",
    )
    .bind(id)
    .bind(compensable_steps())
    .fetch_optional(pool)
    .await?;
    if let Some(job) = running {
        match cancel_step_job_now(pool, job).await {
            Ok(cancelled) if cancelled.saga_state != "running" => return Ok(true),
            // It ended meanwhile, or did not stop the saga: cancel the saga itself.
            Ok(_) | Err(SagaError::JobState { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    let mut tx = pool.begin().await?;
    let cancelled = cancel(&mut tx, id).await?;
    tx.commit().await?;
    Ok(cancelled)
}

/// Operator: runs a saga job now, saga-aware: only the current work of a saga that has not
/// ended (a waiting job, or a cancelled or discarded one not yet settled) is retried, with one
/// more real attempt. An ended saga is `saga_terminal` (restart or retry the saga instead).
pub async fn retry_step_job(conn: &mut PgConnection, job_id: i64) -> Result<(), SagaError> {
    let row = read_job(conn, job_id, true).await?;
    let taken = row.key_taken(conn).await?;
    if let Some(refused) = row.retry_refusal(taken) {
        return Err(refused);
    }
    // One real attempt more, then the settling one (the step handlers' last attempt).
    let queue: String = sqlx::query_scalar(
        "update onboard.job
            set state = 'available', run_at = now(), finalized_at = null, cancel_requested = false,
                max_attempts = greatest(max_attempts, attempt + 2)
          where id = $1
      returning queue",
    )
    .bind(job_id)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("select pg_notify($1, $2)")
        .bind(jobs::backend::heartbeat_channels::JOB_CHANNEL)
        .bind(queue)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// What an operator may do with a saga job now, as [`retry_step_job`], [`cancel_step_job`]
/// and [`discard_step_job`] would decide (to show only the allowed actions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepJobActions {
    /// The job's saga.
    pub onboarding_id: i64,
    /// The saga's state.
    pub saga_state: String,
    /// [`retry_step_job`] would run it.
    pub retry: bool,
    /// [`cancel_step_job`] would cancel it.
    pub cancel: bool,
    /// [`discard_step_job`] would discard it.
    pub discard: bool,
}

/// Checks only (no lock, no change): the actions on saga job `job_id` allowed now;
/// `not_a_saga_job` for any other job.
pub async fn step_job_actions(
    conn: &mut PgConnection,
    job_id: i64,
) -> Result<StepJobActions, SagaError> {
    let row = read_job(conn, job_id, false).await?;
    let taken = row.key_taken(conn).await?;
    Ok(StepJobActions {
        onboarding_id: row.saga.id,
        saga_state: row.saga.state.clone(),
        retry: row.retry_refusal(taken).is_none(),
        cancel: row.stop_refusal(Stop::Cancel).is_none(),
        discard: row.stop_refusal(Stop::Discard).is_none(),
    })
}
