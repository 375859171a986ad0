//! The internal listener (`ONBOARD_DASHBOARD_ADDR`): one per process, whatever roles it runs.
//! Each role contributes its own router and a readiness check; this adds `/healthz` (the
//! process answers), `/readyz` (every role's check passes) and `/metrics` (the process-wide
//! recorder).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use serde_json::json;
use tokio::net::TcpListener;

/// A role's readiness check: `Err` says why it cannot serve yet.
pub type Readiness = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// One role's part of the internal listener.
#[derive(Clone)]
pub struct Role {
    /// The role's name, shown when it is not ready (`ingress`, `worker`, …).
    pub name: &'static str,
    /// The role's own pages (may be empty); must not route `/healthz`, `/readyz`, `/metrics`.
    pub router: Router,
    /// Whether the role can serve.
    pub ready: Readiness,
}

impl std::fmt::Debug for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Role")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Role {
    /// A role with `router` and the readiness check `ready`.
    pub fn new<F, Fut>(name: &'static str, router: Router, ready: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Role {
            name,
            router,
            ready: Arc::new(move || Box::pin(ready())),
        }
    }
}

/// The internal listener's router: every role's router merged, plus `/healthz`, `/readyz` and
/// `/metrics`. Installs the process-wide recorder if nothing has yet.
pub fn router(roles: Vec<Role>) -> Router {
    crate::recorder::handle();
    let checks: Arc<[(&'static str, Readiness)]> =
        roles.iter().map(|r| (r.name, r.ready.clone())).collect();
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(move || readyz(checks.clone())))
        .route("/metrics", get(metrics));
    for role in roles {
        router = router.merge(role.router);
    }
    router
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(checks: Arc<[(&'static str, Readiness)]>) -> Response {
    for (name, check) in checks.iter() {
        if let Err(reason) = check().await {
            let body =
                json!({"error": {"code": "unavailable", "message": format!("{name}: {reason}")}});
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        }
    }
    axum::Json(json!({"status": "ready"})).into_response()
}

async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::recorder::render(),
    )
        .into_response()
}
