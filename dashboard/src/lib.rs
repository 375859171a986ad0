//! The operator dashboard and JSON admin API (DESIGN.md §6, issue 10): login with server-side
//! sessions or Bearer tokens, roles viewer/operator, CSRF on cookie-authenticated POSTs,
//! server-rendered pages that refresh live, and saga-aware operator actions with an audit trail.
//! [`router`] is merged onto the internal listener (`ONBOARD_DASHBOARD_ADDR`).

pub mod account;
pub mod action;
pub mod api;
pub mod audit;
pub mod auth;
pub mod error;
pub mod limiter;
pub mod login;
pub mod mask;
pub mod pages;
pub mod read;
pub mod reveal;
pub mod secret;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use sqlx::PgPool;

/// How the dashboard behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a session lasts (default 12 h).
    pub session_ttl: Duration,
    /// Mark the cookie `Secure` even without `X-Forwarded-Proto: https` (served over TLS).
    pub secure_cookies: bool,
    /// Sagas not terminal after this are an alert (default 10 min).
    pub stuck_after: Duration,
    /// Failed logins per name before that name is refused for `login_window`.
    pub login_max_failures: u32,
    /// See `login_max_failures`.
    pub login_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            session_ttl: Duration::from_secs(12 * 3600),
            secure_cookies: false,
            stuck_after: Duration::from_secs(600),
            login_max_failures: 5,
            login_window: Duration::from_secs(900),
        }
    }
}

impl Settings {
    /// Defaults, with `ONBOARD_DASHBOARD_SECURE_COOKIES=true` forcing `Secure` cookies and
    /// `ONBOARD_DASHBOARD_STUCK_MINUTES` the alert's threshold.
    pub fn from_env() -> anyhow::Result<Self> {
        let mut settings = Settings::default();
        if let Ok(v) = std::env::var("ONBOARD_DASHBOARD_SECURE_COOKIES") {
            settings.secure_cookies = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Ok(v) = std::env::var("ONBOARD_DASHBOARD_STUCK_MINUTES") {
            let minutes: u64 = v
                .parse()
                .map_err(|_| anyhow::anyhow!("ONBOARD_DASHBOARD_STUCK_MINUTES is not a number"))?;
            settings.stuck_after = Duration::from_secs(minutes * 60);
        }
        Ok(settings)
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct DashboardState {
    /// The database.
    pub pool: PgPool,
    /// The settings.
    pub settings: Arc<Settings>,
    /// Failed logins per name.
    pub limiter: Arc<limiter::LoginLimiter>,
    /// What each session has revealed.
    pub reveals: Arc<reveal::Reveals>,
}

impl DashboardState {
    /// A state on `pool`.
    pub fn new(pool: PgPool, settings: Settings) -> Self {
        DashboardState {
            pool,
            limiter: Arc::new(limiter::LoginLimiter::new(
                settings.login_max_failures,
                settings.login_window,
            )),
            reveals: Arc::new(reveal::Reveals::default()),
            settings: Arc::new(settings),
        }
    }
}

/// The dashboard's pages and `/api/`, to merge onto the internal listener (which serves
/// `/healthz`, `/readyz` and `/metrics` itself).
pub fn router(state: DashboardState) -> Router {
    Router::new()
        .merge(login::router())
        .merge(pages::router())
        .merge(api::router())
        .with_state(state)
}
