//! Queues: depth by state, oldest available job's age, completions in the last minute, caps
//! and whether it is paused.

use serde::Serialize;
use sqlx::PgPool;

/// One queue.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueRow {
    /// Its name.
    pub name: String,
    /// Jobs runnable now (available, or scheduled/retryable whose time has come).
    pub available: i64,
    /// Jobs waiting for their time (scheduled, retryable or enqueued for later).
    pub waiting: i64,
    /// Jobs running.
    pub running: i64,
    /// Age in seconds of the oldest runnable job.
    pub oldest_age_s: Option<f64>,
    /// Jobs completed in the last minute.
    pub completed_last_minute: i64,
    /// Paused: workers fetch none of its jobs.
    pub paused: bool,
    /// Cap on jobs running at once across workers.
    pub max_running: Option<i32>,
    /// Cap on jobs started per second.
    pub max_per_second: Option<f64>,
    /// When an operator last set the caps (built-in defaults never overwrite them).
    pub limits_set_at: Option<chrono::DateTime<chrono::Utc>>,
}

// Live rows are read through the fetch's partial indexes, one branch each (`job_available_idx`,
// `job_waiting_idx`): a single `state in (…)` matches neither index and scans the table.
const QUEUES: &str = "
with live as (
    select queue,
           count(*) filter (where run_at <= now()) as available,
           count(*) filter (where run_at > now()) as waiting,
           extract(epoch from now() - min(run_at) filter (where run_at <= now()))::float8 as oldest_age_s
      from (select queue, run_at from onboard.job where state = 'available'
            union all
            select queue, run_at from onboard.job where state in ('scheduled', 'retryable')) l
     group by queue
), running as (
    select queue, count(*) as running from onboard.job where state = 'running' group by queue
), done as (
    select queue, count(*) as completed from onboard.job
     where state = 'completed' and finalized_at > now() - interval '1 minute' group by queue
), names as (
    select queue as name from live union select queue from running union select queue from done
    union select name from onboard.queue
)
select n.name, coalesce(l.available, 0) as available, coalesce(l.waiting, 0) as waiting,
       coalesce(r.running, 0) as running, l.oldest_age_s, coalesce(d.completed, 0) as completed_last_minute,
       coalesce(q.paused, false) as paused, q.max_running, q.max_per_second, q.limits_set_at
  from names n
  left join live l on l.queue = n.name
  left join running r on r.queue = n.name
  left join done d on d.queue = n.name
  left join onboard.queue q on q.name = n.name
 order by n.name";

/// Every queue that has jobs or settings.
pub async fn list(pool: &PgPool) -> Result<Vec<QueueRow>, sqlx::Error> {
    sqlx::query_as(QUEUES).fetch_all(pool).await
}
