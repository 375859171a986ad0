//! The queue's guarantees (DESIGN.md §3), one named test each.

use std::time::Duration;

use integration_tests::{fresh_db, job_state, spawn_worker, wait_for};
use jobs::{NewJob, QueueConfig, enqueue};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn rollback_leaves_no_job() {
    let db = fresh_db().await;
    let mut tx = db.pool.begin().await.unwrap();
    enqueue(&mut tx, &NewJob::new("noop", json!({}))).await.unwrap();
    tx.rollback().await.unwrap();
    let count: i64 = sqlx::query_scalar("select count(*) from onboard.job").fetch_one(&db.pool).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn jobs_run_and_complete() {
    let db = fresh_db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let id = enqueue(&mut conn, &NewJob::new("noop", json!({}))).await.unwrap().id;
    drop(conn);
    let worker = spawn_worker(db.pool.clone(), QueueConfig::new("default"), |_, _| async { Ok(()) });
    wait_for("completion", DEADLINE, || async {
        (job_state(&db.pool, id).await == "completed").then_some(())
    })
    .await;
    worker.shutdown().await;
}
