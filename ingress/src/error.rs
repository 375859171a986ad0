//! The one error type of the HTTP boundary, mapped once to a status and a stable JSON body
//! `{"error":{"code","message"}}`. Server errors are logged here, with their cause chain, and
//! answered with an opaque body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::signature::SignatureError;

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field's name in the request body (or `body`, `org_id`, …).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Why a signed delivery is not a Clerk event: the sender is told only this class, in a fixed
/// message, never a parser's or the database's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAnEvent {
    /// The body is not UTF-8.
    #[error("the body is not UTF-8 text")]
    NotUtf8,
    /// Not JSON, or not an object with a string `type` and an object `data`.
    #[error(
        "the body is not a Clerk event envelope (a JSON object with a string `type` and an object `data`)"
    )]
    NotAnEnvelope,
    /// `type` is not shaped like a Clerk event type.
    #[error("`type` is not a Clerk event type")]
    EventType,
    /// `organization.created` without a valid organization id.
    #[error("organization.created needs a valid organization id in `data.id`")]
    OrganizationId,
    /// The database cannot store the payload (e.g. a `\u0000` escape).
    #[error(
        "the payload cannot be stored (it contains a value PostgreSQL refuses, such as \\u0000)"
    )]
    Unstorable,
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The delivery's Svix headers or signature are wrong.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The body is over the limit (bytes).
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body could not be read.
    #[error("the request body could not be read")]
    BadBody,
    /// A signed delivery that is not a Clerk envelope (recorded in `rejected_delivery`).
    #[error("not a Clerk event: {0}")]
    NotAnEvent(NotAnEvent),
    /// No, a wrong or a revoked API key.
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    /// `Idempotency-Key` is absent.
    #[error("the Idempotency-Key header is required")]
    MissingIdempotencyKey,
    /// `Idempotency-Key` is malformed.
    #[error("the Idempotency-Key header {0}")]
    InvalidIdempotencyKey(&'static str),
    /// The idempotency key was used before with another request.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    /// The organization was deleted: it is never onboarded (`409`).
    #[error("this organization was deleted; it cannot be onboarded")]
    OrganizationDeleted,
    /// The request body or query is invalid; every bad field is named.
    #[error("invalid request: {}", describe(.0))]
    Invalid(Vec<FieldError>),
    /// No such resource.
    #[error("not found")]
    NotFound,
    /// The database cannot be reached in time (`503`).
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Anything else (`500`).
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

fn describe(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(|f| format!("{} {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// Maps a database error: connection trouble is `503`, the rest `500`.
    pub fn database(error: sqlx::Error) -> Self {
        let unavailable = jobs::db::is_unavailable(&error);
        let error = anyhow::Error::new(error).context("database");
        if unavailable {
            ApiError::Unavailable(error)
        } else {
            ApiError::Internal(error)
        }
    }

    /// The status and the stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Signature(SignatureError::MissingHeader(_)) => {
                (StatusCode::BAD_REQUEST, "missing_header")
            }
            ApiError::Signature(SignatureError::InvalidHeader(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_header")
            }
            ApiError::Signature(
                SignatureError::TimestampTooOld | SignatureError::TimestampInFuture,
            ) => (StatusCode::UNAUTHORIZED, "timestamp_out_of_tolerance"),
            ApiError::Signature(SignatureError::InvalidTimestamp) => {
                (StatusCode::UNAUTHORIZED, "invalid_timestamp")
            }
            ApiError::Signature(SignatureError::NoMatchingSignature) => {
                (StatusCode::UNAUTHORIZED, "invalid_signature")
            }
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BadBody => (StatusCode::BAD_REQUEST, "unreadable_body"),
            ApiError::NotAnEvent(_) => (StatusCode::BAD_REQUEST, "invalid_event"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::MissingIdempotencyKey => (StatusCode::BAD_REQUEST, "missing_idempotency_key"),
            ApiError::InvalidIdempotencyKey(_) => {
                (StatusCode::BAD_REQUEST, "invalid_idempotency_key")
            }
            ApiError::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::OrganizationDeleted => (StatusCode::CONFLICT, "organization_deleted"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a [FieldError]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "answering 503");
                "the service is temporarily unavailable; retry later".to_owned()
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "answering 500");
                "internal error".to_owned()
            }
            other => {
                tracing::debug!(%code, error = %other, "client error");
                other.to_string()
            }
        };
        let fields = match &self {
            ApiError::Invalid(fields) => Some(fields.as_slice()),
            _ => None,
        };
        let mut response = (
            status,
            axum::Json(Body {
                error: Detail {
                    code,
                    message,
                    fields,
                },
            }),
        )
            .into_response();
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, ApiError::Unavailable(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
