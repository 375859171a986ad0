//! Waiting for the system to go quiet after the last fault: every saga terminal and no job left
//! to run. Work only ever waits on a lease (a killed worker's jobs) or a backoff, so a system
//! that makes no progress for longer than the lease, one maintenance round and a margin is
//! stuck: the wait ends there and the invariants say why.

use std::fmt;
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// Slack over the lease for the reaper's round, the rescued attempt and the steps after it.
const MARGIN: Duration = Duration::from_secs(30);
/// One maintenance round of `onboard worker` (the lease reaper runs every second).
const REAPER_ROUND: Duration = Duration::from_secs(1);
/// A running job whose lease expired longer ago than this was not rescued in time.
const OVERDUE: Duration = Duration::from_secs(10);

const SNAPSHOT: &str = "
select (select count(*) from onboard.onboarding where state in ('running', 'compensating')),
       (select count(*) from onboard.job where state in ('available', 'running', 'retryable', 'scheduled')),
       (select count(*) from onboard.job),
       (select count(*) from onboard.job where state in ('completed', 'discarded', 'cancelled')),
       (select coalesce(sum(attempt), 0)::bigint from onboard.job),
       (select coalesce(max(extract(epoch from lease_expires_at - now())), 0)::float8
          from onboard.job where state = 'running'),
       (select coalesce(max(extract(epoch from now() - lease_expires_at)), 0)::float8
          from onboard.job where state = 'running')";

type Snapshot = (i64, i64, i64, i64, i64, f64, f64);

/// How the wait ended.
#[derive(Debug, Clone)]
pub struct Settled {
    /// Every saga terminal and no live job.
    pub quiet: bool,
    /// Seconds from the start of the load when the wait ended.
    pub at: f64,
    /// How long it waited.
    pub waited: Duration,
    /// The no-progress limit it used.
    pub limit: Duration,
    /// Non-terminal sagas and live jobs at the end.
    pub non_terminal: i64,
    /// Jobs still `available`, `running`, `retryable` or `scheduled` at the end.
    pub live: i64,
    /// The longest time a running job was seen past its lease (while waiting).
    pub most_overdue: Duration,
}

impl fmt::Display for Settled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {:.1} s after waiting {:.1} s (limit: {:.0} s without progress = lease + {:.0} s round + {:.0} s margin); \
             {} sagas not terminal, {} live jobs; a running job was seen at most {:.1} s past its lease",
            if self.quiet { "quiet" } else { "NOT quiet" },
            self.at,
            self.waited.as_secs_f64(),
            self.limit.as_secs_f64(),
            REAPER_ROUND.as_secs_f64(),
            MARGIN.as_secs_f64(),
            self.non_terminal,
            self.live,
            self.most_overdue.as_secs_f64(),
        )
    }
}

impl Settled {
    /// Whether a running job stayed past its lease longer than a reaper round and a margin.
    pub fn overdue_seen(&self) -> bool {
        self.most_overdue > OVERDUE
    }
}

/// Waits until every saga is terminal and no job is live, or until nothing has changed for
/// `lease` (or the longest lease seen, if longer) + a maintenance round + a margin.
pub async fn wait_quiet(pool: &PgPool, lease: Duration, t0: Instant) -> Settled {
    let started = Instant::now();
    let mut last: Option<(i64, i64, i64, i64, i64)> = None;
    let mut last_progress = Instant::now();
    let mut longest_lease = lease;
    let mut most_overdue = Duration::ZERO;
    let mut end = (i64::MAX, i64::MAX);
    loop {
        let limit = longest_lease + REAPER_ROUND + MARGIN;
        // The database may be briefly away (restart): a failed look is no progress.
        if let Ok(snapshot) = sqlx::query_as::<_, Snapshot>(SNAPSHOT)
            .fetch_one(pool)
            .await
        {
            let (non_terminal, live, total, finished, attempts, lease_left, overdue) = snapshot;
            longest_lease = longest_lease.max(Duration::from_secs_f64(lease_left.max(0.0)));
            most_overdue = most_overdue.max(Duration::from_secs_f64(overdue.max(0.0)));
            end = (non_terminal, live);
            let key = (non_terminal, live, total, finished, attempts);
            if last != Some(key) {
                last = Some(key);
                last_progress = Instant::now();
            }
            if non_terminal == 0 && live == 0 {
                break;
            }
        }
        if last_progress.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Settled {
        quiet: end == (0, 0),
        at: t0.elapsed().as_secs_f64(),
        waited: started.elapsed(),
        limit: longest_lease + REAPER_ROUND + MARGIN,
        non_terminal: end.0,
        live: end.1,
        most_overdue,
    }
}
