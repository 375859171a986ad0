//! Onboardings (sagas): the list by state with search, and one saga with its step timeline,
//! its jobs (every attempt's error, compensations, the Clerk metadata sync) and what an
//! operator may do to it now.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::{Time, like_escape, limit};
use crate::read::jobs::JobRow;

/// The list's filters.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct OnboardingFilter {
    /// One saga state.
    pub state: Option<String>,
    /// A Clerk org id (exact), or text in the org's name or slug.
    pub q: Option<String>,
}

impl OnboardingFilter {
    /// Drops empty fields.
    pub fn normalized(self) -> Self {
        let clean = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        OnboardingFilter {
            state: clean(self.state),
            q: clean(self.q),
        }
    }
}

/// A saga in a list.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OnboardingRow {
    /// Its id (the saga id).
    pub id: i64,
    /// The Clerk organization.
    pub org_id: String,
    /// The org's name, from the request.
    pub name: Option<String>,
    /// The org's slug.
    pub slug: Option<String>,
    /// The saga's state.
    pub state: String,
    /// `webhook` or `api`.
    pub source: String,
    /// When it started.
    pub created_at: Time,
    /// When it last changed.
    pub updated_at: Time,
}

const COLUMNS: &str =
    "select id, clerk_org_id as org_id, request->>'name' as name, request->>'slug' as slug,
        state, source, created_at, updated_at from onboard.onboarding";

/// Sagas matching `filter`, newest first, ids below `before`.
pub async fn list(
    pool: &PgPool,
    filter: &OnboardingFilter,
    before: Option<i64>,
    asked: Option<i64>,
) -> Result<Vec<OnboardingRow>, sqlx::Error> {
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(COLUMNS);
    sql.push(" where true");
    if let Some(state) = &filter.state {
        sql.push(" and state = ").push_bind(state.clone());
    }
    match &filter.q {
        // An org id is an exact, indexed match; other text searches names and slugs.
        Some(q) if q.starts_with("org_") => {
            sql.push(" and clerk_org_id = ").push_bind(q.clone());
        }
        Some(q) => {
            let pattern = format!("%{}%", like_escape(q));
            sql.push(" and (request->>'name' ilike ")
                .push_bind(pattern.clone())
                .push(" or request->>'slug' ilike ")
                .push_bind(pattern)
                .push(")");
        }
        None => {}
    }
    if let Some(before) = before {
        sql.push(" and id < ").push_bind(before);
    }
    sql.push(" order by id desc limit ").push_bind(limit(asked));
    sql.build_query_as().persistent(false).fetch_all(pool).await
}

/// A step of the timeline.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StepRow {
    /// Its name.
    pub name: String,
    /// Its order, from 1.
    pub position: i16,
    /// Its state.
    pub state: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// Its output (Twilio SID, email id, compensation result).
    pub output: sqlx::types::Json<Value>,
    /// When it last changed.
    pub updated_at: Time,
}

/// What an operator may do to a saga in its state (DESIGN.md §4).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Allowed {
    /// `compensated`: start again from step 1.
    pub restart: bool,
    /// `completed_with_errors` or `compensation_failed`: retry the failed step or compensation.
    pub retry: bool,
    /// `running` and before the point of no return: cancel (it compensates).
    pub cancel: bool,
}

/// One saga.
#[derive(Debug, Clone, Serialize)]
pub struct OnboardingDetail {
    /// The row.
    #[serde(flatten)]
    pub row: OnboardingRow,
    /// The starting request (PII masked unless revealed).
    pub request: Value,
    /// The steps in order.
    pub steps: Vec<StepRow>,
    /// Its jobs, oldest first: steps, compensations (`undo_*`), metadata sync.
    pub jobs: Vec<SagaJob>,
    /// The actions its state allows.
    pub allowed: Allowed,
}

/// A job of a saga, with its attempts' errors.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SagaJob {
    /// The job.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub job: JobRow,
    /// Every failed attempt.
    pub errors: Vec<sqlx::types::Json<Value>>,
}

/// One saga, or `None`.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<OnboardingDetail>, sqlx::Error> {
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(COLUMNS);
    sql.push(" where id = ").push_bind(id);
    let Some(row): Option<OnboardingRow> = sql.build_query_as().fetch_optional(pool).await? else {
        return Ok(None);
    };
    let request: sqlx::types::Json<Value> =
        sqlx::query_scalar("select request from onboard.onboarding where id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
    let steps: Vec<StepRow> = sqlx::query_as(
        "select name, position, state, attempts, last_error, output, updated_at
           from onboard.onboarding_step where onboarding_id = $1 order by position",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let jobs: Vec<SagaJob> = sqlx::query_as(
        "select id, queue, kind, state::text as state, attempt, max_attempts, run_at, created_at, finalized_at, args, errors
           from onboard.job where args ? 'onboarding_id' and (args->>'onboarding_id')::bigint = $1
          order by id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let allowed = match onboarding::saga::saga_actions(&mut *pool.acquire().await?, id).await {
        Ok(a) => Allowed {
            restart: a.restart,
            retry: a.retry,
            cancel: a.cancel,
        },
        Err(onboarding::saga::SagaError::Database(e)) => return Err(e),
        Err(_) => Allowed::default(),
    };
    Ok(Some(OnboardingDetail {
        row,
        request: request.0,
        steps,
        jobs,
        allowed,
    }))
}
