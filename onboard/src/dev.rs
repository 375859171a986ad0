//! `onboard dev`: the whole service on a laptop with nothing set up — a throwaway PostgreSQL,
//! the provider sandbox, the ingress and the worker, a dev API key, and what to try first.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use jobs::local_pg::{Durability, LocalPostgres};
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

    let settings = ingress::Settings::from_env_for_dev()?;
    let ingress = ingress::spawn(pool.clone(), &settings)
        .await
        .context("starting the ingress")?;
    // One dev key at a time: the previous start's key is revoked.
    let (_, api_key) = onboarding::api_key::rotate(&pool, DEV_KEY_NAME).await?;

    worker::app::configure_queues(&pool).await?;
    let registry = worker::app::registry(pool.clone(), providers.providers()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker::runtime::run(
        pool.clone(),
        registry,
        worker::runtime::WorkerSettings::default(),
        async move {
            let _ = stopped.await;
        },
    ));

    let base = format!("http://{}", ingress.ingress_addr);
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
    if let Some(internal) = ingress.internal_addr {
        println!("  internal      http://{internal}/healthz  /readyz  /metrics");
    }
    println!("  sandbox       {}/sandbox/ledger", sandbox.base_url());
    println!("  try           cargo run -p onboard -- send organization.created --with-creator");
    println!();

    worker::runtime::shutdown_signal().await;
    println!("stopping…");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(35), worker).await;
    let _ = ingress.shutdown().await;
    sandbox.shutdown().await;
    drop(postgres);
    Ok(())
}
