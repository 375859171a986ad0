//! The overview: jobs by state and queue, the last hour per minute, the oldest available job,
//! onboardings by state, and alerts.

use serde::Serialize;
use sqlx::PgPool;

use super::onboardings::OnboardingRow;

/// Finished states are counted up to this; beyond it the count is shown as "≥ cap" (an estimate).
pub const COUNT_CAP: i64 = 1_000;

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
    /// Live jobs by queue and state (exact unless the state is in `live_capped`).
    pub live: Vec<StateCount>,
    /// Live states with more than [`COUNT_CAP`] jobs: their counts are a sample (estimates).
    pub live_capped: Vec<String>,
    /// Finished jobs by state (capped).
    pub finished: Vec<CappedCount>,
    /// The last hour, one entry per minute, oldest first.
    pub last_hour: Vec<Minute>,
    /// The oldest runnable job (of each queue's next to run): id, queue, seconds waiting.
    pub oldest_available: Option<(i64, String, f64)>,
    /// Onboardings by state (capped).
    pub onboardings: Vec<CappedCount>,
    /// The alerts.
    pub alerts: Alerts,
}

const ALERT_LIMIT: i64 = 20;

const SAGA_STATES: [&str; 6] = [
    "running",
    "completed",
    "completed_with_errors",
    "compensating",
    "compensated",
    "compensation_failed",
];

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

/// Reads the overview. Its parts are independent reads, run at once on their own connections:
/// the page waits for the slowest part, not for their sum.
pub async fn read(
    pool: &PgPool,
    stuck_after: std::time::Duration,
) -> Result<Overview, sqlx::Error> {
    let (live_jobs, finished, last_hour, onboardings, alerts) = tokio::try_join!(
        async {
            let (live, capped) = live_counts(pool).await?;
            let oldest = oldest_available(pool, &live).await?;
            Ok::<_, sqlx::Error>((live, capped, oldest))
        },
        finished_counts(pool),
        last_hour(pool),
        onboarding_counts(pool),
        alerts(pool, stuck_after),
    )?;
    let (live, live_capped, oldest_available) = live_jobs;
    Ok(Overview {
        live,
        live_capped,
        finished,
        last_hour,
        oldest_available,
        onboardings,
        alerts,
    })
}

/// Live jobs by queue and state, and the live states whose count reached [`COUNT_CAP`].
async fn live_counts(pool: &PgPool) -> Result<(Vec<StateCount>, Vec<String>), sqlx::Error> {
    let mut live: Vec<StateCount> = Vec::new();
    let mut live_capped = Vec::new();
    // Each state is read in the order of its partial index, so the capped scan walks that
    // index, never the whole table (live jobs are the newest rows).
    for (state, order) in [
        ("available", "queue, priority, run_at, id"),
        ("scheduled", "queue, run_at"),
        ("retryable", "queue, run_at"),
        ("running", "queue, lease_expires_at"),
    ] {
        let counts: Vec<StateCount> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select queue, '{state}' as state, count(*) as count
               from (select queue from onboard.job where state = '{state}' order by {order} limit $1) capped
              group by queue order by queue"
        )))
        .bind(COUNT_CAP)
        .fetch_all(pool)
        .await?;
        if counts.iter().map(|c| c.count).sum::<i64>() >= COUNT_CAP {
            live_capped.push(state.to_owned());
        }
        live.extend(counts);
    }
    Ok((live, live_capped))
}

/// Finished jobs by state, capped.
async fn finished_counts(pool: &PgPool) -> Result<Vec<CappedCount>, sqlx::Error> {
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
    Ok(finished)
}

/// Jobs finished per minute over the last hour, with their queue latency.
async fn last_hour(pool: &PgPool) -> Result<Vec<Minute>, sqlx::Error> {
    sqlx::query_as(
        "with f as materialized (
             select (extract(epoch from now() - finalized_at) / 60)::int as ago,
                    count(*) filter (where state = 'completed') as completed,
                    count(*) filter (where state <> 'completed') as failed,
                    (avg(extract(epoch from attempted_at - run_at)) * 1000)::float8 as latency_ms
               from onboard.job
              where state in ('completed', 'discarded', 'cancelled')
                and finalized_at is not null and finalized_at > now() - interval '1 hour'
              group by 1)
         select m.ago::int as ago, coalesce(f.completed, 0) as completed, coalesce(f.failed, 0) as failed, f.latency_ms
           from generate_series(0, 59) m(ago) left join f on f.ago = m.ago
          order by m.ago desc",
    )
    .fetch_all(pool)
    .await
}

/// The oldest runnable job of the queues in `live`.
async fn oldest_available(
    pool: &PgPool,
    live: &[StateCount],
) -> Result<Option<(i64, String, f64)>, sqlx::Error> {
    // Per queue, the next `available` job in the fetch index's order (priority, then run_at:
    // what runs next) and the oldest due waiting one (`job_waiting_idx`'s order), so each
    // lookup reads one index entry; the oldest of those is the overview's.
    let mut queues: Vec<&str> = live.iter().map(|c| c.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    let mut oldest_available: Option<(i64, String, f64)> = None;
    for queue in queues {
        for sql in [
            "select id, queue, extract(epoch from now() - run_at)::float8 from onboard.job
              where state = 'available' and queue = $1 and run_at <= now()
              order by queue, priority, run_at, id limit 1",
            "select id, queue, extract(epoch from now() - run_at)::float8 from onboard.job
              where state in ('scheduled', 'retryable') and queue = $1 and run_at <= now()
              order by queue, run_at limit 1",
        ] {
            let first: Option<(i64, String, f64)> =
                sqlx::query_as(sql).bind(queue).fetch_optional(pool).await?;
            if let Some(first) = first
                && oldest_available.as_ref().is_none_or(|o| first.2 > o.2)
            {
                oldest_available = Some(first);
            }
        }
    }
    Ok(oldest_available)
}

/// Onboardings by state, capped; states with none are left out.
async fn onboarding_counts(pool: &PgPool) -> Result<Vec<CappedCount>, sqlx::Error> {
    let mut onboardings = Vec::new();
    for state in SAGA_STATES {
        let count: i64 = sqlx::query_scalar(
            "select count(*) from (select 1 from onboard.onboarding where state = $1 order by state, id limit $2) capped",
        )
        .bind(state)
        .bind(COUNT_CAP)
        .fetch_one(pool)
        .await?;
        if count > 0 {
            onboardings.push(CappedCount {
                state: state.to_owned(),
                count,
                at_least: count >= COUNT_CAP,
            });
        }
    }
    Ok(onboardings)
}

/// The overview's alerts; a saga is stuck when not terminal after `stuck_after`.
async fn alerts(pool: &PgPool, stuck_after: std::time::Duration) -> Result<Alerts, sqlx::Error> {
    let stuck_s = stuck_after.as_secs_f64();
    Ok(Alerts {
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
    })
}
