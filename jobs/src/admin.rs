//! Operations on jobs and queues: cancel, retry now, discard, pause and resume, limits.
//! Every change is a guarded update on the job's current state.

use sqlx::PgPool;

use crate::JobState;
use crate::backend::heartbeat_channels::{CANCEL_CHANNEL, JOB_CHANNEL};

/// Errors of an operator action.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No job with that id.
    #[error("no job {0}")]
    NotFound(i64),
    /// The job's state does not allow the action.
    #[error("job {id} is {state}: cannot {action}")]
    WrongState {
        id: i64,
        state: JobState,
        action: &'static str,
    },
    /// Retrying would give a second live job the same unique key.
    #[error("job {0}'s unique key is held by another live job")]
    UniqueKeyTaken(i64),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

async fn current_state(pool: &PgPool, id: i64) -> Result<JobState, AdminError> {
    let state: Option<String> =
        sqlx::query_scalar("select state::text from onboard.job where id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let state = state.ok_or(AdminError::NotFound(id))?;
    Ok(state.parse().unwrap_or(JobState::Discarded))
}

/// Cancels a job: a waiting one at once; a running one is signalled and ends `cancelled`
/// when its handler stops. Returns the state after the call.
pub async fn cancel(pool: &PgPool, id: i64) -> Result<JobState, AdminError> {
    let state: Option<String> = sqlx::query_scalar(
        "update onboard.job
            set state = case when state = 'running' then state else 'cancelled' end,
                finalized_at = case when state = 'running' then finalized_at else now() end,
                cancel_requested = true
          where id = $1 and state in ('available', 'scheduled', 'retryable', 'running')
      returning state::text",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    match state.as_deref() {
        Some("running") => {
            sqlx::query("select pg_notify($1, $2)")
                .bind(CANCEL_CHANNEL)
                .bind(id.to_string())
                .execute(pool)
                .await?;
            Ok(JobState::Running)
        }
        Some(_) => Ok(JobState::Cancelled),
        None => Err(wrong_state(pool, id, "cancel").await),
    }
}

/// Makes a waiting or finished job run now; a finished one gets one more attempt.
pub async fn retry_now(pool: &PgPool, id: i64) -> Result<(), AdminError> {
    let queue: Result<Option<String>, sqlx::Error> = sqlx::query_scalar(
        "update onboard.job
            set state = 'available', run_at = now(), finalized_at = null, cancel_requested = false,
                max_attempts = greatest(max_attempts, attempt + 1)
          where id = $1 and state in ('available', 'scheduled', 'retryable', 'completed', 'cancelled', 'discarded')
      returning queue",
    )
    .bind(id)
    .fetch_optional(pool)
    .await;
    let queue = match queue {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(AdminError::UniqueKeyTaken(id));
        }
        other => other?,
    };
    match queue {
        Some(queue) => {
            notify_queue(pool, &queue).await?;
            Ok(())
        }
        None => Err(wrong_state(pool, id, "retry").await),
    }
}

/// Discards a waiting job (not a running one: cancel that).
pub async fn discard(pool: &PgPool, id: i64) -> Result<(), AdminError> {
    let done = sqlx::query(
        "update onboard.job set state = 'discarded', finalized_at = now()
          where id = $1 and state in ('available', 'scheduled', 'retryable')",
    )
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected();
    if done == 1 {
        Ok(())
    } else {
        Err(wrong_state(pool, id, "discard").await)
    }
}

async fn wrong_state(pool: &PgPool, id: i64, action: &'static str) -> AdminError {
    match current_state(pool, id).await {
        Ok(state) => AdminError::WrongState { id, state, action },
        Err(error) => error,
    }
}

/// Stops workers from fetching the queue's jobs (running ones finish).
pub async fn pause(pool: &PgPool, queue: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into onboard.queue (name, paused) values ($1, true)
         on conflict (name) do update set paused = true, updated_at = now()",
    )
    .bind(queue)
    .execute(pool)
    .await?;
    Ok(())
}

/// Lets workers fetch the queue again, and wakes them.
pub async fn resume(pool: &PgPool, queue: &str) -> Result<(), sqlx::Error> {
    sqlx::query("update onboard.queue set paused = false, updated_at = now() where name = $1")
        .bind(queue)
        .execute(pool)
        .await?;
    notify_queue(pool, queue).await
}

/// Caps a queue: jobs running at once across all workers, and jobs started per second.
/// `None` removes a cap. These are the operator's caps: [`set_default_limits`] never
/// overwrites them.
pub async fn set_limits(
    pool: &PgPool,
    queue: &str,
    max_running: Option<i32>,
    max_per_second: Option<f64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into onboard.queue (name, max_running, max_per_second, tokens, limits_set_at)
         values ($1, $2, $3, coalesce($3, 0), now())
         on conflict (name) do update
            set max_running = $2, max_per_second = $3, limits_set_at = now(), updated_at = now()",
    )
    .bind(queue)
    .bind(max_running)
    .bind(max_per_second)
    .execute(pool)
    .await?;
    notify_queue(pool, queue).await
}

/// A queue's built-in caps, applied only while no operator has set its caps with
/// [`set_limits`] (so what an operator sets survives restarts).
pub async fn set_default_limits(
    pool: &PgPool,
    queue: &str,
    max_running: Option<i32>,
    max_per_second: Option<f64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into onboard.queue (name, max_running, max_per_second, tokens) values ($1, $2, $3, coalesce($3, 0))
         on conflict (name) do update
            set max_running = $2, max_per_second = $3, updated_at = now()
          where onboard.queue.limits_set_at is null",
    )
    .bind(queue)
    .bind(max_running)
    .bind(max_per_second)
    .execute(pool)
    .await?;
    notify_queue(pool, queue).await
}

async fn notify_queue(pool: &PgPool, queue: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(JOB_CHANNEL)
        .bind(queue)
        .execute(pool)
        .await?;
    Ok(())
}
