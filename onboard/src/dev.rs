//! `onboard dev`: the whole service on a laptop with nothing set up — a throwaway PostgreSQL,
//! the provider sandbox, the ingress, the worker and the dashboard in one process, a dev API key
//! and a dev operator, and what to try first.

use std::path::PathBuf;

use anyhow::Context;
use jobs::local_pg::{Durability, LocalPostgres};
use onboard::process::{Process, Roles, WorkerRole};
use onboard::settings::Database;
use secrecy::ExposeSecret;

/// The name of the one API key `dev` keeps active: each start revokes the previous one.
pub const DEV_KEY_NAME: &str = "dev";

/// A database URL fit to print: its password, if any, replaced by `***`.
fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(DATABASE_URL, not shown)".to_owned(),
    }
}

/// What to print about the webhook secret: the dev secret only when it is the one in use.
fn webhook_secret_note() -> String {
    let configured =
        std::env::var("CLERK_WEBHOOK_SIGNING_SECRET").is_ok_and(|v| !v.trim().is_empty());
    if configured {
        "secret from CLERK_WEBHOOK_SIGNING_SECRET".to_owned()
    } else {
        format!("dev secret {}", ingress::DEV_WEBHOOK_SECRET)
    }
}

/// Where `dev` keeps its throwaway database when not root: `target/onboard-dev/`.
fn dev_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/onboard → target/
    Some(exe.parent()?.parent()?.join("onboard-dev"))
}

fn sandbox_providers(base: &str) -> anyhow::Result<worker::app::ProviderSettings> {
    let dev = sandbox::SandboxConfig::default();
    worker::app::ProviderSettings::on_one_host(
        base,
        &dev.twilio_account_sid,
        &dev.twilio_auth_token,
        &dev.resend_api_key,
        &dev.clerk_secret_key,
        worker::provider::DEFAULT_TIMEOUT,
    )
}

/// Runs `onboard dev` until SIGINT or SIGTERM.
pub async fn run() -> anyhow::Result<()> {
    let (url, postgres) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let dir = dev_dir();
            let pg = tokio::task::spawn_blocking(move || {
                LocalPostgres::start(dir.as_deref(), Durability::Full)
            })
            .await?
            .context("starting a throwaway PostgreSQL")?;
            (pg.url("postgres"), Some(pg))
        }
    };
    let pool = jobs::db::connect(&url, &jobs::db::PoolSettings::default()).await?;
    jobs::db::migrate(&pool)
        .await
        .context("applying migrations")?;

    let sandbox_addr =
        std::env::var("ONBOARD_SANDBOX_ADDR").unwrap_or_else(|_| "127.0.0.1:8089".into());
    let sandbox = sandbox::spawn(
        sandbox_addr.parse().context("ONBOARD_SANDBOX_ADDR")?,
        sandbox::SandboxConfig {
            slug_lookup: Some(crate::provider_sandbox::slug_lookup(pool.clone())),
            ..sandbox::SandboxConfig::default()
        },
    )
    .await
    .with_context(|| format!("starting the sandbox on {sandbox_addr}"))?;
    let providers = if std::env::var("TWILIO_ACCOUNT_SID").is_ok() {
        worker::app::ProviderSettings::from_env()?
    } else {
        sandbox_providers(&sandbox.base_url())?
    };

    let ingress = ingress::Settings::from_env_for_dev()?;
    let internal_addr = ingress
        .dashboard_addr
        .context("the internal listener's address")?;
    let roles = Roles {
        ingress: Some(ingress),
        worker: Some(WorkerRole {
            providers,
            settings: worker::runtime::WorkerSettings::default(),
            retention: onboarding::retention::DataRetention::from_env()
                .context("the retention settings (ONBOARD_RETENTION_*)")?,
        }),
        dashboard: Some(dashboard::Settings::from_env()?),
    };
    let process = Process::bind(&Database::new(&url), internal_addr, roles).await?;
    // One dev key and one dev operator at a time: each start replaces the previous ones.
    let (_, api_key) = onboarding::api_key::rotate(&pool, DEV_KEY_NAME).await?;
    let (dev_name, dev_password) = crate::operator::dev_operator(&pool).await?;

    let base = format!(
        "http://{}",
        process.ingress_addr().context("the ingress's address")?
    );
    let internal = process.internal_addr();
    println!();
    println!(
        "onboard dev is running. Ctrl-C stops it{}.",
        if postgres.is_some() {
            " and deletes the throwaway database"
        } else {
            ""
        }
    );
    println!("  database      {}", redacted_url(&url));
    println!(
        "  webhook       POST {base}/webhooks/clerk   ({})",
        webhook_secret_note()
    );
    println!(
        "  onboarding    POST {base}/v1/onboarding    (Authorization: Bearer {}; key `{DEV_KEY_NAME}`, replaced at each start)",
        api_key.expose_secret()
    );
    println!("  dashboard     http://{internal}/   (log in as {dev_name} / {dev_password})");
    println!("  internal      http://{internal}/healthz  /readyz  /metrics");
    println!("  sandbox       {}/sandbox/ledger", sandbox.base_url());
    println!("  try           cargo run -p onboard -- send organization.created --with-creator");
    println!();

    let result = process.run(worker::runtime::shutdown_signal()).await;
    println!("stopping…");
    sandbox.shutdown().await;
    drop(postgres);
    result
}
