//! The sandbox's own control plane (no auth, loopback only): the ledger, the sub-account list,
//! healing magic keys, registering org slugs and the health check.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::state::SandboxState;

/// The control routes.
pub(crate) fn routes() -> Router<SandboxState> {
    Router::new()
        .route("/sandbox/ledger", get(ledger))
        .route("/sandbox/subaccounts", get(subaccounts))
        .route("/sandbox/heal", post(heal))
        .route("/sandbox/register", post(register))
        .route("/healthz", get(healthz))
}

/// Our own error body: `{"error":{"code","message"}}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Parses a JSON body into `T`.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Option<T> {
    body.ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

fn bad_body() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "expected a JSON body with the documented fields",
    )
}

async fn ledger(State(state): State<SandboxState>) -> Response {
    Json(json!({"effects": state.ledger()})).into_response()
}

async fn subaccounts(State(state): State<SandboxState>) -> Response {
    Json(json!({"subaccounts": state.subaccounts()})).into_response()
}

#[derive(Deserialize)]
struct HealRequest {
    key: String,
}

async fn heal(State(state): State<SandboxState>, body: Result<Bytes, BytesRejection>) -> Response {
    match parse::<HealRequest>(body) {
        Some(request) if !request.key.trim().is_empty() => {
            state.heal(&request.key);
            Json(json!({"key": request.key, "healed": true})).into_response()
        }
        Some(_) => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "key must not be empty",
        ),
        None => bad_body(),
    }
}

#[derive(Deserialize)]
struct RegisterRequest {
    org_id: String,
    slug: String,
}

async fn register(
    State(state): State<SandboxState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match parse::<RegisterRequest>(body) {
        Some(request) if !request.org_id.is_empty() => {
            state.register(&request.org_id, &request.slug);
            Json(json!({"org_id": request.org_id, "slug": request.slug})).into_response()
        }
        Some(_) => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "org_id must not be empty",
        ),
        None => bad_body(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}
