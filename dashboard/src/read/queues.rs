//! Queues: depth by state (capped counts), oldest available job's age, completions in the last
//! minute, caps and whether it is paused.

use serde::Serialize;
use sqlx::PgPool;

/// One queue.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueRow {
    /// Its name.
    pub name: String,
    /// Jobs runnable now (available, or scheduled/retryable whose time has come); at most
    /// twice `COUNT_CAP` (see `capped`).
    pub available: i64,
    /// Jobs waiting for their time (scheduled or retryable); at most `COUNT_CAP`.
    pub waiting: i64,
    /// A count reached its cap (`read::overview::COUNT_CAP`): the counts are lower bounds.
    pub capped: bool,
    /// Jobs running.
    pub running: i64,
    /// Age in seconds of the oldest runnable job (of `available` ones, the next in fetch order).
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

// Every read walks a partial index and stops early: the queue names by a skip scan of the
// fetch's indexes (one probe per queue), the counts capped at $1 (`capped` says a count is a
// lower bound), the oldest runnable job by one probe per index (fetch order for `available`).
const QUEUES: &str = "
with recursive available_names as (
    (select queue from onboard.job where state = 'available' order by queue limit 1)
    union all
    select (select j.queue from onboard.job j
             where j.state = 'available' and j.queue > a.queue order by j.queue limit 1)
      from available_names a where a.queue is not null
), waiting_names as (
    (select queue from onboard.job where state in ('scheduled', 'retryable') order by queue limit 1)
    union all
    select (select j.queue from onboard.job j
             where j.state in ('scheduled', 'retryable') and j.queue > w.queue order by j.queue limit 1)
      from waiting_names w where w.queue is not null
), running as (
    select queue, count(*) as running from onboard.job where state = 'running' group by queue
), done as (
    select queue, count(*) as completed from onboard.job
     where state = 'completed' and finalized_at > now() - interval '1 minute' group by queue
), names as (
    select queue as name from available_names where queue is not null
    union select queue from waiting_names where queue is not null
    union select queue from running union select queue from done
    union select name from onboard.queue
), counted as (
    select n.name,
           (select count(*) from (select 1 from onboard.job
                                   where state = 'available' and queue = n.name and run_at <= now() limit $1) c)
         + (select count(*) from (select 1 from onboard.job
                                   where state in ('scheduled', 'retryable') and queue = n.name and run_at <= now() limit $1) c)
             as available,
           (select count(*) from (select 1 from onboard.job
                                   where state in ('scheduled', 'retryable') and queue = n.name and run_at > now() limit $1) c)
             as waiting,
           least((select run_at from onboard.job
                   where state = 'available' and queue = n.name and run_at <= now()
                   order by queue, priority, run_at, id limit 1),
                 (select run_at from onboard.job
                   where state in ('scheduled', 'retryable') and queue = n.name and run_at <= now()
                   order by queue, run_at limit 1)) as oldest
      from names n
)
select c.name, c.available, c.waiting, c.available >= $1 or c.waiting >= $1 as capped,
       coalesce(r.running, 0) as running, extract(epoch from now() - c.oldest)::float8 as oldest_age_s,
       coalesce(d.completed, 0) as completed_last_minute,
       coalesce(q.paused, false) as paused, q.max_running, q.max_per_second, q.limits_set_at
  from counted c
  left join running r on r.queue = c.name
  left join done d on d.queue = c.name
  left join onboard.queue q on q.name = c.name
 order by c.name";

/// Every queue that has jobs or settings.
pub async fn list(pool: &PgPool) -> Result<Vec<QueueRow>, sqlx::Error> {
    sqlx::query_as(QUEUES)
        .bind(super::overview::COUNT_CAP)
        .fetch_all(pool)
        .await
}
