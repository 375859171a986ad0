//! The overview: jobs by state and queue, the last hour per minute, the oldest available job,
//! onboardings by state, and alerts.

use serde::Serialize;
use sqlx::PgPool;

use super::onboardings::OnboardingRow;

/// Finished states are counted up to this; beyond it the count is shown as "≥ cap" (an estimate).
pub const COUNT_CAP: i64 = 10_000;

/// Jobs of one state in one queue.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StateCount {
    /// The queue.
    pub queue: String,
    /// The state.
    pub state: String,
    /// How many (live states exact).
    pub count: i64,
}

/// A finished state's count, capped.
#[derive(Debug, Clone, Serialize)]
pub struct CappedCount {
    /// The state.
    pub state: String,
    /// How many, at most [`COUNT_CAP`].
    pub count: i64,
    /// True when the count reached the cap (the real number is larger).
    pub at_least: bool,
}

/// One minute of the last hour.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Minute {
    /// Minutes ago (0 = this minute).
    pub ago: i32,
    /// Jobs completed.
    pub completed: i64,
    /// Jobs discarded or cancelled.
    pub failed: i64,
    /// Mean wait from `run_at` to the last attempt's start, ms.
    pub latency_ms: Option<f64>,
}

/// Something an operator should look at.
#[derive(Debug, Clone, Serialize)]
pub struct Alerts {
    /// Sagas whose compensation failed.
    pub compensation_failed: Vec<OnboardingRow>,
    /// Sagas completed with a failed step after the point of no return.
    pub completed_with_errors: Vec<OnboardingRow>,
    /// Sagas not terminal after [`crate::Settings::stuck_after`].
    pub not_terminal: Vec<OnboardingRow>,
    /// Running jobs whose lease expired (their worker died; the reaper will free them).
    pub past_lease: Vec<i64>,
}

/// Everything on the overview.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Live jobs by queue and state (exact).
    pub live: Vec<StateCount>,
    /// Finished jobs by state (capped).
    pub finished: Vec<CappedCount>,
    /// The last hour, one entry per minute, oldest first.
    pub last_hour: Vec<Minute>,
    /// The oldest available job: id, queue, seconds waiting.
    pub oldest_available: Option<(i64, String, f64)>,
    /// Onboardings by state.
    pub onboardings: Vec<(String, i64)>,
    /// The alerts.
    pub alerts: Alerts,
}

const ALERT_LIMIT: i64 = 20;

async fn sagas(
    pool: &PgPool,
    condition: &str,
    stuck_after_s: f64,
) -> Result<Vec<OnboardingRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select id, clerk_org_id as org_id, request->>'name' as name, request->>'slug' as slug,
                state, source, created_at, updated_at from onboard.onboarding
          where {condition} and $1::float8 >= 0 order by id desc limit {ALERT_LIMIT}"
    )))
    .bind(stuck_after_s)
    .fetch_all(pool)
    .await
}

/// Reads the overview.
pub async fn read(
    pool: &PgPool,
    stuck_after: std::time::Duration,
) -> Result<Overview, sqlx::Error> {
    let live: Vec<StateCount> = sqlx::query_as(
        "select queue, state::text as state, count(*) as count from onboard.job
          where state in ('available', 'scheduled', 'running', 'retryable')
          group by queue, state order by queue, state",
    )
    .fetch_all(pool)
    .await?;
    let mut finished = Vec::new();
    for state in ["completed", "cancelled", "discarded"] {
        let count: i64 = sqlx::query_scalar(
            "select count(*) from (select 1 from onboard.job
              where state = $1::onboard.job_state and finalized_at is not null limit $2) capped",
        )
        .bind(state)
        .bind(COUNT_CAP)
        .fetch_one(pool)
        .await?;
        finished.push(CappedCount {
            state: state.to_owned(),
            count,
            at_least: count >= COUNT_CAP,
        });
    }
    let last_hour: Vec<Minute> = sqlx::query_as(
        "with m as (select generate_series(0, 59) as ago),
              f as (select (extract(epoch from now() - finalized_at) / 60)::int as ago,
                           state, attempted_at, run_at
                      from onboard.job
                     where state in ('completed', 'discarded', 'cancelled')
                       and finalized_at is not null and finalized_at > now() - interval '1 hour')
         select m.ago,
                count(f.*) filter (where f.state = 'completed') as completed,
                count(f.*) filter (where f.state <> 'completed') as failed,
                (avg(extract(epoch from f.attempted_at - f.run_at)) filter (where f.attempted_at is not null) * 1000)::float8 as latency_ms
           from m left join f on f.ago = m.ago
          group by m.ago order by m.ago desc",
    )
    .fetch_all(pool)
    .await?;
    let oldest_available: Option<(i64, String, f64)> = sqlx::query_as(
        "select id, queue, extract(epoch from now() - run_at)::float8 from onboard.job
          where state = 'available' and run_at <= now() order by run_at limit 1",
    )
    .fetch_optional(pool)
    .await?;
    let onboardings: Vec<(String, i64)> = sqlx::query_as(
        "select state, count(*) from onboard.onboarding group by state order by state",
    )
    .fetch_all(pool)
    .await?;
    let stuck_s = stuck_after.as_secs_f64();
    let alerts = Alerts {
        compensation_failed: sagas(pool, "state = 'compensation_failed'", stuck_s).await?,
        completed_with_errors: sagas(pool, "state = 'completed_with_errors'", stuck_s).await?,
        not_terminal: sagas(
            pool,
            "state in ('running', 'compensating') and created_at < now() - $1 * interval '1 second'",
            stuck_s,
        )
        .await?,
        past_lease: sqlx::query_scalar(
            "select id from onboard.job where state = 'running' and lease_expires_at < now()
              order by lease_expires_at limit 20",
        )
        .fetch_all(pool)
        .await?,
    };
    Ok(Overview {
        live,
        finished,
        last_hour,
        oldest_available,
        onboardings,
        alerts,
    })
}
