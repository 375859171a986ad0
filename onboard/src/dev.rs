//! `onboard dev`: the whole service on a laptop with nothing set up — a throwaway PostgreSQL,
//! the provider sandbox, the ingress and the worker, a dev API key, and what to try first.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use jobs::local_pg::{Durability, LocalPostgres};
use secrecy::ExposeSecret;

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
        sandbox::SandboxConfig::default(),
    )
    .await
    .with_context(|| format!("starting the sandbox on {sandbox_addr}"))?;
    let providers = if std::env::var("TWILIO_ACCOUNT_SID").is_ok() {
        worker::app::ProviderSettings::from_env()?
    } else {
        sandbox_providers(&sandbox.base_url())?
    };

    let mut settings = ingress::Settings::from_env_for_dev()?;
    let internal_addr = settings.dashboard_addr.take();
    let ingress = ingress::spawn(pool.clone(), &settings)
        .await
        .context("starting the ingress")?;
    let internal = match internal_addr {
        Some(addr) => Some(
            crate::operator::spawn_internal(pool.clone(), &ingress, addr)
                .await?
                .0,
        ),
        None => None,
    };
    let (dev_name, dev_password) = crate::operator::dev_operator(&pool).await?;
    let (_, api_key) =
        onboarding::api_key::create(&pool, &format!("dev-{}", std::process::id())).await?;

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
    println!("  database      {url}");
    println!(
        "  webhook       POST {base}/webhooks/clerk   (secret {})",
        ingress::DEV_WEBHOOK_SECRET
    );
    println!(
        "  onboarding    POST {base}/v1/onboarding    (Authorization: Bearer {})",
        api_key.expose_secret()
    );
    if let Some(internal) = internal {
        println!("  dashboard     http://{internal}/   (log in as {dev_name} / {dev_password})");
        println!("  internal      http://{internal}/healthz  /readyz  /metrics");
    }
    println!("  sandbox       {}/sandbox/ledger", sandbox.base_url());
    println!(
        "  try           cargo run -p onboard -- send ../shared/fixtures/clerk/organization.created.json"
    );
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
