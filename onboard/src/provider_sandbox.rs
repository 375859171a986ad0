//! `onboard sandbox`: the provider emulator on its own, accepting the environment's provider
//! credentials (its dev ones otherwise), reading org slugs from `DATABASE_URL` when it is set.

use std::sync::Arc;

use anyhow::Context;

/// The sandbox's view of the service's organizations: each org's slug, read from `pool`'s
/// `onboard.organization` (the mirror of Clerk that the webhook fills), for slug magic.
pub fn slug_lookup(pool: sqlx::PgPool) -> sandbox::SlugLookup {
    Arc::new(move |org_id: String| {
        let pool = pool.clone();
        Box::pin(async move {
            match onboarding::directory::organization_slug(&pool, &org_id).await {
                Ok(slug) => slug,
                Err(error) => {
                    tracing::warn!(%error, org_id, "sandbox: cannot read the org's slug");
                    None
                }
            }
        })
    })
}

/// Runs `onboard sandbox` on `addr` until SIGINT/SIGTERM.
pub async fn run(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let (mut config, accepted) = sandbox::SandboxConfig::from_env();
    let slugs = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let pool = jobs::db::connect(&url, &jobs::db::PoolSettings::default())
                .await
                .context("connecting to DATABASE_URL (for org slugs)")?;
            config.slug_lookup = Some(slug_lookup(pool));
            "read from DATABASE_URL's onboard.organization: slug magic works from the webhook alone"
        }
        Err(_) => {
            "DATABASE_URL is not set: slug magic needs POST /sandbox/register (org-id suffixes work)"
        }
    };
    let sandbox = sandbox::spawn(addr, config)
        .await
        .with_context(|| format!("binding the sandbox to {addr}"))?;
    let base = sandbox.base_url();
    println!("sandbox listening on {base}   (ledger: {base}/sandbox/ledger)");
    println!("accepts:");
    for line in accepted {
        println!("  {line}");
    }
    println!("  slugs   {slugs}");
    println!(
        "point the worker here: TWILIO_BASE_URL={base} RESEND_BASE_URL={base} CLERK_API_BASE_URL={base}"
    );
    worker::runtime::shutdown_signal().await;
    sandbox.shutdown().await;
    Ok(())
}
