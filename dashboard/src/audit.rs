//! The audit trail: every operator action and reveal, with who, what, target, when and result.

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

/// One audit record.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Entry {
    /// Its id.
    pub id: i64,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Who (operator name).
    pub operator: String,
    /// What (`job.retry`, `onboarding.restart`, `reveal`, `login`, …).
    pub action: String,
    /// On what (`job:12`, `onboarding:3`, `queue:email`).
    pub target: String,
    /// `ok` or the refusal's error code.
    pub result: String,
    /// Extra facts (new caps, bulk ids, …).
    pub detail: sqlx::types::Json<Value>,
}

/// Records an action. A failure to record is logged, never hides the action's own result.
pub async fn record(
    pool: &PgPool,
    operator: &str,
    action: &str,
    target: &str,
    result: &str,
    detail: Value,
) {
    let done = sqlx::query(
        "insert into onboard.audit (operator, action, target, result, detail) values ($1, $2, $3, $4, $5)",
    )
    .bind(operator)
    .bind(action)
    .bind(target)
    .bind(result)
    .bind(sqlx::types::Json(detail))
    .execute(pool)
    .await;
    if let Err(error) = done {
        tracing::error!(%error, operator, action, target, "recording an audit entry failed");
    }
}

/// The newest entries, before `before` (keyset by id).
pub async fn list(
    pool: &PgPool,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(
        "select id, at, operator, action, target, result, detail from onboard.audit
          where ($1::bigint is null or id < $1) order by id desc limit $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}
