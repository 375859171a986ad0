//! Graceful shutdown: fetching stops at the signal, jobs claimed but not started go back at
//! once (no attempt charged), and nothing is claimed after the deadline.

use std::sync::Arc;
use std::time::Duration;

use apalis::layers::WorkerBuilderExt;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use jobs::{AnyJob, JobContext, JobError, NewJob, PgBackend, QueueConfig};
use serde_json::json;
use tokio::sync::Notify;

use crate::support::worker::{RunningWorker, run_monitor};
use crate::support::{DEADLINE, TestDb, fresh_db, wait_for};

/// A worker that runs one job at a time (apalis concurrency 1) and claims up to five: the
/// `blocker` runs until `release` is notified, the others wait claimed in the backend.
fn one_at_a_time(db: &TestDb, release: Arc<Notify>, deadline: Duration) -> RunningWorker {
    let mut config = QueueConfig::new("default");
    config.batch_size = 5;
    config.max_in_flight = 5;
    let pool = db.pool.clone();
    let monitor = Monitor::new()
        .shutdown_timeout(deadline)
        .register(move |_| {
            let release = release.clone();
            WorkerBuilder::new("one-at-a-time")
                .backend(PgBackend::<AnyJob>::new(pool.clone(), config.clone()))
                .concurrency(1)
                .build(move |job: AnyJob, _ctx: JobContext| {
                    let release = release.clone();
                    async move {
                        if job.kind == "blocker" {
                            release.notified().await;
                        }
                        Ok::<(), JobError>(())
                    }
                })
        });
    run_monitor(monitor)
}

/// Enqueues the blocker (first in line) and four jobs behind it; waits until all five are
/// claimed with only the blocker started.
async fn claim_five(db: &TestDb) -> (i64, Vec<i64>) {
    let blocker = db.add(NewJob::new("blocker", json!({})).priority(-1)).await;
    let mut early = Vec::new();
    for n in 0..4 {
        early.push(db.add(NewJob::new("early", json!({ "n": n }))).await);
    }
    wait_for("all five to be claimed", DEADLINE, || async {
        let running = db
            .count("select count(*) from onboard.job where state = 'running'")
            .await;
        (running == 5).then_some(())
    })
    .await;
    (blocker, early)
}

async fn enqueue_late(db: &TestDb) -> Vec<i64> {
    let mut late = Vec::new();
    for n in 0..10 {
        late.push(db.add(NewJob::new("late", json!({ "n": n }))).await);
    }
    late
}

/// Jobs never claimed (`attempted_at` is null) and waiting with no attempt charged.
async fn untouched(db: &TestDb, ids: &[i64]) -> bool {
    let n: i64 = sqlx::query_scalar(
        "select count(*) from onboard.job
          where id = any($1) and state = 'available' and attempt = 0 and attempted_at is null",
    )
    .bind(ids)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    n == ids.len() as i64
}

/// Claimed jobs handed back: waiting again with the claim's attempt undone.
async fn handed_back(db: &TestDb, ids: &[i64]) -> bool {
    let n: i64 = sqlx::query_scalar(
        "select count(*) from onboard.job
          where id = any($1) and state = 'available' and attempt = 0 and lease_owner is null",
    )
    .bind(ids)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    n == ids.len() as i64
}

#[tokio::test]
async fn shutdown_releases_claimed_unstarted_jobs_at_the_signal_and_fetches_nothing_after_it() {
    let db = fresh_db().await;
    let release = Arc::new(Notify::new());
    let mut worker = one_at_a_time(&db, release.clone(), Duration::from_secs(60));
    let (blocker, early) = claim_five(&db).await;
    worker.signal();
    let late = enqueue_late(&db).await;
    // While the blocker still runs, the four claimed-but-unstarted jobs are already back.
    wait_for("the unstarted jobs to be handed back", DEADLINE, || async {
        handed_back(&db, &early).await.then_some(())
    })
    .await;
    assert_eq!(db.state(blocker).await, "running");
    release.notify_one();
    worker.stopped().await;
    assert_eq!(db.state(blocker).await, "completed");
    assert!(handed_back(&db, &early).await);
    assert!(
        untouched(&db, &late).await,
        "jobs enqueued after the signal were never claimed"
    );
}

#[tokio::test]
async fn after_the_shutdown_deadline_no_job_is_left_claimed_but_the_one_still_running() {
    let db = fresh_db().await;
    let release = Arc::new(Notify::new());
    let mut worker = one_at_a_time(&db, release, Duration::from_millis(500));
    let (blocker, early) = claim_five(&db).await;
    worker.signal();
    let late = enqueue_late(&db).await;
    // The blocker never finishes: the monitor gives up on it at the deadline.
    worker.stopped().await;
    let claimed: Vec<i64> =
        sqlx::query_scalar("select id from onboard.job where state = 'running' order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        claimed,
        [blocker],
        "only the job still running holds a claim"
    );
    assert!(handed_back(&db, &early).await);
    assert!(untouched(&db, &late).await);
}
