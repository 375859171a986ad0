//! Operator actions, through the library functions only (`jobs::admin`, `onboarding::saga`),
//! each recorded in the audit trail with its result. The caller's role and CSRF token are
//! checked before any of these runs.

use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::account::Identity;
use crate::audit;
use crate::error::ApiError;
use crate::read::jobs::JobFilter;

/// An action on one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobAction {
    /// Run it now (a finished one gets one more attempt).
    Retry,
    /// Stop it (a running one is signalled).
    Cancel,
    /// Discard a waiting one.
    Discard,
}

impl JobAction {
    /// Its name in URLs and the audit.
    pub fn as_str(self) -> &'static str {
        match self {
            JobAction::Retry => "retry",
            JobAction::Cancel => "cancel",
            JobAction::Discard => "discard",
        }
    }

    /// Parses a URL segment.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "retry" => Some(JobAction::Retry),
            "cancel" => Some(JobAction::Cancel),
            "discard" => Some(JobAction::Discard),
            _ => None,
        }
    }
}

fn admin_error(error: jobs::admin::AdminError) -> ApiError {
    use jobs::admin::AdminError;
    match error {
        AdminError::NotFound(id) => ApiError::not_found(format!("no job {id}")),
        AdminError::WrongState { .. } => ApiError::conflict("wrong_state", error.to_string()),
        AdminError::UniqueKeyTaken(_) => ApiError::conflict("unique_key_taken", error.to_string()),
        AdminError::Database(e) => e.into(),
    }
}

/// Maps a saga operation's error to the API's.
pub fn saga_error(error: onboarding::saga::SagaError) -> ApiError {
    use onboarding::saga::SagaError;
    match error {
        SagaError::NotFound(id) => ApiError::not_found(format!("no onboarding {id}")),
        SagaError::JobNotFound(id) => ApiError::not_found(format!("no job {id}")),
        SagaError::Database(e) => e.into(),
        other => ApiError::conflict(other.code(), other.to_string()),
    }
}

fn result_of<T>(result: &Result<T, ApiError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.code,
    }
}

/// Acts on one job, saga-aware; returns the job's state afterwards.
pub async fn job(
    pool: &PgPool,
    who: &Identity,
    id: i64,
    action: JobAction,
) -> Result<Value, ApiError> {
    let result = job_unaudited(pool, id, action).await;
    audit::record(
        pool,
        &who.name,
        &format!("job.{}", action.as_str()),
        &format!("job:{id}"),
        result_of(&result),
        json!({}),
    )
    .await;
    result
}

async fn job_unaudited(pool: &PgPool, id: i64, action: JobAction) -> Result<Value, ApiError> {
    // A saga's step or compensation job goes through the saga's own actions; any other job
    // (`not_a_saga_job`) through the queue's.
    let saga_action = match action {
        JobAction::Retry => {
            in_tx(pool, |tx| {
                Box::pin(onboarding::saga::retry_step_job(tx, id))
            })
            .await
        }
        JobAction::Cancel => onboarding::saga::cancel_step_job_now(pool, id)
            .await
            .map(|_| ()),
        JobAction::Discard => in_tx(pool, |tx| {
            Box::pin(onboarding::saga::discard_step_job(tx, id))
        })
        .await
        .map(|_| ()),
    };
    match saga_action {
        Ok(()) => {}
        Err(onboarding::saga::SagaError::NotASagaJob(_)) => match action {
            JobAction::Retry => jobs::admin::retry_now(pool, id)
                .await
                .map_err(admin_error)?,
            JobAction::Cancel => {
                jobs::admin::cancel(pool, id).await.map_err(admin_error)?;
            }
            JobAction::Discard => jobs::admin::discard(pool, id).await.map_err(admin_error)?,
        },
        Err(error) => return Err(saga_error(error)),
    }
    let (state, args): (String, sqlx::types::Json<Value>) =
        sqlx::query_as("select state::text, args from onboard.job where id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
    Ok(json!({"id": id, "state": state, "onboarding_id": crate::read::jobs::saga_of(&args.0)}))
}

/// Runs a saga operation in a transaction of its own, committed when it succeeds.
async fn in_tx<T>(
    pool: &PgPool,
    op: impl for<'c> FnOnce(
        &'c mut sqlx::PgConnection,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<T, onboarding::saga::SagaError>> + Send + 'c>,
    >,
) -> Result<T, onboarding::saga::SagaError> {
    let mut tx = pool.begin().await?;
    let done = op(&mut tx).await?;
    tx.commit().await?;
    Ok(done)
}

/// The most jobs one bulk action touches.
pub const BULK_CAP: i64 = 1000;

/// A bulk action's request: explicit ids, or everything a filter matches (at most [`BULK_CAP`]).
#[derive(Debug, Clone, Deserialize)]
pub struct BulkRequest {
    /// `retry`, `cancel` or `discard`.
    pub action: JobAction,
    /// The jobs.
    #[serde(default)]
    pub ids: Vec<i64>,
    /// Or a filter.
    pub filter: Option<JobFilter>,
}

/// Acts on many jobs, one by one; returns each job's outcome.
pub async fn bulk(pool: &PgPool, who: &Identity, request: BulkRequest) -> Result<Value, ApiError> {
    let ids = match (&request.filter, request.ids.is_empty()) {
        (Some(filter), true) => {
            crate::read::jobs::ids(pool, &filter.clone().normalized(), BULK_CAP).await?
        }
        (None, false) => request
            .ids
            .iter()
            .copied()
            .take(BULK_CAP as usize)
            .collect(),
        _ => return Err(ApiError::bad_request("give either `ids` or `filter`")),
    };
    let mut results = Vec::with_capacity(ids.len());
    let (mut ok, mut refused) = (0, 0);
    for id in ids {
        match job_unaudited(pool, id, request.action).await {
            Ok(_) => {
                ok += 1;
                results.push(json!({"id": id, "result": "ok"}));
            }
            Err(e) => {
                refused += 1;
                results.push(json!({"id": id, "result": e.code, "message": e.message}));
            }
        }
    }
    let summary = json!({"action": request.action.as_str(), "ok": ok, "refused": refused, "results": results});
    audit::record(
        pool,
        &who.name,
        &format!("job.bulk_{}", request.action.as_str()),
        &format!("jobs:{}", ok + refused),
        "ok",
        json!({"ok": ok, "refused": refused, "filter": request.filter}),
    )
    .await;
    Ok(summary)
}

/// An action on an onboarding (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaAction {
    /// A `compensated` saga from step 1.
    Restart,
    /// The failed step or compensation.
    Retry,
    /// A `running` saga (it compensates).
    Cancel,
}

impl SagaAction {
    /// Parses a URL segment.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "restart" => Some(SagaAction::Restart),
            "retry" => Some(SagaAction::Retry),
            "cancel" => Some(SagaAction::Cancel),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaAction::Restart => "restart",
            SagaAction::Retry => "retry",
            SagaAction::Cancel => "cancel",
        }
    }
}

/// Acts on one onboarding; returns its state afterwards.
pub async fn onboarding(
    pool: &PgPool,
    who: &Identity,
    id: i64,
    action: SagaAction,
) -> Result<Value, ApiError> {
    let result = onboarding_unaudited(pool, id, action).await;
    audit::record(
        pool,
        &who.name,
        &format!("onboarding.{}", action.as_str()),
        &format!("onboarding:{id}"),
        result_of(&result),
        json!({}),
    )
    .await;
    result
}

async fn onboarding_unaudited(
    pool: &PgPool,
    id: i64,
    action: SagaAction,
) -> Result<Value, ApiError> {
    match action {
        SagaAction::Cancel => {
            let cancelled = onboarding::saga::cancel_now(pool, id)
                .await
                .map_err(saga_error)?;
            if !cancelled {
                return Err(ApiError::conflict(
                    "saga_committed",
                    format!("onboarding {id} is past its point of no return and must finish"),
                ));
            }
        }
        SagaAction::Restart => in_tx(pool, |tx| Box::pin(onboarding::saga::restart(tx, id)))
            .await
            .map_err(saga_error)?,
        SagaAction::Retry => in_tx(pool, |tx| Box::pin(onboarding::saga::retry(tx, id)))
            .await
            .map_err(saga_error)?,
    }
    let state: String = sqlx::query_scalar("select state from onboard.onboarding where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await?;
    Ok(json!({"id": id, "state": state}))
}

/// Pauses or resumes a queue.
pub async fn queue_pause(
    pool: &PgPool,
    who: &Identity,
    name: &str,
    paused: bool,
) -> Result<Value, ApiError> {
    let result: Result<(), ApiError> = if paused {
        jobs::admin::pause(pool, name).await.map_err(Into::into)
    } else {
        jobs::admin::resume(pool, name).await.map_err(Into::into)
    };
    let action = if paused {
        "queue.pause"
    } else {
        "queue.resume"
    };
    audit::record(
        pool,
        &who.name,
        action,
        &format!("queue:{name}"),
        result_of(&result),
        json!({}),
    )
    .await;
    result.map(|()| json!({"name": name, "paused": paused}))
}

/// New caps of a queue (`null` removes a cap).
#[derive(Debug, Clone, Deserialize)]
pub struct Limits {
    /// Jobs running at once across workers.
    pub max_running: Option<i32>,
    /// Jobs started per second.
    pub max_per_second: Option<f64>,
}

/// Sets a queue's caps; they survive worker restarts.
pub async fn queue_limits(
    pool: &PgPool,
    who: &Identity,
    name: &str,
    limits: Limits,
) -> Result<Value, ApiError> {
    let valid = limits.max_running.is_none_or(|n| n > 0)
        && limits
            .max_per_second
            .is_none_or(|r| r.is_finite() && r > 0.0);
    let result: Result<(), ApiError> = if valid {
        jobs::admin::set_limits(pool, name, limits.max_running, limits.max_per_second)
            .await
            .map_err(Into::into)
    } else {
        Err(ApiError::bad_request(
            "caps must be positive numbers or empty",
        ))
    };
    audit::record(
        pool,
        &who.name,
        "queue.limits",
        &format!("queue:{name}"),
        result_of(&result),
        json!({"max_running": limits.max_running, "max_per_second": limits.max_per_second}),
    )
    .await;
    result.map(|()| json!({"name": name, "max_running": limits.max_running, "max_per_second": limits.max_per_second}))
}

/// Replays an inbox delivery: its job runs again.
pub async fn replay(pool: &PgPool, who: &Identity, inbox_id: i64) -> Result<Value, ApiError> {
    let result = async {
        let job = crate::read::inbox::job_of(pool, inbox_id)
            .await?
            .ok_or_else(|| {
                ApiError::conflict(
                    "no_job",
                    format!("inbox {inbox_id} has no job (ignored or unknown)"),
                )
            })?;
        job_unaudited(pool, job, JobAction::Retry).await
    }
    .await;
    audit::record(
        pool,
        &who.name,
        "inbox.replay",
        &format!("inbox:{inbox_id}"),
        result_of(&result),
        json!({}),
    )
    .await;
    result
}
