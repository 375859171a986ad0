//! Building and running the ingress: its shared state, the public and internal routers, one
//! span per request with a request id, and the listeners (port 0 in tests).

use crate::inbox_writer::InboxWriter;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jobs::notify::Coalescer;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::settings::{Settings, WebhookSecrets};
use crate::signature::Clock;
use crate::{api, webhook};

struct Inner {
    pool: PgPool,
    secrets: WebhookSecrets,
    clock: Clock,
    metrics: Metrics,
    body_limit: usize,
    public_url: String,
    db_timeout: Duration,
    coalescer: Arc<Coalescer>,
    writer: InboxWriter,
}

/// What every handler shares: the pool, the secrets, the clock, the metrics and the wake-up
/// coalescer of the queues stored deliveries enqueue on.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("secrets", &self.0.secrets)
            .field("body_limit", &self.0.body_limit)
            .field("public_url", &self.0.public_url)
            .field("coalescer", &self.0.coalescer)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State on `pool` with the system clock. Starts the wake-up [`Coalescer`], so it needs a
    /// Tokio runtime; the coalescer stops once the last clone of the state is dropped.
    pub fn new(pool: PgPool, settings: &Settings) -> Self {
        Self::with_clock(pool, settings, Clock::system())
    }

    /// State on `pool` whose timestamp checks read `clock` (tests pin it).
    pub fn with_clock(pool: PgPool, settings: &Settings, clock: Clock) -> Self {
        AppState(Arc::new(Inner {
            coalescer: Coalescer::spawn(pool.clone(), settings.notify_every),
            writer: InboxWriter::spawn(pool.clone()),
            pool,
            secrets: settings.webhook_secrets.clone(),
            clock,
            metrics: Metrics::default(),
            body_limit: settings.body_limit,
            public_url: settings.public_url.trim_end_matches('/').to_owned(),
            db_timeout: settings.db_timeout,
        }))
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    /// This process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Wakes the workers of the queues that stored deliveries enqueue on (the inbox statement
    /// sends no NOTIFY of its own; DESIGN.md §3, notify sparingly).
    pub fn coalescer(&self) -> &Coalescer {
        &self.0.coalescer
    }

    /// The group-commit writer webhook deliveries are stored through.
    pub fn writer(&self) -> &InboxWriter {
        &self.0.writer
    }

    pub(crate) fn secrets(&self) -> &WebhookSecrets {
        &self.0.secrets
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.0.clock
    }

    /// The status URL of saga `id`.
    pub fn status_url(&self, id: i64) -> String {
        format!("{}/v1/onboarding/{id}", self.0.public_url)
    }

    /// Reads a body up to the limit (`413` past it).
    pub(crate) async fn read_body(&self, body: Body) -> Result<axum::body::Bytes, ApiError> {
        let limit = self.0.body_limit;
        axum::body::to_bytes(body, limit).await.map_err(|e| {
            let over_limit = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            if over_limit {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::BadBody
            }
        })
    }

    /// How long a request waits for the database before answering `503`.
    pub(crate) fn db_timeout(&self) -> Duration {
        self.0.db_timeout
    }

    /// Runs database work with the request's deadline: `503` when it does not finish in time
    /// (an attempt whose outcome is unknown is never answered 2xx).
    pub(crate) async fn db<T>(
        &self,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.0.db_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Unavailable(anyhow::anyhow!(
                "the database did not answer within {:?}",
                self.0.db_timeout
            ))),
        }
    }
}

/// The public listener: the Clerk webhook, the onboarding API and `/healthz`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhooks/clerk", post(webhook::receive_clerk_webhook))
        .route(
            "/v1/onboarding",
            post(api::create_onboarding).get(api::find_onboarding),
        )
        .route("/v1/onboarding/{id}", get(api::get_onboarding))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The internal listener: `/healthz`, `/readyz` (database reachable) and `/metrics`.
pub fn internal_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state
        .db(async {
            sqlx::query("select 1")
                .execute(state.pool())
                .await
                .map_err(ApiError::database)
        })
        .await?;
    Ok(axum::Json(serde_json::json!({"status": "ready"})))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics().render();
    let stats = state.coalescer().stats();
    text.push_str(
        "# HELP onboard_ingress_wakeup_rounds_total Coalesced NOTIFY rounds that wake the workers, by outcome.\n\
         # TYPE onboard_ingress_wakeup_rounds_total counter\n",
    );
    text.push_str(&format!(
        "onboard_ingress_wakeup_rounds_total{{outcome=\"sent\"}} {}\n\
         onboard_ingress_wakeup_rounds_total{{outcome=\"failed\"}} {}\n",
        stats.rounds_sent, stats.rounds_failed
    ));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// A caller's `x-request-id` when it is short and plain, else a fresh one.
fn request_id(request: &Request) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// One span per request (method, matched route, request id), the request metric, and the
/// `x-request-id` response header.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let id = request_id(&request);
    let span = tracing::info_span!("request", method = %request.method(), route = %route, request_id = %id, status = tracing::field::Empty);
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("status", status.as_u16());
    state.metrics().request(&route, status.as_u16());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// A bound ingress, not yet serving: its addresses are known (bind port 0 in tests).
#[derive(Debug)]
pub struct Application {
    state: AppState,
    ingress: TcpListener,
    internal: Option<TcpListener>,
}

impl Application {
    /// Binds the listeners of `settings` for `state`.
    pub async fn bind(state: AppState, settings: &Settings) -> anyhow::Result<Self> {
        let ingress = TcpListener::bind(settings.ingress_addr)
            .await
            .with_context(|| {
                format!("binding the ingress listener on {}", settings.ingress_addr)
            })?;
        let internal = match settings.dashboard_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the internal listener on {addr}"))?,
            ),
            None => None,
        };
        Ok(Application {
            state,
            ingress,
            internal,
        })
    }

    /// The public listener's address.
    pub fn ingress_addr(&self) -> SocketAddr {
        self.ingress
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The internal listener's address, when it has one.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state (metrics, pool).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let until = move |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let public = axum::serve(self.ingress, router(self.state.clone()))
            .with_graceful_shutdown(until(stopped.clone()));
        match self.internal {
            Some(internal) => {
                let internal = axum::serve(internal, internal_router(self.state.clone()))
                    .with_graceful_shutdown(until(stopped));
                let (a, b) = tokio::join!(public.into_future(), internal.into_future());
                a.context("ingress listener")?;
                b.context("internal listener")?;
            }
            None => public.await.context("ingress listener")?,
        }
        Ok(())
    }

    /// Serves in a background task; see [`Running`].
    pub fn spawn(self) -> Running {
        let ingress_addr = self.ingress_addr();
        let internal_addr = self.internal_addr();
        let state = self.state.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async move {
            let _ = stopped.await;
        }));
        Running {
            ingress_addr,
            internal_addr,
            state,
            stop: Some(stop),
            task,
        }
    }
}

/// An ingress serving in a background task.
#[derive(Debug)]
pub struct Running {
    /// The public listener's address.
    pub ingress_addr: SocketAddr,
    /// The internal listener's address, when it has one.
    pub internal_addr: Option<SocketAddr>,
    /// Its shared state.
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops accepting, drains in-flight requests and waits for the listeners to close.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .context("the ingress task panicked")?
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Runs the ingress on `pool` with `settings` until `shutdown` resolves (`onboard ingress`).
pub async fn serve(
    pool: PgPool,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Application::bind(AppState::new(pool, &settings), &settings).await?;
    tracing::info!(
        ingress = %app.ingress_addr(),
        internal = ?app.internal_addr(),
        "ingress listening"
    );
    app.run_until(shutdown).await
}

/// Binds and serves in the background (tests: set both addresses to port 0).
pub async fn spawn(pool: PgPool, settings: &Settings) -> anyhow::Result<Running> {
    Ok(Application::bind(AppState::new(pool, settings), settings)
        .await?
        .spawn())
}
