//! The `onboard` command: parses flags and config, then calls the libraries' `run`s.

mod connect;
mod dev;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

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
    /// set), migrations, the provider sandbox, the ingress and the worker.
    Dev,
    /// Ingress and worker in one process, against DATABASE_URL.
    Serve,
    /// The public ingress (webhook, onboarding API) and the internal health/metrics listener.
    Ingress,
    /// The job workers and maintenance services.
    Worker,
    /// Applies pending migrations to DATABASE_URL (idempotent).
    Migrate,
    /// The provider emulator (Twilio, Resend, Clerk) on ONBOARD_SANDBOX_ADDR.
    Sandbox,
    /// Signs a Clerk event file the way Svix does and POSTs it to the webhook.
    Send {
        /// The event JSON; its exact bytes are signed and sent.
        file: PathBuf,
        /// The webhook URL.
        #[arg(long, default_value = ingress::send::DEFAULT_URL)]
        url: String,
        /// The signing secret (default: CLERK_WEBHOOK_SIGNING_SECRET's first secret, else the dev secret).
        #[arg(long)]
        secret: Option<String>,
        /// The `svix-id` (default: a fresh `msg_…`).
        #[arg(long)]
        id: Option<String>,
        /// The `svix-timestamp`, Unix seconds (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
    },
    /// Onboarding API keys.
    #[command(name = "api-key", subcommand)]
    ApiKey(ApiKeyCommand),
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Creates a key and prints it once (only its hash is stored).
    Create {
        /// A name for the key's holder.
        #[arg(long)]
        name: String,
    },
    /// Revokes the active key with this name (or id).
    Revoke {
        /// The key's name or id.
        #[arg(long)]
        name: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Dev => dev::run().await,
        Command::Serve => serve().await,
        Command::Ingress => {
            let pool = connect().await?;
            let settings = ingress::Settings::from_env()?;
            ingress::serve(pool, settings, worker::runtime::shutdown_signal()).await
        }
        Command::Worker => {
            let pool = connect().await?;
            let providers = worker::app::ProviderSettings::from_env()?.providers()?;
            worker::app::configure_queues(&pool).await?;
            let registry = worker::app::registry(pool.clone(), providers);
            worker::runtime::run(
                pool,
                registry,
                worker::runtime::WorkerSettings::default(),
                worker::runtime::shutdown_signal(),
            )
            .await
        }
        Command::Migrate => {
            let pool = connect().await?;
            jobs::db::migrate(&pool)
                .await
                .context("applying migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Sandbox => {
            let addr = sandbox_addr()?;
            let sandbox = sandbox::spawn(addr, sandbox::SandboxConfig::default()).await?;
            println!(
                "sandbox listening on {} (ledger: {}/sandbox/ledger)",
                sandbox.base_url(),
                sandbox.base_url()
            );
            worker::runtime::shutdown_signal().await;
            sandbox.shutdown().await;
            Ok(())
        }
        Command::Send {
            file,
            url,
            secret,
            id,
            timestamp,
        } => {
            let body =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let secret = match secret {
                Some(secret) => secret,
                None => std::env::var("CLERK_WEBHOOK_SIGNING_SECRET")
                    .ok()
                    .and_then(|s| s.split_whitespace().next().map(str::to_owned))
                    .unwrap_or_else(|| ingress::DEV_WEBHOOK_SECRET.to_owned()),
            };
            let (status, response) =
                ingress::send::send_event(&url, &secret, &body, id, timestamp).await?;
            println!("{status} {response}");
            if status >= 300 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::ApiKey(ApiKeyCommand::Create { name }) => {
            let pool = connect().await?;
            let (id, key) = onboarding::api_key::create(&pool, &name).await?;
            println!(
                "API key {id} for {name} (shown once, store it now):\n{}",
                key.expose_secret()
            );
            Ok(())
        }
        Command::ApiKey(ApiKeyCommand::Revoke { name }) => {
            let pool = connect().await?;
            let revoked = onboarding::api_key::revoke(&pool, &name).await?;
            println!("revoked {revoked} key(s)");
            Ok(())
        }
    }
}

/// `onboard serve`: the ingress and the worker in one process, stopped together.
async fn serve() -> anyhow::Result<()> {
    let pool = connect().await?;
    let settings = ingress::Settings::from_env()?;
    let providers = worker::app::ProviderSettings::from_env()?.providers()?;
    worker::app::configure_queues(&pool).await?;
    let registry = worker::app::registry(pool.clone(), providers);
    let (stop, _) = tokio::sync::watch::channel(false);
    let ingress = {
        let mut stopped = stop.subscribe();
        ingress::serve(pool.clone(), settings, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
    };
    let worker = {
        let mut stopped = stop.subscribe();
        worker::runtime::run(
            pool,
            registry,
            worker::runtime::WorkerSettings::default(),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )
    };
    let signal = async {
        worker::runtime::shutdown_signal().await;
        let _ = stop.send(true);
    };
    let (_, ingress, worker) = tokio::join!(signal, ingress, worker);
    ingress.and(worker)
}

async fn connect() -> anyhow::Result<sqlx::PgPool> {
    connect::connect().await
}

fn sandbox_addr() -> anyhow::Result<std::net::SocketAddr> {
    std::env::var("ONBOARD_SANDBOX_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8089".into())
        .parse()
        .context("ONBOARD_SANDBOX_ADDR is not an address")
}

/// Text logs by default; JSON with `LOG_FORMAT=json`. Level from `RUST_LOG` (default `info`).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
