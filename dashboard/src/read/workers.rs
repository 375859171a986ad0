//! Workers: their heartbeats, the jobs they hold, and which look dead.

use serde::Serialize;
use sqlx::PgPool;

use super::Time;

/// A worker whose heartbeat is older than this is flagged dead.
pub const DEAD_AFTER_S: i64 = 60;

/// One worker (one backend instance of one process).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    /// Its lease-owner id.
    pub id: String,
    /// Its host.
    pub hostname: String,
    /// Its process id.
    pub pid: i32,
    /// The queue it serves.
    pub queue: String,
    /// When it started.
    pub started_at: Time,
    /// Its last heartbeat.
    pub heartbeat_at: Time,
    /// Jobs it holds now.
    pub in_flight: i64,
    /// No heartbeat for a minute.
    pub dead: bool,
}

/// Every worker, live first.
pub async fn list(pool: &PgPool) -> Result<Vec<WorkerRow>, sqlx::Error> {
    sqlx::query_as(
        "select w.id, w.hostname, w.pid, w.queue, w.started_at, w.heartbeat_at,
                coalesce(j.n, 0) as in_flight,
                w.heartbeat_at < now() - $1 * interval '1 second' as dead
           from onboard.worker w
           left join (select lease_owner, count(*) as n from onboard.job where state = 'running'
                       group by lease_owner) j on j.lease_owner = w.id
          order by dead, w.heartbeat_at desc
          limit 500",
    )
    .bind(DEAD_AFTER_S as f64)
    .fetch_all(pool)
    .await
}
