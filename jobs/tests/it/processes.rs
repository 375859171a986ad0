//! Guarantees that need real worker processes: a SIGKILL mid-job, and two processes racing.

use std::time::Duration;

use crate::support::process::{exec_log, interrupt, spawn_process};
use crate::support::worker::spawn_worker;
use crate::support::{fresh_db, wait_for};
use jobs::maintenance::LeaseReaper;
use jobs::{NewJob, QueueConfig, enqueue, enqueue_many};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn worker_killed_mid_job_has_its_job_rescued_after_the_lease_and_cannot_complete_it() {
    let db = fresh_db().await;
    exec_log(&db).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let id = enqueue(
        &mut conn,
        &NewJob::new("victim", json!({})).queue("victims"),
    )
    .await
    .unwrap()
    .id;
    let mut child = spawn_process(&db, "victims", "block", Some(1000)).await;
    let stale_owner: String = wait_for("the job to start in the child", DEADLINE, || async {
        sqlx::query_scalar("select worker from exec_log where job_id = $1")
            .bind(id)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
    })
    .await;
    child.kill().await.unwrap(); // SIGKILL: no shutdown, no release, no ack.
    let (state, owner): (String, String) =
        sqlx::query_as("select state::text, lease_owner from onboard.job where id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), owner.as_str()),
        ("running", stale_owner.as_str())
    );

    wait_for("the lease to expire", DEADLINE, || async {
        let expired: bool =
            sqlx::query_scalar("select lease_expires_at < now() from onboard.job where id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        expired.then_some(())
    })
    .await;
    assert_eq!(LeaseReaper::default().run_once(&mut conn).await.unwrap(), 1);
    assert_eq!(db.state(id).await, "retryable");
    // The killed worker's attempt (1) no longer holds the job.
    assert!(!jobs::complete(&mut conn, id, 1).await.unwrap());

    // The rescue runs attempt 2 and holds it until told to finish.
    let finish = std::sync::Arc::new(tokio::sync::Notify::new());
    let pool = db.pool.clone();
    let gate = finish.clone();
    let worker = spawn_worker(
        db.pool.clone(),
        QueueConfig::new("victims"),
        move |_, ctx| {
            let (pool, gate) = (pool.clone(), gate.clone());
            async move {
                sqlx::query("insert into exec_log values ($1, $2, $3)")
                    .bind(ctx.id)
                    .bind(ctx.attempt)
                    .bind(&ctx.worker)
                    .execute(&pool)
                    .await
                    .map_err(jobs::JobError::retry)?;
                gate.notified().await;
                Ok(())
            }
        },
    );
    wait_for("the rescued attempt to start", DEADLINE, || async {
        let (state, attempt): (String, i32) =
            sqlx::query_as("select state::text, attempt from onboard.job where id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        (state == "running" && attempt == 2).then_some(())
    })
    .await;
    // The job is `running` again: only its attempt number fences the killed worker's completion.
    assert!(
        !jobs::complete(&mut conn, id, 1).await.unwrap(),
        "a stale completion is fenced out by its attempt"
    );
    assert!(
        !jobs::discard(&mut conn, id, 1, "stale").await.unwrap(),
        "a stale discard is fenced out by its attempt"
    );
    assert_eq!(db.state(id).await, "running");
    finish.notify_one();
    wait_for("the rescued job to complete", DEADLINE, || async {
        (db.state(id).await == "completed").then_some(())
    })
    .await;
    worker.shutdown().await;
    let attempts: Vec<i32> =
        sqlx::query_scalar("select attempt from exec_log where job_id = $1 order by attempt")
            .bind(id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, [1, 2]);
    let lost: String =
        sqlx::query_scalar("select errors[1]->>'kind' from onboard.job where id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(lost, "lease_expired");
}

#[tokio::test]
async fn two_worker_processes_draining_ten_thousand_jobs_run_each_exactly_once() {
    let db = fresh_db().await;
    exec_log(&db).await;
    let jobs: Vec<NewJob> = (0..10_000)
        .map(|n| NewJob::new("count", json!({"n": n})).queue("drain"))
        .collect();
    // Both processes are up and idle before any job exists: both race for every batch.
    let a = spawn_process(&db, "drain", "count", None).await;
    let b = spawn_process(&db, "drain", "count", None).await;
    let mut conn = db.pool.acquire().await.unwrap();
    for chunk in jobs.chunks(2_000) {
        enqueue_many(&mut conn, chunk).await.unwrap();
    }
    wait_for("all 10,000 jobs to complete", DEADLINE, || async {
        let left: i64 =
            sqlx::query_scalar("select count(*) from onboard.job where state <> 'completed'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        (left == 0).then_some(())
    })
    .await;
    interrupt(a).await;
    interrupt(b).await;
    let (runs, distinct, workers): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(distinct job_id), count(distinct worker) from exec_log",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (runs, distinct),
        (10_000, 10_000),
        "each job ran exactly once"
    );
    assert_eq!(workers, 2, "both processes ran jobs");
}
