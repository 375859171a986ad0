//! The `onboard` command: parses flags and config, then calls the libraries' `run`s.

mod dev;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Onboards new organizations from Clerk webhooks with durable PostgreSQL-backed jobs.
#[derive(Debug, Parser)]
#[command(name = "onboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything on one machine with no set-up: a throwaway PostgreSQL (unless DATABASE_URL is
    /// set), migrations, the worker. Stops and removes the database on Ctrl-C or SIGTERM.
    Dev,
    /// Applies pending migrations to DATABASE_URL (idempotent).
    Migrate,
    /// Runs the job workers and maintenance services against DATABASE_URL.
    Worker,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Dev => dev::run().await,
        Command::Migrate => {
            let pool = jobs::db::connect(&database_url()?, &jobs::db::PoolSettings::default()).await?;
            jobs::db::migrate(&pool).await.context("applying migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Worker => {
            let pool = jobs::db::connect(&database_url()?, &jobs::db::PoolSettings::default()).await?;
            worker::runtime::run(pool, dev::registry(), Default::default(), worker::runtime::shutdown_signal()).await
        }
    }
}

fn database_url() -> anyhow::Result<String> {
    std::env::var("DATABASE_URL").context("DATABASE_URL is not set (or use `onboard dev`, which starts its own PostgreSQL)")
}

/// Text logs by default; JSON with `LOG_FORMAT=json`. Level from `RUST_LOG` (default `info`).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
