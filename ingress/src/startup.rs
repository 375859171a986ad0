//! Building and running the ingress: the public router with its layers (request span and id,
//! body limit, request timeout, JSON rejections), its part of the internal listener, and the
//! listeners themselves (port 0 in tests). The public listener is served by hyper directly so
//! that request headers have a deadline (`axum::serve` cannot set one).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::map_request_body::MapRequestBodyLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::rejection::json_errors;
use crate::settings::Settings;
use crate::state::AppState;
use crate::{api, metrics, webhook};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The public listener: the Clerk webhook, the onboarding API and `/healthz`.
pub fn router(state: AppState, settings: &Settings) -> Router {
    let layers = ServiceBuilder::new()
        .map_request(drop_unusable_request_id)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(|response: &Response, _: Duration, span: &tracing::Span| {
                    span.record("status", response.status().as_u16());
                })
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(middleware::from_fn(count_request))
        .layer(middleware::from_fn_with_state(state.clone(), json_errors))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ))
        .map_response(IntoResponse::into_response)
        .layer(RequestBodyLimitLayer::new(settings.body_limit))
        .layer(MapRequestBodyLayer::new(axum::body::Body::new));
    Router::new()
        .route("/webhooks/clerk", post(webhook::receive_clerk_webhook))
        .route(
            "/v1/onboarding",
            post(api::create_onboarding).get(api::find_onboarding),
        )
        .route("/v1/onboarding/{id}", get(api::get_onboarding))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(layers)
        .with_state(state)
}

/// The ingress's part of the internal listener: no pages of its own yet, ready when the
/// database answers within the request deadline.
pub fn internal_role(state: AppState) -> telemetry::Role {
    metrics::describe();
    telemetry::Role::new("ingress", Router::new(), move || {
        let state = state.clone();
        async move {
            state
                .db(async {
                    sqlx::query("select 1")
                        .execute(state.pool())
                        .await
                        .map_err(ApiError::database)
                })
                .await
                .map(|_| ())
                .map_err(|e| format!("{:#}", anyhow::Error::new(e)))
        }
    })
}

/// The internal listener of an ingress run alone: `/healthz`, `/readyz`, `/metrics`.
pub fn internal_router(state: AppState) -> Router {
    telemetry::router(vec![internal_role(state)])
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Drops a caller's `x-request-id` unless it is short and plain, so a fresh one is made.
fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = request.headers().get(&REQUEST_ID).is_none_or(|v| {
        !v.is_empty() && v.len() <= 64 && v.as_bytes().iter().all(u8::is_ascii_graphic)
    });
    if !usable {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// One span per request: method, matched route, request id (status recorded on response).
fn request_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!("request", method = %request.method(), route = %route, request_id = %id, status = tracing::field::Empty)
}

/// Counts the answered request by matched route and status.
async fn count_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics::request(&route, response.status().as_u16());
    response
}

/// Serves `router` on `listener` with hyper's HTTP/1 server: a connection whose request
/// headers do not arrive within `header_timeout` is closed. On `shutdown` it stops accepting,
/// lets in-flight requests finish and closes idle connections.
pub async fn serve_public(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            tower::ServiceExt::oneshot(router.clone(), request.map(axum::body::Body::new))
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A bound ingress, not yet serving: its addresses are known (bind port 0 in tests).
#[derive(Debug)]
pub struct Application {
    state: AppState,
    router: Router,
    header_timeout: Duration,
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
            router: router(state.clone(), settings),
            header_timeout: settings.header_timeout,
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
        let public = serve_public(
            self.ingress,
            self.router,
            self.header_timeout,
            until(stopped.clone()),
        );
        match self.internal {
            Some(internal) => {
                let internal = telemetry::serve(
                    internal,
                    internal_router(self.state.clone()),
                    until(stopped),
                );
                let ((), served) = tokio::join!(public, internal);
                served.context("internal listener")?;
            }
            None => public.await,
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

/// Binds and serves in the background (tests: set both addresses to port 0).
pub async fn spawn(pool: PgPool, settings: &Settings) -> anyhow::Result<Running> {
    Ok(Application::bind(AppState::new(pool, settings), settings)
        .await?
        .spawn())
}
