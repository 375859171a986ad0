//! The webhook inbox (deliveries by type and status, raw payload) and rejected deliveries.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::{Time, limit};

/// The inbox list's filters.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct InboxFilter {
    /// One event type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// `ignored` or `acted` (has a job).
    pub status: Option<String>,
}

impl InboxFilter {
    /// Drops empty fields.
    pub fn normalized(self) -> Self {
        let clean = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        InboxFilter {
            event_type: clean(self.event_type),
            status: clean(self.status),
        }
    }
}

/// One delivery.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InboxRow {
    /// Its id.
    pub id: i64,
    /// Svix's message id.
    pub svix_id: String,
    /// The Clerk event type.
    pub event_type: String,
    /// Stored but not acted on.
    pub ignored: bool,
    /// How many times the same `svix-id` was delivered again after the first.
    pub duplicates: i32,
    /// When it arrived.
    pub received_at: Time,
    /// Its job.
    pub job_id: Option<i64>,
    /// Its job's state: `completed` means processed.
    pub job_state: Option<String>,
    /// The raw envelope (masked before it is shown).
    pub payload: sqlx::types::Json<Value>,
}

/// Deliveries, newest first.
pub async fn list(
    pool: &PgPool,
    filter: &InboxFilter,
    before: Option<i64>,
    asked: Option<i64>,
) -> Result<Vec<InboxRow>, sqlx::Error> {
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(
        "select i.id, i.svix_id, i.event_type, i.ignored, i.duplicates, i.received_at, j.id as job_id,
                j.state::text as job_state, i.payload
           from onboard.inbox i
           left join lateral (select id, state from onboard.job
                               where args ? 'inbox_id' and (args->>'inbox_id')::bigint = i.id
                               order by id desc limit 1) j on true
          where true",
    );
    if let Some(t) = &filter.event_type {
        sql.push(" and i.event_type = ").push_bind(t.clone());
    }
    match filter.status.as_deref() {
        Some("ignored") => {
            sql.push(" and i.ignored");
        }
        Some("acted") => {
            sql.push(" and not i.ignored");
        }
        _ => {}
    }
    if let Some(before) = before {
        sql.push(" and i.id < ").push_bind(before);
    }
    sql.push(" order by i.id desc limit ")
        .push_bind(limit(asked));
    sql.build_query_as().persistent(false).fetch_all(pool).await
}

/// The job of an inbox delivery.
pub async fn job_of(pool: &PgPool, inbox_id: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "select id from onboard.job where args ? 'inbox_id' and (args->>'inbox_id')::bigint = $1
          order by id desc limit 1",
    )
    .bind(inbox_id)
    .fetch_optional(pool)
    .await
}

/// A rejected delivery.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RejectedRow {
    /// Its id.
    pub id: i64,
    /// Svix's message id.
    pub svix_id: String,
    /// Why it was rejected.
    pub reason: String,
    /// How many times it was delivered.
    pub attempts: i32,
    /// First delivery.
    pub first_seen_at: Time,
    /// Last delivery.
    pub last_seen_at: Time,
    /// The body's first 2 KiB as text (lossy; masked before it is shown).
    pub body: String,
}

#[derive(sqlx::FromRow)]
struct RejectedRaw {
    id: i64,
    svix_id: String,
    reason: String,
    attempts: i32,
    first_seen_at: Time,
    last_seen_at: Time,
    body: Vec<u8>,
}

/// Rejected deliveries, newest first.
pub async fn rejected(
    pool: &PgPool,
    before: Option<i64>,
    asked: Option<i64>,
) -> Result<Vec<RejectedRow>, sqlx::Error> {
    let rows: Vec<RejectedRaw> = sqlx::query_as(
        "select id, svix_id, reason, attempts, first_seen_at, last_seen_at,
                substring(body from 1 for 2048) as body
           from onboard.rejected_delivery where ($1::bigint is null or id < $1)
          order by id desc limit $2",
    )
    .bind(before)
    .bind(limit(asked))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| RejectedRow {
            id: r.id,
            svix_id: r.svix_id,
            reason: r.reason,
            attempts: r.attempts,
            first_seen_at: r.first_seen_at,
            last_seen_at: r.last_seen_at,
            body: String::from_utf8_lossy(&r.body).into_owned(),
        })
        .collect())
}
