//! A worker process for the tests that need a real process to kill:
//! `test-worker <database-url> - saga <sandbox-url> <client-timeout-ms>` runs every job kind
//! of the service against the sandbox. Prints `ready` once started.

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, _, mode, sandbox_url, timeout_ms, ..] = args.as_slice() else {
        anyhow::bail!("usage: test-worker <database-url> - saga <sandbox-url> <client-timeout-ms>");
    };
    anyhow::ensure!(mode == "saga", "unknown mode `{mode}`: only `saga`");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(url)
        .await?;
    let timeout = Duration::from_millis(timeout_ms.parse()?);
    let providers =
        integration_tests::stack::provider_settings(sandbox_url, timeout).providers()?;
    let (stop, worker) = integration_tests::stack::spawn_worker_runtime(pool, providers);
    println!("ready");
    tokio::signal::ctrl_c().await?;
    let _ = stop.send(());
    let _ = worker.await;
    Ok(())
}
