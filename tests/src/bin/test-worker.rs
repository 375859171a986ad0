//! A worker process for the tests that need a real process to kill or to race:
//! `test-worker <database-url> <queue> <mode> [lease-ms]`.
//! Modes: `count` records each execution in `exec_log` and completes; `block` records the
//! start and never finishes; `saga <sandbox-url> <client-timeout-ms>` runs every job kind of
//! the service against the sandbox. Prints `ready` once started.

use std::time::Duration;

use integration_tests::spawn_worker;
use jobs::{JobError, QueueConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, mode, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: test-worker <database-url> <queue> <count|block> [lease-ms]");
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(url)
        .await?;
    if mode == "saga" {
        let [sandbox_url, timeout_ms, ..] = rest else {
            anyhow::bail!(
                "usage: test-worker <database-url> - saga <sandbox-url> <client-timeout-ms>"
            );
        };
        let timeout = Duration::from_millis(timeout_ms.parse()?);
        let providers =
            integration_tests::stack::provider_settings(sandbox_url, timeout).providers()?;
        let (stop, worker) = integration_tests::stack::spawn_worker_runtime(pool, providers);
        println!("ready");
        tokio::signal::ctrl_c().await?;
        let _ = stop.send(());
        let _ = worker.await;
        return Ok(());
    }
    let mut config = QueueConfig::new(queue.clone());
    if let Some(lease) = rest.first() {
        config.lease = Duration::from_millis(lease.parse()?);
        config.kinds = jobs::Kinds::new(jobs::KindOptions {
            timeout: config.lease / 2,
            ..Default::default()
        });
    }
    let block = mode == "block";
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
    println!("ready");
    tokio::signal::ctrl_c().await?;
    worker.shutdown().await;
    Ok(())
}
