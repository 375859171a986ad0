//! Background services, River-style agent nouns, each with a `run_once` that returns counts:
//! [`LeaseReaper`] rescues jobs whose worker stopped heartbeating, [`Retention`] deletes old
//! finished jobs, [`Scheduler`] enqueues periodic jobs once per tick across all replicas.
//! [`run`] drives them all; a transaction-scoped advisory lock lets one replica do each round.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::{NewJob, enqueue};

/// Returns jobs whose lease expired to `retryable` (or `discarded` when out of attempts, or
/// `cancelled` when an operator cancelled them meanwhile), recording the lost attempt. Their stale worker can no longer complete them: its attempt
/// no longer matches, or the row is not `running`.
#[derive(Debug, Clone)]
pub struct LeaseReaper {
    /// Jobs rescued per round at most.
    pub batch: i64,
}

impl Default for LeaseReaper {
    fn default() -> Self {
        LeaseReaper { batch: 1000 }
    }
}

impl LeaseReaper {
    /// Rescues up to `batch` expired jobs; returns how many.
    pub async fn run_once(&self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "update onboard.job
                set state = case when cancel_requested then 'cancelled'
                                 when attempt >= max_attempts then 'discarded'
                                 else 'retryable' end::onboard.job_state,
                    finalized_at = case when cancel_requested or attempt >= max_attempts then now() end,
                    run_at = now(),
                    errors = array_append(errors, jsonb_build_object(
                        'attempt', attempt, 'at', now(), 'worker', lease_owner, 'kind', 'lease_expired',
                        'message', 'lease expired: the worker stopped heartbeating')),
                    lease_owner = null, lease_expires_at = null
              where id = any(array(
                      select id from onboard.job
                       where state = 'running' and lease_expires_at < now()
                       limit $1 for update skip locked))
                and state = 'running' and lease_expires_at < now()",
        )
        .bind(self.batch)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Deletes finished jobs past their retention.
#[derive(Debug, Clone)]
pub struct Retention {
    /// How long completed jobs are kept.
    pub completed: Duration,
    /// How long cancelled jobs are kept.
    pub cancelled: Duration,
    /// How long discarded jobs are kept.
    pub discarded: Duration,
    /// Rows deleted per round at most.
    pub batch: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            completed: Duration::from_secs(24 * 3600),
            cancelled: Duration::from_secs(24 * 3600),
            discarded: Duration::from_secs(7 * 24 * 3600),
            batch: 10_000,
        }
    }
}

impl Retention {
    /// Deletes up to `batch` jobs of each finished state past retention; returns how many.
    pub async fn run_once(&self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        let mut deleted = 0;
        for (state, keep) in [
            ("completed", self.completed),
            ("cancelled", self.cancelled),
            ("discarded", self.discarded),
        ] {
            deleted += sqlx::query(
                // The guard is repeated outside: a row an operator retries while this waits
                // for its lock is re-checked in its new version and kept.
                "delete from onboard.job
                  where id = any(array(
                          select id from onboard.job
                           where state = $1::onboard.job_state and finalized_at < now() - $2 * interval '1 millisecond'
                           limit $3))
                    and state = $1::onboard.job_state and finalized_at < now() - $2 * interval '1 millisecond'",
            )
            .bind(state)
            .bind(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
            .bind(self.batch)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        }
        Ok(deleted)
    }
}

/// A job enqueued every `every`, once per tick across all replicas.
#[derive(Debug, Clone)]
pub struct PeriodicJob {
    /// Unique name of the schedule.
    pub name: String,
    /// Interval between ticks.
    pub every: Duration,
    /// The job to enqueue each tick.
    pub job: NewJob,
}

/// Enqueues due periodic jobs. A tick is claimed by a guarded update of its `periodic` row, so
/// however many replicas run it, each tick enqueues one job.
#[derive(Debug, Clone, Default)]
pub struct Scheduler {
    /// The schedules.
    pub jobs: Vec<PeriodicJob>,
}

impl Scheduler {
    /// Enqueues the jobs whose tick is due; returns how many.
    pub async fn run_once(&self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        let mut enqueued = 0;
        for periodic in &self.jobs {
            let every_ms = i64::try_from(periodic.every.as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            sqlx::query("insert into onboard.periodic (name, next_run_at) values ($1, now()) on conflict do nothing")
                .bind(&periodic.name)
                .execute(&mut *conn)
                .await?;
            let claimed: Option<DateTime<Utc>> = sqlx::query_scalar(
                "update onboard.periodic p
                    set next_run_at = greatest(p.next_run_at + $2 * interval '1 millisecond', now()),
                        updated_at = now()
                   from (select next_run_at from onboard.periodic where name = $1) old
                  where p.name = $1 and p.next_run_at <= now()
              returning old.next_run_at",
            )
            .bind(&periodic.name)
            .bind(every_ms)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(tick) = claimed {
                let job = periodic.job.clone().unique_key(format!(
                    "periodic:{}:{}",
                    periodic.name,
                    tick.timestamp_millis()
                ));
                enqueue(conn, &job).await?;
                enqueued += 1;
            }
        }
        Ok(enqueued)
    }
}

/// The maintenance services together, with how often they run.
#[derive(Debug, Clone)]
pub struct Maintenance {
    /// Rescues expired leases.
    pub reaper: LeaseReaper,
    /// Deletes old finished jobs.
    pub retention: Retention,
    /// Enqueues periodic jobs.
    pub scheduler: Scheduler,
    /// How often a round runs.
    pub every: Duration,
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            reaper: LeaseReaper::default(),
            retention: Retention::default(),
            scheduler: Scheduler::default(),
            every: Duration::from_secs(1),
        }
    }
}

/// What one maintenance round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// False when another replica held the round's lock.
    pub ran: bool,
    /// Jobs rescued from expired leases.
    pub rescued: u64,
    /// Finished jobs deleted.
    pub deleted: u64,
    /// Periodic jobs enqueued.
    pub scheduled: u64,
}

/// The advisory lock key of a maintenance round (transaction-scoped: works behind poolers).
pub const MAINTENANCE_LOCK: i64 = 0x6f6e_626f_6172_6401;

impl Maintenance {
    /// One round in one transaction, if no other replica is running one.
    pub async fn run_once(&self, pool: &PgPool) -> Result<RoundReport, sqlx::Error> {
        let mut tx = pool.begin().await?;
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
            .bind(MAINTENANCE_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(RoundReport::default());
        }
        let report = RoundReport {
            ran: true,
            rescued: self.reaper.run_once(&mut tx).await?,
            deleted: self.retention.run_once(&mut tx).await?,
            scheduled: self.scheduler.run_once(&mut tx).await?,
        };
        tx.commit().await?;
        crate::metrics::leases_reaped(report.rescued);
        Ok(report)
    }
}

/// Runs maintenance rounds until `stop` resolves; database errors are logged and retried.
pub async fn run(
    pool: PgPool,
    maintenance: Maintenance,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut ticker = tokio::time::interval(maintenance.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut stop => return,
        }
        match maintenance.run_once(&pool).await {
            Ok(report) if report.rescued > 0 => {
                tracing::warn!(rescued = report.rescued, "rescued jobs from expired leases")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "maintenance round failed; retrying next tick"),
        }
    }
}
