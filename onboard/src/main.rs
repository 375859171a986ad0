//! The `onboard` command: parses flags and config, then calls the libraries' `run`s.

mod dev;
mod healthcheck;
mod operator;
mod provider_sandbox;
mod send;

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use onboard::process::{Process, Roles, WorkerRole};
use onboard::settings::{DatabaseArgs, InternalArgs, LogFormat};
use secrecy::ExposeSecret;

/// Onboards new organizations from Clerk webhooks with durable PostgreSQL-backed jobs.
/// Every setting is a flag and an environment variable; the flag wins.
#[derive(Debug, Parser)]
#[command(name = "onboard", version, about)]
struct Cli {
    /// Log lines as text, or as JSON objects for production.
    #[arg(long, global = true, env = "LOG_FORMAT", value_name = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything on one machine with no set-up: a throwaway PostgreSQL (unless DATABASE_URL is
    /// set), migrations, the provider sandbox, the ingress and the worker.
    Dev,
    /// Ingress and worker in one process, against DATABASE_URL.
    Serve {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        internal: InternalArgs,
        #[command(flatten)]
        ingress: ingress::Args,
        #[command(flatten)]
        worker: worker::settings::Args,
    },
    /// The public ingress (webhook, onboarding API) and the internal health/metrics listener.
    Ingress {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        internal: InternalArgs,
        #[command(flatten)]
        ingress: ingress::Args,
    },
    /// The job workers and maintenance services, and the internal health/metrics listener.
    Worker {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        internal: InternalArgs,
        #[command(flatten)]
        worker: worker::settings::Args,
    },
    /// Applies pending migrations to DATABASE_URL (idempotent).
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// The provider emulator (Twilio, Resend, Clerk).
    Sandbox {
        /// The sandbox's address.
        #[arg(
            long,
            env = "ONBOARD_SANDBOX_ADDR",
            value_name = "ONBOARD_SANDBOX_ADDR",
            default_value = "127.0.0.1:8089"
        )]
        sandbox_addr: SocketAddr,
    },
    /// Signs a Clerk event (a file, or one made from an event type) the way Svix does and POSTs
    /// it to the webhook.
    Send(send::SendArgs),
    /// Exits 0 when a role's internal `/healthz` answers 2xx (the container health check).
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Onboarding API keys.
    #[command(name = "api-key", subcommand)]
    ApiKey(ApiKeyCommand),
    /// Dashboard operators and their API tokens.
    Operator {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: operator::OperatorCommand,
    },
    /// The operator dashboard and admin API alone, on the internal listener.
    Dashboard {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        internal: InternalArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Creates a key and prints it once (only its hash is stored).
    Create {
        #[command(flatten)]
        database: DatabaseArgs,
        /// A name for the key's holder.
        #[arg(long)]
        name: String,
    },
    /// Revokes the active key with this name (or id).
    Revoke {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The key's name or id.
        #[arg(long)]
        name: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    if let Err(error) = run(cli.command).await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev => dev::run().await,
        Command::Serve {
            database,
            internal,
            ingress,
            worker,
        } => {
            let roles = Roles {
                ingress: Some(ingress.settings(None)?),
                worker: Some(worker_role(&worker)?),
                dashboard: Some(dashboard::Settings::from_env()?),
            };
            serve(&database, &internal, roles).await
        }
        Command::Ingress {
            database,
            internal,
            ingress,
        } => {
            let roles = Roles {
                ingress: Some(ingress.settings(None)?),
                ..Roles::default()
            };
            serve(&database, &internal, roles).await
        }
        Command::Worker {
            database,
            internal,
            worker,
        } => {
            let roles = Roles {
                worker: Some(worker_role(&worker)?),
                ..Roles::default()
            };
            serve(&database, &internal, roles).await
        }
        Command::Migrate { database } => {
            let pool = database.settings()?.connect().await?;
            jobs::db::migrate(&pool)
                .await
                .context("applying migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Sandbox { sandbox_addr } => provider_sandbox::run(sandbox_addr).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        Command::Send(args) => send::run(args).await,
        Command::ApiKey(ApiKeyCommand::Create { database, name }) => {
            let pool = database.settings()?.connect().await?;
            let (id, key) = onboarding::api_key::create(&pool, &name).await?;
            println!(
                "API key {id} for {name} (shown once, store it now):\n{}",
                key.expose_secret()
            );
            Ok(())
        }
        Command::Operator { database, command } => {
            operator::run(&database.settings()?.connect().await?, command).await
        }
        Command::Dashboard { database, internal } => {
            let roles = Roles {
                dashboard: Some(dashboard::Settings::from_env()?),
                ..Roles::default()
            };
            serve(&database, &internal, roles).await
        }
        Command::ApiKey(ApiKeyCommand::Revoke { database, name }) => {
            let pool = database.settings()?.connect().await?;
            let revoked = onboarding::api_key::revoke(&pool, &name).await?;
            println!("revoked {revoked} key(s)");
            Ok(())
        }
    }
}

/// `onboard serve` / `ingress` / `worker`: the roles behind one internal listener, started
/// once the database is ready, until SIGINT or SIGTERM.
async fn serve(
    database: &DatabaseArgs,
    internal: &InternalArgs,
    roles: Roles,
) -> anyhow::Result<()> {
    let process = Process::bind(&database.settings()?, internal.dashboard_addr, roles).await?;
    process.run(worker::runtime::shutdown_signal()).await
}

fn worker_role(args: &worker::settings::Args) -> anyhow::Result<WorkerRole> {
    Ok(WorkerRole {
        providers: args.provider_settings()?,
        settings: worker::runtime::WorkerSettings::default(),
        retention: onboarding::retention::DataRetention::from_env()
            .context("the retention settings (ONBOARD_RETENTION_*)")?,
    })
}

/// Text logs by default; JSON with `LOG_FORMAT=json`. Level from `RUST_LOG` (default `info`).
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
