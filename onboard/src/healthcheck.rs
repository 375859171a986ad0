//! `onboard healthcheck`: GETs a role's `/healthz` on its internal listener and exits 0 only on
//! a 2xx — the container `HEALTHCHECK` (the runtime image has no shell and no curl).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};

/// `onboard healthcheck [--url URL]`.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// What to probe (default: `/healthz` on ONBOARD_DASHBOARD_ADDR, default 127.0.0.1:8081; an
    /// unspecified address such as 0.0.0.0 is probed on loopback).
    #[arg(long)]
    url: Option<String>,
}

/// Probes once with a 2 s timeout.
pub async fn run(args: HealthcheckArgs) -> anyhow::Result<()> {
    let url = match args.url {
        Some(url) => url,
        None => {
            let mut addr: SocketAddr = std::env::var("ONBOARD_DASHBOARD_ADDR")
                .unwrap_or_else(|_| "127.0.0.1:8081".into())
                .parse()
                .context("ONBOARD_DASHBOARD_ADDR is not an address")?;
            if addr.ip().is_unspecified() {
                addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
            format!("http://{addr}/healthz")
        }
    };
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building the HTTP client")?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {url} answered {status}");
    }
    println!("{status} {url}");
    Ok(())
}
