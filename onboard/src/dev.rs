//! `onboard dev`: the whole service on a laptop with nothing set up.

use std::path::PathBuf;

use anyhow::Context;
use jobs::QueueConfig;
use jobs::local_pg::{Durability, LocalPostgres};

/// The job kinds and queues this build runs.
pub fn registry() -> worker::runtime::Registry {
    worker::runtime::Registry::default().queue(QueueConfig::new("default"))
}

/// Where `dev` keeps its throwaway database: `target/` next to the binary.
fn dev_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/onboard → target/
    Some(exe.parent()?.parent()?.join("onboard-dev"))
}

pub async fn run() -> anyhow::Result<()> {
    let (url, _postgres) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let dir = dev_dir();
            let pg = tokio::task::spawn_blocking(move || LocalPostgres::start(dir.as_deref(), Durability::Full))
                .await?
                .context("starting a throwaway PostgreSQL")?;
            (pg.url("postgres"), Some(pg))
        }
    };
    let pool = jobs::db::connect(&url, &jobs::db::PoolSettings::default()).await?;
    jobs::db::migrate(&pool).await.context("applying migrations")?;
    println!("onboard dev is running (Ctrl-C stops it and removes the throwaway database)");
    println!("  database  {url}");
    println!("  worker    queues: default");
    worker::runtime::run(pool, registry(), Default::default(), worker::runtime::shutdown_signal()).await
}
