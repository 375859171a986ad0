//! Jobs: the filtered, newest-first list (keyset on id) and one job with every attempt.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::{Time, limit};

/// The live states (a job that will still run).
pub const LIVE_STATES: [&str; 4] = ["available", "scheduled", "running", "retryable"];

/// The job list's filters (the page's query string and the API's).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct JobFilter {
    /// One state.
    pub state: Option<String>,
    /// One queue.
    pub queue: Option<String>,
    /// One kind.
    pub kind: Option<String>,
    /// A Clerk organization id: that org's saga and offboarding jobs.
    pub org: Option<String>,
    /// Text in the args of live jobs.
    pub q: Option<String>,
}

impl JobFilter {
    /// Drops empty fields (an HTML form sends them).
    pub fn normalized(self) -> Self {
        let clean = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        JobFilter {
            state: clean(self.state),
            queue: clean(self.queue),
            kind: clean(self.kind),
            org: clean(self.org),
            q: clean(self.q),
        }
    }

    /// Pushes ` from … where …`. A text search reads the live jobs only: its `or` of the
    /// three partial indexes' predicates (`job_available_idx`, `job_waiting_idx`,
    /// `job_running_idx`) becomes one bitmap of their rows, which one parallel heap scan reads.
    /// It has no index of its own: a trigram index on live jobs costs every enqueue (the
    /// ingress's included) more than this search saves.
    fn push_from_where(&self, sql: &mut QueryBuilder<Postgres>, org_jobs: Option<Vec<i64>>) {
        sql.push(" from onboard.job where true");
        if let Some(q) = &self.q {
            // Case-sensitive substring (ids are): `strpos` reads each live row's args text in
            // half the time of `ilike`.
            sql.push(
                " and (state = 'available' or state in ('scheduled', 'retryable') or state = 'running')",
            )
            .push(" and strpos(args::text, ")
            .push_bind(q.clone())
            .push(") > 0");
        }
        if let Some(state) = &self.state {
            if STATES.contains(&state.as_str()) {
                sql.push(" and state = ")
                    .push_bind(state.clone())
                    .push("::onboard.job_state");
            } else {
                sql.push(" and false");
            }
        }
        if let Some(queue) = &self.queue {
            sql.push(" and queue = ").push_bind(queue.clone());
        }
        if let Some(kind) = &self.kind {
            sql.push(" and kind = ").push_bind(kind.clone());
        }
        if let Some(ids) = org_jobs {
            // The org's job ids are looked up first (two partial indexes), then fetched by id.
            sql.push(" and id = any(").push_bind(ids).push(")");
        }
    }

    /// Pushes ` order by … desc limit `. A text search orders by `id + 0`, which no index
    /// gives: otherwise the plan walks the primary key from the newest job through every
    /// finished one, testing each row (seconds on a large table) instead of reading the live
    /// rows' bitmap.
    fn push_newest_first(&self, sql: &mut QueryBuilder<Postgres>) {
        sql.push(if self.q.is_some() {
            " order by id + 0 desc limit "
        } else {
            " order by id desc limit "
        });
    }

    /// The ids of the `org` filter's jobs: its saga's jobs and its offboarding.
    async fn org_jobs(&self, pool: &PgPool) -> Result<Option<Vec<i64>>, sqlx::Error> {
        let Some(org) = &self.org else {
            return Ok(None);
        };
        let ids = sqlx::query_scalar(
            "select j.id from onboard.onboarding s
               join onboard.job j on j.args ? 'onboarding_id' and (j.args->>'onboarding_id')::bigint = s.id
              where s.clerk_org_id = $1
             union all
             select id from onboard.job where args ? 'clerk_org_id' and args->>'clerk_org_id' = $1
             limit 10000",
        )
        .bind(org)
        .fetch_all(pool)
        .await?;
        Ok(Some(ids))
    }
}

/// Every job state.
pub const STATES: [&str; 7] = [
    "available",
    "scheduled",
    "running",
    "retryable",
    "completed",
    "cancelled",
    "discarded",
];

/// A job in a list.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRow {
    /// Its id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// Its state.
    pub state: String,
    /// Attempts made.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// When it runs (or ran).
    pub run_at: Time,
    /// When it was enqueued.
    pub created_at: Time,
    /// When it finished.
    pub finalized_at: Option<Time>,
    /// Its arguments.
    pub args: sqlx::types::Json<Value>,
}

const JOB_COLUMNS: &str = "select id, queue, kind, state::text as state, attempt, max_attempts, run_at, created_at, finalized_at, args";

/// Jobs matching `filter`, newest first, with ids below `before`.
pub async fn list(
    pool: &PgPool,
    filter: &JobFilter,
    before: Option<i64>,
    asked: Option<i64>,
) -> Result<Vec<JobRow>, sqlx::Error> {
    let org_jobs = filter.org_jobs(pool).await?;
    let mut sql = QueryBuilder::new(JOB_COLUMNS);
    filter.push_from_where(&mut sql, org_jobs);
    if let Some(before) = before {
        sql.push(" and id < ").push_bind(before);
    }
    filter.push_newest_first(&mut sql);
    sql.push_bind(limit(asked));
    sql.build_query_as().persistent(false).fetch_all(pool).await
}

/// Ids of every job matching `filter` (a bulk action on a filter), at most `cap`.
pub async fn ids(pool: &PgPool, filter: &JobFilter, cap: i64) -> Result<Vec<i64>, sqlx::Error> {
    let org_jobs = filter.org_jobs(pool).await?;
    let mut sql = QueryBuilder::new("select id");
    filter.push_from_where(&mut sql, org_jobs);
    filter.push_newest_first(&mut sql);
    sql.push_bind(cap);
    sql.build_query_scalar()
        .persistent(false)
        .fetch_all(pool)
        .await
}

/// One job with everything an operator needs.
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    /// The row.
    #[serde(flatten)]
    pub job: JobRow,
    /// The worker holding it (running only).
    pub lease_owner: Option<String>,
    /// When its lease ends.
    pub lease_expires_at: Option<Time>,
    /// When its last attempt started.
    pub attempted_at: Option<Time>,
    /// Its unique key.
    pub unique_key: Option<String>,
    /// An operator asked it to stop.
    pub cancel_requested: bool,
    /// Every failed attempt as the queue recorded it: `{attempt, at, worker, duration_ms,
    /// message, kind}`.
    pub errors: Vec<Value>,
    /// Every attempt, oldest first: the failed ones, then the last one if it did not fail.
    pub attempts: Vec<Attempt>,
    /// The saga it is a step of.
    pub onboarding_id: Option<i64>,
}

/// One attempt of a job.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Attempt {
    /// Its number, from 1.
    pub attempt: i64,
    /// When it started (known for the last attempt, and for failed ones that recorded a
    /// duration).
    pub started_at: Option<Time>,
    /// When it ended (a running one has not).
    pub ended_at: Option<Time>,
    /// How long it ran, in milliseconds.
    pub duration_ms: Option<i64>,
    /// The worker that ran it, when known.
    pub worker: Option<String>,
    /// How it ended: the error kind of a failed attempt (`error`, `timeout`, `permanent`,
    /// `cancelled`, `lease_expired`, …), `completed`, or `running`.
    pub outcome: String,
    /// The error text of a failed attempt.
    pub error: Option<String>,
}

/// Every attempt of a job, from its `errors` history and its last attempt's columns.
pub fn attempts(
    job: &JobRow,
    errors: &[Value],
    attempted_at: Option<Time>,
    lease_owner: Option<&str>,
) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = errors
        .iter()
        .map(|e| {
            let ended_at = e["at"].as_str().and_then(|t| t.parse::<Time>().ok());
            let duration_ms = e["duration_ms"].as_i64();
            Attempt {
                attempt: e["attempt"].as_i64().unwrap_or_default(),
                started_at: ended_at
                    .zip(duration_ms)
                    .map(|(end, ms)| end - chrono::Duration::milliseconds(ms)),
                ended_at,
                duration_ms,
                worker: e["worker"].as_str().map(str::to_owned),
                outcome: e["kind"].as_str().unwrap_or("error").to_owned(),
                error: e["message"].as_str().map(str::to_owned),
            }
        })
        .collect();
    let last = i64::from(job.attempt);
    let recorded = out.iter().any(|a| a.attempt == last);
    if last > 0 && !recorded {
        let ended_at = match job.state.as_str() {
            "running" => None,
            _ => job.finalized_at,
        };
        if matches!(job.state.as_str(), "running" | "completed") {
            out.push(Attempt {
                attempt: last,
                started_at: attempted_at,
                ended_at,
                duration_ms: attempted_at
                    .zip(ended_at)
                    .map(|(start, end)| (end - start).num_milliseconds()),
                worker: lease_owner.map(str::to_owned),
                outcome: job.state.clone(),
                error: None,
            });
        }
    }
    out
}

#[derive(sqlx::FromRow)]
struct DetailRow {
    #[sqlx(flatten)]
    job: JobRow,
    lease_owner: Option<String>,
    lease_expires_at: Option<Time>,
    attempted_at: Option<Time>,
    unique_key: Option<String>,
    cancel_requested: bool,
    errors: Vec<sqlx::types::Json<Value>>,
}

/// One job.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<JobDetail>, sqlx::Error> {
    let row: Option<DetailRow> = sqlx::query_as(
        "select id, queue, kind, state::text as state, attempt, max_attempts, run_at, created_at, finalized_at, args,
                lease_owner, lease_expires_at, attempted_at, unique_key, cancel_requested, errors
           from onboard.job where id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        let onboarding_id = saga_of(&r.job.args.0);
        let errors: Vec<Value> = r.errors.into_iter().map(|e| e.0).collect();
        let attempts = attempts(&r.job, &errors, r.attempted_at, r.lease_owner.as_deref());
        JobDetail {
            job: r.job,
            lease_owner: r.lease_owner,
            lease_expires_at: r.lease_expires_at,
            attempted_at: r.attempted_at,
            unique_key: r.unique_key,
            cancel_requested: r.cancel_requested,
            errors,
            attempts,
            onboarding_id,
        }
    }))
}

/// The saga a job belongs to, from its args.
pub fn saga_of(args: &Value) -> Option<i64> {
    args.get("onboarding_id").and_then(Value::as_i64)
}

/// The actions on a job its state allows (and, for a saga's job, its saga).
#[derive(Debug, Clone, Serialize)]
pub struct Allowed {
    /// Retry (run now).
    pub retry: bool,
    /// Cancel.
    pub cancel: bool,
    /// Discard.
    pub discard: bool,
    /// The saga of a saga's step or compensation job: its id and state.
    #[serde(skip)]
    pub saga: Option<(i64, String)>,
}

/// What the job's actions would accept now: a saga's job as the saga decides
/// (`onboarding::saga::step_job_actions`), any other job by its state, as `jobs::admin` does.
pub async fn allowed(pool: &PgPool, job: &JobRow) -> Result<Allowed, sqlx::Error> {
    use onboarding::saga::SagaError;
    let mut conn = pool.acquire().await?;
    match onboarding::saga::step_job_actions(&mut conn, job.id).await {
        Ok(a) => Ok(Allowed {
            retry: a.retry,
            cancel: a.cancel,
            discard: a.discard,
            saga: Some((a.onboarding_id, a.saga_state)),
        }),
        Err(SagaError::Database(e)) => Err(e),
        Err(_) => {
            let waiting = matches!(job.state.as_str(), "available" | "scheduled" | "retryable");
            Ok(Allowed {
                retry: job.state != "running",
                cancel: waiting || job.state == "running",
                discard: waiting,
                saga: None,
            })
        }
    }
}
