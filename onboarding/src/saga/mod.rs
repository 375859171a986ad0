//! The onboarding saga's state machine (DESIGN.md §4): what a step's success, failure or
//! compensation does to the saga, always inside the transaction that holds the saga's row lock
//! and completes the step's job, so the saga and its jobs never disagree.
//!
//! Saga: `running` → `completed` | `completed_with_errors` | `compensating`;
//! `compensating` → `compensated` | `compensation_failed`.
//! Steps: `pending`, `running`, `done`, `failed`, `compensating`, `compensated`, `skipped`.
//!
//! A saga's *run* starts at 1 and grows at each operator restart or retry; every step and
//! compensation job carries its run, and a job of an earlier run changes nothing.

mod operator;
mod reconcile;
mod succeed;

pub use operator::{
    JobCancelled, SagaActions, SagaError, StepJobActions, cancel, cancel_now, cancel_step_job,
    cancel_step_job_now, discard_step_job, restart, retry, retry_step_job, saga_actions,
    step_job_actions,
};
pub use reconcile::{
    RECONCILE_EVERY, RECONCILE_KIND, Reconciled, reconcile, reconcile_job, stranded,
};
pub use succeed::{
    Attempt, StepSucceeded, attempt_holds, next_step, step_attempt_succeeded, steps_succeeded,
};

use serde_json::{Value, json};
use sqlx::{PgConnection, Row};

use crate::start::{QUEUE, STEP_JOB_MAX_ATTEMPTS, STEPS};
use jobs::{NewJob, enqueue};

/// The queue the welcome email goes to (capped at the provider's rate).
pub const EMAIL_QUEUE: &str = "email";
/// The step after which the onboarding never rolls back.
pub const POINT_OF_NO_RETURN: &str = "twilio_subaccount";
/// The kind that merges a finished saga's state into the org's Clerk metadata.
pub const SYNC_METADATA_KIND: &str = "onboarding.sync_metadata";
/// The kind that offboards a deleted organization (enqueued by `organization.deleted`).
pub use crate::clerk_event::OFFBOARD_KIND;

/// A saga row, locked for the rest of the caller's transaction.
#[derive(Debug, Clone)]
pub struct Saga {
    /// Its id.
    pub id: i64,
    /// The Clerk organization it onboards.
    pub clerk_org_id: String,
    /// Its state.
    pub state: String,
    /// The request that started it (org name, slug, creator).
    pub request: Value,
    /// Its run: 1, plus one per operator restart or retry.
    pub run: i32,
}

impl Saga {
    /// True in `completed`, `completed_with_errors`, `compensated`, `compensation_failed`.
    pub fn is_terminal(&self) -> bool {
        is_terminal(&self.state)
    }
}

/// True for the saga's terminal states.
pub fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "completed" | "completed_with_errors" | "compensated" | "compensation_failed"
    )
}

/// The job kind of a step (`onboarding.<step>`) or of its compensation (`onboarding.undo_<step>`).
pub fn step_kind(step: &str) -> String {
    format!("onboarding.{step}")
}

/// The compensation job kind of a step.
pub fn undo_kind(step: &str) -> String {
    format!("onboarding.undo_{step}")
}

/// Locks the saga's row: work on one organization is serialised by this lock.
pub async fn lock(conn: &mut PgConnection, id: i64) -> Result<Option<Saga>, sqlx::Error> {
    fetch(conn, id, true).await
}

/// Reads the saga's row without locking it (for checks that change nothing).
pub(crate) async fn read(conn: &mut PgConnection, id: i64) -> Result<Option<Saga>, sqlx::Error> {
    fetch(conn, id, false).await
}

async fn fetch(conn: &mut PgConnection, id: i64, lock: bool) -> Result<Option<Saga>, sqlx::Error> {
    let sql = if lock {
        "select id, clerk_org_id, state, request, run from onboard.onboarding where id = $1 for update"
    } else {
        "select id, clerk_org_id, state, request, run from onboard.onboarding where id = $1"
    };
    let row = sqlx::query(sql).bind(id).fetch_optional(&mut *conn).await?;
    row.map(|row| {
        Ok(Saga {
            id: row.try_get("id")?,
            clerk_org_id: row.try_get("clerk_org_id")?,
            state: row.try_get("state")?,
            request: row.try_get::<sqlx::types::Json<Value>, _>("request")?.0,
            run: row.try_get("run")?,
        })
    })
    .transpose()
}

/// Locks the saga of an organization, if it has one.
pub async fn lock_by_org(
    conn: &mut PgConnection,
    clerk_org_id: &str,
) -> Result<Option<Saga>, sqlx::Error> {
    let id: Option<i64> =
        sqlx::query_scalar("select id from onboard.onboarding where clerk_org_id = $1")
            .bind(clerk_org_id)
            .fetch_optional(&mut *conn)
            .await?;
    match id {
        Some(id) => lock(conn, id).await,
        None => Ok(None),
    }
}

/// A step's stored output (`{}` when none).
pub async fn step_output(
    conn: &mut PgConnection,
    id: i64,
    step: &str,
) -> Result<Value, sqlx::Error> {
    let output: Option<sqlx::types::Json<Value>> = sqlx::query_scalar(
        "select output from onboard.onboarding_step where onboarding_id = $1 and name = $2",
    )
    .bind(id)
    .bind(step)
    .fetch_optional(conn)
    .await?;
    Ok(output.map_or(json!({}), |o| o.0))
}

pub(crate) async fn set_step(
    conn: &mut PgConnection,
    id: i64,
    step: &str,
    state: &str,
    error: Option<&str>,
    output: Option<&Value>,
) -> Result<(), sqlx::Error> {
    write_step(conn, id, step, state, error, output, 0).await
}

/// [`set_step`], also adding `attempts` to the step's attempt count.
async fn write_step(
    conn: &mut PgConnection,
    id: i64,
    step: &str,
    state: &str,
    error: Option<&str>,
    output: Option<&Value>,
    attempts: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update onboard.onboarding_step
            set state = $3, last_error = coalesce($4, last_error),
                output = coalesce($5, output), attempts = attempts + $6, updated_at = now()
          where onboarding_id = $1 and name = $2",
    )
    .bind(id)
    .bind(step)
    .bind(state)
    .bind(error)
    .bind(output.map(sqlx::types::Json))
    .bind(attempts)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn set_saga(
    conn: &mut PgConnection,
    id: i64,
    state: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("update onboard.onboarding set state = $2, updated_at = now() where id = $1")
        .bind(id)
        .bind(state)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records an attempt's error while the step will be retried, counting the attempt (the driver
/// marks no start of its own: the count commits with the attempt's outcome or not at all).
pub async fn step_attempt_failed(
    conn: &mut PgConnection,
    id: i64,
    step: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    write_step(conn, id, step, "running", Some(error), None, 1).await
}

/// Marks a step skipped (its saga stopped running before it ran).
pub async fn step_skipped(conn: &mut PgConnection, id: i64, step: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update onboard.onboarding_step set state = 'skipped', updated_at = now()
          where onboarding_id = $1 and name = $2 and state = 'pending'",
    )
    .bind(id)
    .bind(step)
    .execute(conn)
    .await?;
    Ok(())
}

/// The steps that have a compensation (those up to the point of no return).
pub fn compensable_steps() -> &'static [&'static str] {
    let last = STEPS
        .iter()
        .position(|s| *s == POINT_OF_NO_RETURN)
        .unwrap_or(STEPS.len() - 1);
    &STEPS[..=last]
}

/// The saga and run a step or compensation job belongs to, read from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobTarget {
    /// The saga's id.
    pub onboarding_id: i64,
    /// The run the job was enqueued for (1 when the arguments have none).
    pub run: i32,
}

impl JobTarget {
    /// Reads `{"onboarding_id": …, "run": …}`; `None` without an `onboarding_id`.
    pub fn from_args(args: &Value) -> Option<JobTarget> {
        Some(JobTarget {
            onboarding_id: args["onboarding_id"].as_i64()?,
            run: args["run"]
                .as_i64()
                .and_then(|r| i32::try_from(r).ok())
                .unwrap_or(1),
        })
    }
}

/// The unique key of a run's job named `name` (a step, or `undo_<step>`). Run 1 keeps the
/// original form, so jobs enqueued before runs existed are found. The reconciler's
/// `UNSETTLED` query builds the same keys in SQL.
pub(crate) fn job_key(saga_id: i64, run: i32, name: &str) -> String {
    if run <= 1 {
        format!("onboarding:{saga_id}:{name}")
    } else {
        format!("onboarding:{saga_id}:run{run}:{name}")
    }
}

/// Names of every step and compensation job.
pub(crate) fn job_names() -> Vec<String> {
    STEPS
        .iter()
        .map(|s| (*s).to_owned())
        .chain(compensable_steps().iter().map(|s| format!("undo_{s}")))
        .collect()
}

/// The unique keys of every step and compensation job of a saga's run.
fn run_keys(saga_id: i64, run: i32) -> Vec<String> {
    job_names()
        .iter()
        .map(|name| job_key(saga_id, run, name))
        .collect()
}

/// True when a step or compensation job of the saga's current run is waiting or running.
pub async fn has_live_job(conn: &mut PgConnection, saga: &Saga) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from onboard.job
                         where unique_key = any($1)
                           and state in ('available', 'scheduled', 'running', 'retryable'))",
    )
    .bind(run_keys(saga.id, saga.run))
    .fetch_one(conn)
    .await
}

/// Cancels every waiting or running job of the saga's current run (a running one's handler
/// then finds its job gone and commits nothing). Returns how many.
pub(crate) async fn cancel_live_jobs(
    conn: &mut PgConnection,
    saga: &Saga,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "update onboard.job
            set state = 'cancelled', finalized_at = now(), cancel_requested = true,
                lease_owner = null, lease_expires_at = null
          where unique_key = any($1) and state in ('available', 'scheduled', 'running', 'retryable')",
    )
    .bind(run_keys(saga.id, saga.run))
    .execute(conn)
    .await?
    .rows_affected())
}

fn job_args(saga: &Saga) -> Value {
    json!({ "onboarding_id": saga.id, "run": saga.run })
}

pub(crate) fn step_job(saga: &Saga, step: &str) -> NewJob {
    let queue = if step == "welcome_email" {
        EMAIL_QUEUE
    } else {
        QUEUE
    };
    NewJob::new(step_kind(step), job_args(saga))
        .queue(queue)
        .max_attempts(STEP_JOB_MAX_ATTEMPTS)
        .unique_key(job_key(saga.id, saga.run, step))
}

fn undo_job(saga: &Saga, step: &str) -> NewJob {
    NewJob::new(undo_kind(step), job_args(saga))
        .queue(QUEUE)
        .max_attempts(STEP_JOB_MAX_ATTEMPTS)
        .unique_key(job_key(saga.id, saga.run, &format!("undo_{step}")))
}

/// The steps that touch only our database. DESIGN.md §4 keeps one transaction per external
/// call; these may run in the transaction of the step (or the start) before them.
pub const LOCAL_STEPS: [&str; 2] = ["create_org_record", "default_permissions"];

/// True for a step that touches only our database ([`LOCAL_STEPS`]).
pub fn is_local(step: &str) -> bool {
    LOCAL_STEPS.contains(&step)
}

/// A step succeeded (outside the worker's driver, which uses [`steps_succeeded`]): stores its
/// output and enqueues the next step, or ends the saga `completed` after the last one.
pub async fn step_succeeded(
    conn: &mut PgConnection,
    saga: &Saga,
    step: &str,
    output: &Value,
) -> Result<(), sqlx::Error> {
    set_step(conn, saga.id, step, "done", None, Some(output)).await?;
    match next_step(step) {
        Some(next) => enqueue_step(conn, saga, next).await,
        None => finish(conn, saga.id, "completed").await,
    }
}

/// Enqueues the job of the saga's `step` (for its current run).
pub async fn enqueue_step(
    conn: &mut PgConnection,
    saga: &Saga,
    step: &str,
) -> Result<(), sqlx::Error> {
    enqueue(conn, &step_job(saga, step)).await?;
    Ok(())
}

/// A step failed for good. Before the point of no return the saga compensates every step that
/// started, in reverse order; after it (the welcome email) the saga ends `completed_with_errors`.
pub async fn step_failed(
    conn: &mut PgConnection,
    saga: &Saga,
    step: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    fail_step(conn, saga, step, error, 0).await
}

/// [`step_failed`] for an attempt that ran: the attempt is counted too.
pub async fn step_attempt_failed_for_good(
    conn: &mut PgConnection,
    saga: &Saga,
    step: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    fail_step(conn, saga, step, error, 1).await
}

async fn fail_step(
    conn: &mut PgConnection,
    saga: &Saga,
    step: &str,
    error: &str,
    attempts: i32,
) -> Result<(), sqlx::Error> {
    write_step(conn, saga.id, step, "failed", Some(error), None, attempts).await?;
    if past_point_of_no_return(step) {
        finish(conn, saga.id, "completed_with_errors").await
    } else {
        begin_compensation(conn, saga).await
    }
}

fn past_point_of_no_return(step: &str) -> bool {
    let limit = STEPS
        .iter()
        .position(|s| *s == POINT_OF_NO_RETURN)
        .unwrap_or(0);
    STEPS
        .iter()
        .position(|s| *s == step)
        .is_some_and(|p| p > limit)
}

/// Marks the saga `compensating`, skips the steps that never started, and enqueues the
/// compensation of the last step that started; each compensation enqueues the one before it.
/// A step whose job began an attempt may have reached its provider even though no
/// transaction recorded it: it is compensated, not skipped.
pub async fn begin_compensation(conn: &mut PgConnection, saga: &Saga) -> Result<(), sqlx::Error> {
    set_saga(conn, saga.id, "compensating").await?;
    for step in STEPS {
        sqlx::query(
            "update onboard.onboarding_step set state = 'skipped', updated_at = now()
              where onboarding_id = $1 and name = $2 and state = 'pending' and attempts = 0
                and not exists (select 1 from onboard.job
                                 where unique_key = $3 and attempt > 0
                                   and state in ('available', 'scheduled', 'running', 'retryable'))",
        )
        .bind(saga.id)
        .bind(step)
        .bind(job_key(saga.id, saga.run, step))
        .execute(&mut *conn)
        .await?;
    }
    next_compensation(conn, saga).await
}

/// Enqueues the compensation of the highest step that started and is not compensated yet, or
/// ends the saga `compensated` when none is left.
pub(crate) async fn next_compensation(
    conn: &mut PgConnection,
    saga: &Saga,
) -> Result<(), sqlx::Error> {
    let next: Option<String> = sqlx::query_scalar(
        "select name from onboard.onboarding_step
          where onboarding_id = $1 and state in ('pending', 'done', 'failed', 'running', 'compensating')
            and name = any($2)
          order by position desc limit 1",
    )
    .bind(saga.id)
    .bind(compensable_steps())
    .fetch_optional(&mut *conn)
    .await?;
    match next {
        Some(step) => {
            set_step(conn, saga.id, &step, "compensating", None, None).await?;
            enqueue(conn, &undo_job(saga, &step)).await?;
            Ok(())
        }
        None => finish(conn, saga.id, "compensated").await,
    }
}

/// A compensation succeeded: the next one (in reverse order) is enqueued.
pub async fn compensation_succeeded(
    conn: &mut PgConnection,
    saga: &Saga,
    step: &str,
    output: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update onboard.onboarding_step
            set state = 'compensated', output = output || jsonb_build_object('compensation', $3::jsonb), updated_at = now()
          where onboarding_id = $1 and name = $2",
    )
    .bind(saga.id)
    .bind(step)
    .bind(sqlx::types::Json(output))
    .execute(&mut *conn)
    .await?;
    next_compensation(conn, saga).await
}

/// Records a compensation attempt's error while it will be retried.
pub async fn compensation_attempt_failed(
    conn: &mut PgConnection,
    saga: &Saga,
    step: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    set_step(conn, saga.id, step, "compensating", Some(error), None).await
}

/// A compensation failed for good: the saga ends `compensation_failed`; an operator can retry it.
pub async fn compensation_failed(
    conn: &mut PgConnection,
    saga: &Saga,
    step: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    set_step(conn, saga.id, step, "compensating", Some(error), None).await?;
    finish(conn, saga.id, "compensation_failed").await
}

/// Ends the saga in `state` and enqueues the merge of that state into Clerk's metadata.
pub(crate) async fn finish(
    conn: &mut PgConnection,
    id: i64,
    state: &str,
) -> Result<(), sqlx::Error> {
    set_saga(conn, id, state).await?;
    let org_status = match state {
        "completed" | "completed_with_errors" => Some("active"),
        "compensated" | "compensation_failed" => Some("failed"),
        _ => None,
    };
    if let Some(status) = org_status {
        sqlx::query(
            "update onboard.organization o set onboarding_status = $2, updated_at = now()
               from onboard.onboarding s
              where s.id = $1 and o.clerk_org_id = s.clerk_org_id and o.onboarding_status <> 'deleted'",
        )
        .bind(id)
        .bind(status)
        .execute(&mut *conn)
        .await?;
    }
    enqueue(conn, &sync_job(id, state)).await?;
    Ok(())
}

/// The job that merges the saga's end state `state` into Clerk's metadata.
fn sync_job(id: i64, state: &str) -> NewJob {
    NewJob::new(
        SYNC_METADATA_KIND,
        json!({ "onboarding_id": id, "state": state }),
    )
    .queue(QUEUE)
    .max_attempts(STEP_JOB_MAX_ATTEMPTS)
    .unique_key(format!("onboarding:{id}:sync:{state}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_without_a_run_belongs_to_run_1_and_run_1_keeps_the_original_keys() {
        let legacy = JobTarget::from_args(&json!({ "onboarding_id": 7 })).unwrap();
        assert_eq!(
            legacy,
            JobTarget {
                onboarding_id: 7,
                run: 1
            }
        );
        let later = JobTarget::from_args(&json!({ "onboarding_id": 7, "run": 3 })).unwrap();
        assert_eq!(later.run, 3);
        assert_eq!(JobTarget::from_args(&json!({ "run": 3 })), None);
        assert_eq!(
            job_key(7, 1, "create_org_record"),
            "onboarding:7:create_org_record"
        );
        assert_eq!(
            job_key(7, 3, "undo_twilio_subaccount"),
            "onboarding:7:run3:undo_twilio_subaccount"
        );
    }

    #[test]
    fn only_the_steps_up_to_the_point_of_no_return_have_a_compensation() {
        assert_eq!(
            compensable_steps(),
            [
                "create_org_record",
                "default_permissions",
                "twilio_subaccount"
            ]
        );
        assert_eq!(job_names().len(), STEPS.len() + 3);
    }
}
