//! The faults: SIGKILLs of a worker at the plan's moments (aimed at a moment it holds a job,
//! each restarted after a while), a supervisor that restarts any role that dies by itself (as systemd or Kubernetes would, and
//! counts it), and `pg_ctl restart -m immediate` under load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobs::local_pg::LocalPostgres;
use sqlx::PgPool;
use tokio::sync::{oneshot, watch};

use crate::plan::Kill;
use crate::roles::{Role, Supervised};

/// The lease of a claimed job: a killed worker's jobs are rescued once it has expired (plus
/// one maintenance round, 1 s). Every queue of `onboard worker` uses kinds with a 60 s timeout,
/// so its lease is 2 × 60 s = 120 s (`QueueConfig::effective_lease`).
pub fn lease() -> Duration {
    jobs::QueueConfig::new("any").effective_lease()
}

/// How long a kill may wait for its worker to hold a running job.
const AIM: Duration = Duration::from_secs(5);

/// What the supervisor did.
#[derive(Debug, Default)]
pub struct FaultLog {
    /// One line per kill or unexpected exit, with its time from the start of the load.
    pub lines: Vec<(f64, String)>,
    /// Kills done.
    pub kills: usize,
    /// Roles that died by themselves (and were started again), with how.
    pub unexpected_exits: Vec<String>,
}

/// Running jobs whose lease `pid` holds (lease owners are `<queue>:<host>:<pid>:<random>`).
async fn held_by(pool: &PgPool, pid: u32) -> Option<i64> {
    let query = sqlx::query_scalar(
        "select count(*) from onboard.job where state = 'running' and lease_owner like $1",
    )
    .bind(format!("%:{pid}:%"))
    .fetch_one(pool);
    tokio::time::timeout(Duration::from_secs(2), query)
        .await
        .ok()?
        .ok()
}

fn at(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

/// Restarts any supervised role that exited by itself.
fn revive(roles: &mut Supervised, t0: Instant, log: &mut FaultLog) {
    let all = roles
        .workers
        .iter_mut()
        .chain(std::iter::once(&mut roles.ingress));
    for role in all {
        if let Some(status) = role.exited() {
            let tail = role.log_tail(5);
            log.unexpected_exits.push(format!(
                "{} exited with {status} at {:.1} s",
                role.name,
                at(t0)
            ));
            let pid = role.start();
            log.lines.push((
                at(t0),
                format!(
                    "{} exited by itself ({status}); started again as pid {pid}; its log ended:\n{tail}",
                    role.name
                ),
            ));
        }
    }
}

async fn kill(role: &mut Role, kill: &Kill, pool: &PgPool, t0: Instant, log: &mut FaultLog) {
    let Some(pid) = role.pid() else {
        return;
    };
    // An idle worker's death tests little: strike at the first moment within `AIM` that it
    // holds a running job (or at the end of it).
    let aim = Instant::now();
    let mut held = held_by(pool, pid).await;
    while held.unwrap_or(0) == 0 && aim.elapsed() < AIM {
        tokio::time::sleep(Duration::from_millis(20)).await;
        held = held_by(pool, pid).await;
    }
    role.sigkill().await;
    let killed_at = at(t0);
    // The worker stays dead for a while, as a crashed process does before it is restarted.
    tokio::time::sleep(kill.down_for).await;
    let new_pid = role.start();
    log.kills += 1;
    log.lines.push((
        killed_at,
        format!(
            "SIGKILL {} pid {pid} holding {} running jobs; restarted after {:.1} s as pid {new_pid}",
            role.name,
            held.map_or("?".to_owned(), |n| n.to_string()),
            kill.down_for.as_secs_f64(),
        ),
    ));
}

/// Kills workers on the plan's schedule (signalling `kills_done` after the last) and restarts
/// roles that die by themselves, until `stop`; returns the roles and what it did.
pub async fn supervise(
    mut roles: Supervised,
    kills: Vec<Kill>,
    t0: Instant,
    pool: PgPool,
    kills_done: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> (Supervised, FaultLog) {
    let mut log = FaultLog::default();
    let mut kills_done = Some(kills_done);
    let mut pending = kills.into_iter().peekable();
    loop {
        revive(&mut roles, t0, &mut log);
        if let Some(next) = pending.next_if(|k| t0.elapsed() >= k.at) {
            kill(&mut roles.workers[next.worker], &next, &pool, t0, &mut log).await;
            continue;
        }
        if pending.peek().is_none()
            && let Some(done) = kills_done.take()
        {
            let _ = done.send(());
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            // The supervisor's round: look at the processes, and at the clock for the next kill.
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    revive(&mut roles, t0, &mut log);
    (roles, log)
}

/// Restarts PostgreSQL (`pg_ctl restart -m immediate`) at each of `moments`; one line each,
/// with its time from the start of the load.
pub async fn restart_postgres(
    pg: Arc<LocalPostgres>,
    moments: Vec<Duration>,
    t0: Instant,
    pool: PgPool,
) -> Vec<(f64, String)> {
    let mut lines = Vec::new();
    for moment in moments {
        tokio::time::sleep_until((t0 + moment).into()).await;
        let running: Option<i64> = sqlx::query_scalar(
            "select count(*) from onboard.job where state in ('running', 'available')",
        )
        .fetch_one(&pool)
        .await
        .ok();
        let began = at(t0);
        let pg = pg.clone();
        let restarted = tokio::task::spawn_blocking(move || pg.restart_immediate())
            .await
            .expect("restart task");
        if let Err(error) = restarted {
            panic!("pg_ctl restart -m immediate failed: {error:#}");
        }
        lines.push((
            began,
            format!(
                "PostgreSQL restart -m immediate with {} jobs running or available; accepting connections again after {:.1} s",
                running.map_or("?".to_owned(), |n| n.to_string()),
                at(t0) - began
            ),
        ));
    }
    lines
}
