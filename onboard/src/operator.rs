//! `onboard operator …` (dashboard accounts and API tokens) and `onboard dashboard`, and the
//! internal listener that serves the dashboard beside the other roles.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;

use anyhow::Context;
use clap::Subcommand;
use dashboard::account::{self, Role};

/// Dashboard operators.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Adds an operator; the password is prompted for (or read from stdin when it is not a terminal).
    Add {
        /// Login name.
        #[arg(long)]
        name: String,
        /// `viewer` (reads) or `operator` (reads and acts).
        #[arg(long)]
        role: String,
    },
    /// Removes an operator (its sessions and tokens end).
    Remove {
        /// Login name.
        #[arg(long)]
        name: String,
    },
    /// Lists operators.
    List,
    /// Prints a new API token for the operator (shown once; only its hash is stored), or
    /// revokes all of its tokens with `--revoke`.
    Token {
        /// Login name.
        #[arg(long)]
        name: String,
        /// Revoke the operator's tokens instead.
        #[arg(long)]
        revoke: bool,
    },
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password (12+ characters): ")?;
        let second = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == second, "the passwords differ");
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

/// Runs an `operator` subcommand.
pub async fn run(pool: &sqlx::PgPool, command: OperatorCommand) -> anyhow::Result<()> {
    match command {
        OperatorCommand::Add { name, role } => {
            let role: Role = role.parse()?;
            let password = read_password()?;
            let id = account::add(pool, &name, role, &password).await?;
            println!("operator {id} `{name}` added ({})", role.as_str());
        }
        OperatorCommand::Remove { name } => {
            account::remove(pool, &name).await?;
            println!("operator `{name}` removed");
        }
        OperatorCommand::List => {
            for o in account::list(pool).await? {
                println!(
                    "{}\t{}\t{}\tcreated {}\t{} active token(s)",
                    o.id,
                    o.name,
                    o.role,
                    o.created_at.format("%Y-%m-%d %H:%M"),
                    o.tokens
                );
            }
        }
        OperatorCommand::Token { name, revoke: true } => {
            let n = account::revoke_tokens(pool, &name).await?;
            println!("revoked {n} token(s) of `{name}`");
        }
        OperatorCommand::Token {
            name,
            revoke: false,
        } => {
            let (id, token) = account::create_token(pool, &name).await?;
            println!("API token {id} for `{name}` (shown once, store it now):\n{token}");
        }
    }
    Ok(())
}

/// `ONBOARD_DASHBOARD_ADDR` (default `127.0.0.1:8081`).
pub fn dashboard_addr() -> anyhow::Result<SocketAddr> {
    std::env::var("ONBOARD_DASHBOARD_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8081".into())
        .parse()
        .context("ONBOARD_DASHBOARD_ADDR is not an address")
}

/// `onboard dashboard`: the dashboard alone.
pub async fn dashboard(pool: sqlx::PgPool) -> anyhow::Result<()> {
    let settings = dashboard::Settings::from_env()?;
    dashboard::serve(
        pool,
        settings,
        dashboard_addr()?,
        worker::runtime::shutdown_signal(),
    )
    .await
}

/// Serves the ingress's internal routes (health, readiness, metrics) and the dashboard on one
/// listener, in the background; the ingress must be started without its own internal listener.
pub async fn spawn_internal(
    pool: sqlx::PgPool,
    ingress: &ingress::startup::Running,
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = ingress::startup::internal_router(ingress.state.clone()).merge(dashboard::router(
        dashboard::DashboardState::new(pool, dashboard::Settings::from_env()?),
    ));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the internal listener on {addr}"))?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "internal listener failed");
        }
    });
    Ok((local, task))
}

/// `onboard dev`'s operator: `dev` with a fresh password, printed with the URL.
pub async fn dev_operator(pool: &sqlx::PgPool) -> anyhow::Result<(String, String)> {
    let password = account::random_password();
    account::upsert(pool, "dev", Role::Operator, &password).await?;
    Ok(("dev".into(), password))
}
