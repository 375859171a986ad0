//! Connecting a role to `DATABASE_URL` at start, patiently: a role started while PostgreSQL is
//! briefly away (a restart, a failover) waits for it instead of exiting.

use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a starting role waits for the database before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// Connects to `DATABASE_URL`, retrying with backoff for up to a minute.
pub async fn connect() -> anyhow::Result<sqlx::PgPool> {
    let url = std::env::var("DATABASE_URL").context(
        "DATABASE_URL is not set (or use `onboard dev`, which starts its own PostgreSQL)",
    )?;
    let settings = jobs::db::PoolSettings::default();
    let started = Instant::now();
    let mut backoff = Duration::from_millis(250);
    loop {
        match jobs::db::connect(&url, &settings).await {
            Ok(pool) => return Ok(pool),
            Err(error) if started.elapsed() < PATIENCE => {
                tracing::warn!(%error, retry_in = ?backoff, "the database is not answering yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                return Err(error).context(format!(
                    "the database did not answer within {}s",
                    PATIENCE.as_secs()
                ));
            }
        }
    }
}
