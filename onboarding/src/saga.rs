//! The onboarding saga's state machine (DESIGN.md §4): what a step's success, failure or
//! compensation does to the saga, always inside the transaction that holds the saga's row lock
//! and completes the step's job, so the saga and its jobs never disagree.
//!
//! Saga: `running` → `completed` | `completed_with_errors` | `compensating`;
//! `compensating` → `compensated` | `compensation_failed`.
//! Steps: `pending`, `running`, `done`, `failed`, `compensating`, `compensated`, `skipped`.

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

/// Errors of the saga's operations.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// No saga with that id.
    #[error("no onboarding {0}")]
    NotFound(i64),
    /// The saga's state does not allow the action.
    #[error("onboarding {id} is {state}: cannot {action}")]
    WrongState {
        id: i64,
        state: String,
        action: &'static str,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

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
    let row = sqlx::query(
        "select id, clerk_org_id, state, request from onboard.onboarding where id = $1 for update",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| {
        Ok(Saga {
            id: row.try_get("id")?,
            clerk_org_id: row.try_get("clerk_org_id")?,
            state: row.try_get("state")?,
            request: row.try_get::<sqlx::types::Json<Value>, _>("request")?.0,
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

async fn set_step(
    conn: &mut PgConnection,
    id: i64,
    step: &str,
    state: &str,
    error: Option<&str>,
    output: Option<&Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update onboard.onboarding_step
            set state = $3, last_error = coalesce($4, last_error),
                output = coalesce($5, output), updated_at = now()
          where onboarding_id = $1 and name = $2",
    )
    .bind(id)
    .bind(step)
    .bind(state)
    .bind(error)
    .bind(output.map(sqlx::types::Json))
    .execute(conn)
    .await?;
    Ok(())
}

async fn set_saga(conn: &mut PgConnection, id: i64, state: &str) -> Result<(), sqlx::Error> {
    sqlx::query("update onboard.onboarding set state = $2, updated_at = now() where id = $1")
        .bind(id)
        .bind(state)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks an attempt of `step` as started.
pub async fn step_started(conn: &mut PgConnection, id: i64, step: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update onboard.onboarding_step set state = 'running', attempts = attempts + 1, updated_at = now()
          where onboarding_id = $1 and name = $2",
    )
    .bind(id)
    .bind(step)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an attempt's error while the step will be retried.
pub async fn step_attempt_failed(
    conn: &mut PgConnection,
    id: i64,
    step: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    set_step(conn, id, step, "running", Some(error), None).await
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

fn step_job(saga_id: i64, step: &str) -> NewJob {
    let queue = if step == "welcome_email" {
        EMAIL_QUEUE
    } else {
        QUEUE
    };
    NewJob::new(step_kind(step), json!({ "onboarding_id": saga_id }))
        .queue(queue)
        .max_attempts(STEP_JOB_MAX_ATTEMPTS)
        .unique_key(format!("onboarding:{saga_id}:{step}"))
}

fn undo_job(saga_id: i64, step: &str) -> NewJob {
    NewJob::new(undo_kind(step), json!({ "onboarding_id": saga_id }))
        .queue(QUEUE)
        .max_attempts(STEP_JOB_MAX_ATTEMPTS)
        .unique_key(format!("onboarding:{saga_id}:undo_{step}"))
}

/// A step succeeded: stores its output and enqueues the next step, or ends the saga
/// `completed` after the last one.
pub async fn step_succeeded(
    conn: &mut PgConnection,
    saga: &Saga,
    step: &str,
    output: &Value,
) -> Result<(), sqlx::Error> {
    set_step(conn, saga.id, step, "done", None, Some(output)).await?;
    let position = STEPS.iter().position(|s| *s == step).unwrap_or(STEPS.len());
    match STEPS.get(position + 1) {
        Some(next) => {
            enqueue(conn, &step_job(saga.id, next)).await?;
        }
        None => finish(conn, saga.id, "completed").await?,
    }
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
    set_step(conn, saga.id, step, "failed", Some(error), None).await?;
    if past_point_of_no_return(step) {
        finish(conn, saga.id, "completed_with_errors").await
    } else {
        begin_compensation(conn, saga.id).await
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

/// Marks the saga `compensating`, skips steps that never started, and enqueues the
/// compensation of the last step that started; each compensation enqueues the one before it.
pub async fn begin_compensation(conn: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    set_saga(conn, id, "compensating").await?;
    sqlx::query(
        "update onboard.onboarding_step set state = 'skipped', updated_at = now()
          where onboarding_id = $1 and state = 'pending' and attempts = 0",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    next_compensation(conn, id).await
}

/// Enqueues the compensation of the highest step that started and is not compensated yet, or
/// ends the saga `compensated` when none is left.
async fn next_compensation(conn: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    let next: Option<String> = sqlx::query_scalar(
        "select name from onboard.onboarding_step
          where onboarding_id = $1 and state in ('done', 'failed', 'running', 'compensating')
          order by position desc limit 1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match next {
        Some(step) => {
            set_step(conn, id, &step, "compensating", None, None).await?;
            enqueue(conn, &undo_job(id, &step)).await?;
            Ok(())
        }
        None => finish(conn, id, "compensated").await,
    }
}

/// A compensation succeeded: the next one (in reverse order) is enqueued.
pub async fn compensation_succeeded(
    conn: &mut PgConnection,
    id: i64,
    step: &str,
    output: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update onboard.onboarding_step
            set state = 'compensated', output = output || jsonb_build_object('compensation', $3::jsonb), updated_at = now()
          where onboarding_id = $1 and name = $2",
    )
    .bind(id)
    .bind(step)
    .bind(sqlx::types::Json(output))
    .execute(&mut *conn)
    .await?;
    next_compensation(conn, id).await
}

/// A compensation failed for good: the saga ends `compensation_failed`; an operator can retry it.
pub async fn compensation_failed(
    conn: &mut PgConnection,
    id: i64,
    step: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    set_step(conn, id, step, "compensating", Some(error), None).await?;
    finish(conn, id, "compensation_failed").await
}

/// Ends the saga in `state` and enqueues the merge of that state into Clerk's metadata.
async fn finish(conn: &mut PgConnection, id: i64, state: &str) -> Result<(), sqlx::Error> {
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
    enqueue(
        conn,
        &NewJob::new(
            SYNC_METADATA_KIND,
            json!({ "onboarding_id": id, "state": state }),
        )
        .queue(QUEUE)
        .max_attempts(STEP_JOB_MAX_ATTEMPTS)
        .unique_key(format!("onboarding:{id}:sync:{state}")),
    )
    .await?;
    Ok(())
}

/// Operator: restarts a `compensated` saga from its first step.
pub async fn restart(conn: &mut PgConnection, id: i64) -> Result<(), SagaError> {
    let saga = lock(conn, id).await?.ok_or(SagaError::NotFound(id))?;
    if saga.state != "compensated" {
        return Err(SagaError::WrongState {
            id,
            state: saga.state,
            action: "restart",
        });
    }
    sqlx::query(
        "update onboard.onboarding_step set state = 'pending', attempts = 0, last_error = null, output = '{}', updated_at = now()
          where onboarding_id = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    set_saga(conn, id, "running").await?;
    enqueue(conn, &step_job(id, STEPS[0])).await?;
    Ok(())
}

/// Operator: retries the failed step of a `completed_with_errors` saga, or the failed
/// compensation of a `compensation_failed` one.
pub async fn retry(conn: &mut PgConnection, id: i64) -> Result<(), SagaError> {
    let saga = lock(conn, id).await?.ok_or(SagaError::NotFound(id))?;
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
                return Err(SagaError::WrongState {
                    id,
                    state: saga.state,
                    action: "retry (no failed step)",
                });
            };
            set_step(conn, id, &step, "pending", None, None).await?;
            set_saga(conn, id, "running").await?;
            enqueue(conn, &step_job(id, &step)).await?;
            Ok(())
        }
        "compensation_failed" => {
            set_saga(conn, id, "compensating").await?;
            next_compensation(conn, id).await?;
            Ok(())
        }
        _ => Err(SagaError::WrongState {
            id,
            state: saga.state,
            action: "retry",
        }),
    }
}

/// Operator (and offboarding): cancels a `running` saga before its point of no return; it
/// compensates. Returns false when the saga is past the point of no return (it finishes).
pub async fn cancel(conn: &mut PgConnection, id: i64) -> Result<bool, SagaError> {
    let saga = lock(conn, id).await?.ok_or(SagaError::NotFound(id))?;
    if saga.state != "running" {
        return Err(SagaError::WrongState {
            id,
            state: saga.state,
            action: "cancel",
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
    begin_compensation(conn, id).await?;
    Ok(true)
}
