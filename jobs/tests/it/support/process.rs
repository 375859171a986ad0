//! Worker processes for the tests that need a real process to kill or to race: the test
//! binary re-executes itself running only [`child_worker_process`], which reads its orders
//! from the environment, prints that it is ready and runs until SIGINT.

use std::process::Stdio;
use std::time::Duration;

use jobs::{JobError, QueueConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::worker::spawn_worker;
use super::{DEADLINE, TestDb};

/// The environment variable carrying a child's orders: `<url> <queue> <mode> [lease-ms]`.
const ORDERS: &str = "JOBS_TEST_CHILD_WORKER";
/// What a child prints once it is ready.
const READY: &str = "child worker ready";
/// The child's entry test, by its full path in this binary.
const ENTRY: &str = "support::process::child_worker_process";

/// Creates `exec_log (job_id, attempt, worker)`, where children record every execution.
pub async fn exec_log(db: &TestDb) {
    sqlx::query(
        "create table exec_log (job_id bigint not null, attempt int not null, worker text not null)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

/// Starts a worker process on `queue`: `count` records each execution in `exec_log` and
/// completes; `block` records the start and never finishes. Returns once it is ready.
pub async fn spawn_process(db: &TestDb, queue: &str, mode: &str, lease_ms: Option<u64>) -> Child {
    let mut orders = format!("{} {queue} {mode}", db.url);
    if let Some(lease) = lease_ms {
        orders.push_str(&format!(" {lease}"));
    }
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            ENTRY,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ORDERS, orders)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a worker process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("child stdout") {
            // libtest prints the test's name on the same line, without a newline.
            if line.ends_with(READY) {
                return;
            }
        }
        panic!("the worker process ended before it was ready");
    })
    .await
    .expect("worker process ready in time");
    // Keep draining its output so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// SIGINT (graceful shutdown), then waits for the process to exit.
pub async fn interrupt(mut child: Child) {
    let pid = child.id().expect("running child").to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status().await;
    let _ = tokio::time::timeout(DEADLINE, child.wait()).await;
}

/// The body of a worker process; does nothing unless started by [`spawn_process`].
#[tokio::test(flavor = "multi_thread")]
#[ignore = "the entry point of the worker processes other tests start"]
async fn child_worker_process() {
    let Ok(orders) = std::env::var(ORDERS) else {
        return;
    };
    let words: Vec<&str> = orders.split(' ').collect();
    let [url, queue, mode, rest @ ..] = words.as_slice() else {
        panic!("bad orders: {orders}");
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(url)
        .await
        .expect("connect");
    let mut config = QueueConfig::new(*queue);
    if let Some(lease) = rest.first() {
        config.lease = Duration::from_millis(lease.parse().expect("lease ms"));
        config.kinds = jobs::Kinds::new(jobs::KindOptions {
            timeout: config.lease / 2,
            ..Default::default()
        });
    }
    let block = *mode == "block";
    let log_pool = pool.clone();
    let worker = spawn_worker(pool, config, move |_job, ctx| {
        let pool = log_pool.clone();
        async move {
            sqlx::query("insert into exec_log (job_id, attempt, worker) values ($1, $2, $3)")
                .bind(ctx.id)
                .bind(ctx.attempt)
                .bind(&ctx.worker)
                .execute(&pool)
                .await
                .map_err(JobError::retry)?;
            if block {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    });
    println!("{READY}");
    tokio::signal::ctrl_c().await.expect("SIGINT handler");
    worker.shutdown().await;
}
