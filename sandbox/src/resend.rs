//! Resend's emails API: `POST /emails` with `Authorization: Bearer re_…`, a JSON body and an
//! optional `Idempotency-Key`. A key remembers a *successful* send for 24 h: the same key and
//! payload get the same answer without a new send (and no new ledger effect); the same key with
//! another payload gets 409 `invalid_idempotent_request`. Failed sends are not remembered, so a
//! retry after a 429 or a healed 422 goes through.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{Duration, Utc};
use serde_json::{Value, json};

use crate::magic::{self, EmailMagic, FLAKY_FAILURES};
use crate::state::{Action, IdempotentSend, Provider, SandboxState};

/// How long an idempotency key is remembered.
const IDEMPOTENCY_WINDOW: Duration = Duration::hours(24);
/// Longest idempotency key Resend accepts.
const MAX_IDEMPOTENCY_KEY: usize = 256;
/// Most recipients in `to`.
const MAX_RECIPIENTS: usize = 50;
const INVALID_ADDRESS: &str = "Invalid `to` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format.";

/// The Resend routes.
pub(crate) fn routes() -> Router<SandboxState> {
    Router::new().route("/emails", post(send_email))
}

/// A Resend error body: `{"statusCode","message","name"}`.
pub(crate) fn error(status: StatusCode, name: &str, message: &str) -> Response {
    let body = json!({"statusCode": status.as_u16(), "message": message, "name": name});
    (status, axum::Json(body)).into_response()
}

/// The bare address in `a@b` or `Name <a@b>`.
fn bare_address(value: &str) -> &str {
    let value = value.trim();
    match (value.rfind('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => value[open + 1..close].trim(),
        _ => value,
    }
}

fn is_address(value: &str) -> bool {
    value
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !value.chars().any(char::is_whitespace)
}

/// The recipients of `to` (a string or an array of strings), as bare addresses.
fn recipients(to: &Value) -> Option<Vec<String>> {
    match to {
        Value::String(one) => Some(vec![bare_address(one).to_owned()]),
        Value::Array(many) => many
            .iter()
            .map(|value| value.as_str().map(|one| bare_address(one).to_owned()))
            .collect(),
        _ => None,
    }
}

/// An error answer not rendered yet.
struct Refusal {
    status: StatusCode,
    name: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, self.name, &self.message)
    }
}

/// Checks a parsed body the way Resend does; the error names the first problem.
fn validate(payload: &Value) -> Result<Vec<String>, Refusal> {
    let missing = |field: &str| Refusal {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        name: "missing_required_field",
        message: format!("Missing `{field}` field."),
    };
    let invalid = |message: &str| Refusal {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        name: "validation_error",
        message: message.to_owned(),
    };
    let Some(object) = payload.as_object() else {
        return Err(invalid("The request body must be a JSON object."));
    };
    let present = |field: &str| object.get(field).filter(|value| !value.is_null());

    match present("from") {
        None => return Err(missing("from")),
        Some(Value::String(from)) if is_address(bare_address(from)) => {}
        Some(_) => {
            return Err(invalid(
                "Invalid `from` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format.",
            ));
        }
    }
    let Some(to) = present("to") else {
        return Err(missing("to"));
    };
    let Some(to) = recipients(to) else {
        return Err(invalid(INVALID_ADDRESS));
    };
    if to.is_empty() {
        return Err(missing("to"));
    }
    if to.len() > MAX_RECIPIENTS {
        return Err(invalid(
            "Too many recipients: `to` accepts at most 50 addresses.",
        ));
    }
    if !to.iter().all(|address| is_address(address)) {
        return Err(invalid(INVALID_ADDRESS));
    }
    match present("subject") {
        None => return Err(missing("subject")),
        Some(Value::String(_)) => {}
        Some(_) => return Err(invalid("Invalid `subject` field: expected a string.")),
    }
    for field in ["html", "text"] {
        if present(field).is_some_and(|value| !value.is_string()) {
            return Err(invalid(&format!(
                "Invalid `{field}` field: expected a string."
            )));
        }
    }
    if present("html").is_none() && present("text").is_none() {
        return Err(missing("html` or `text"));
    }
    Ok(to)
}

/// `POST /emails`.
async fn send_email(
    State(state): State<SandboxState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let payload: Option<Value> = body
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let key = payload
        .as_ref()
        .and_then(|payload| payload.get("to"))
        .and_then(recipients)
        .map(|to| to.join(","))
        .unwrap_or_default();
    let fail = |response: Response| {
        state.record(
            Provider::Resend,
            Action::SendEmail,
            key.clone(),
            None,
            response.status().as_u16(),
        );
        response
    };

    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default());
    match authorization {
        None => {
            return fail(error(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "Missing API key in the authorization header. Include the following header Authorization: Bearer YOUR_API_KEY in the request.",
            ));
        }
        Some(value)
            if value.strip_prefix("Bearer ") == Some(state.config().resend_api_key.as_str()) => {}
        Some(_) => {
            return fail(error(
                StatusCode::FORBIDDEN,
                "invalid_api_key",
                "API key is invalid",
            ));
        }
    }

    let idempotency_key = match headers.get("idempotency-key").map(HeaderValue::to_str) {
        None => None,
        Some(Ok(value)) if !value.is_empty() && value.chars().count() <= MAX_IDEMPOTENCY_KEY => {
            Some(value.to_owned())
        }
        Some(_) => {
            return fail(error(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "The key must be between 1-256 chars.",
            ));
        }
    };
    let Some(payload) = payload else {
        return fail(error(
            StatusCode::BAD_REQUEST,
            "validation_error",
            "The request body is not valid JSON.",
        ));
    };
    let to = match validate(&payload) {
        Ok(to) => to,
        Err(refusal) => return fail(refusal.into_response()),
    };

    // Idempotency check, magic and send under one lock: concurrent duplicates cannot both send.
    let mut data = state.lock();
    let now = Utc::now();
    if let Some(previous) = idempotency_key
        .as_ref()
        .and_then(|key| data.sends.get(key))
        .filter(|previous| now - previous.at < IDEMPOTENCY_WINDOW)
    {
        if previous.payload == payload {
            return (StatusCode::OK, axum::Json(json!({"id": previous.id}))).into_response();
        }
        data.record(Provider::Resend, Action::SendEmail, &key, None, 409);
        return error(
            StatusCode::CONFLICT,
            "invalid_idempotent_request",
            "Same idempotency key used with a different request payload. Change your idempotency key or payload.",
        );
    }

    let magics: Vec<(String, EmailMagic)> = to
        .iter()
        .filter_map(|address| {
            magic::email(&data, address).map(|magic| (address.to_lowercase(), magic))
        })
        .collect();
    if let Some((address, _)) = magics.iter().find(|(_, magic)| *magic == EmailMagic::Fail) {
        let message = format!("Sandbox magic: the recipient {address} is refused.");
        data.record(Provider::Resend, Action::SendEmail, &key, None, 422);
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
            &message,
        );
    }
    let mut limited = false;
    for (address, _) in magics
        .iter()
        .filter(|(_, magic)| *magic == EmailMagic::Flaky)
    {
        let failures = data.flaky_sends.entry(address.clone()).or_default();
        if *failures < FLAKY_FAILURES {
            *failures += 1;
            limited = true;
        }
    }
    if limited {
        data.record(Provider::Resend, Action::SendEmail, &key, None, 429);
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "Too many requests. You can only make 2 requests per second. See rate limit response headers for more information. Or contact support to increase rate limit.",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }

    let id = uuid::Uuid::new_v4().to_string();
    if let Some(idempotency_key) = idempotency_key {
        data.sends.insert(
            idempotency_key,
            IdempotentSend {
                payload,
                id: id.clone(),
                at: now,
            },
        );
    }
    data.record(
        Provider::Resend,
        Action::SendEmail,
        &key,
        Some(id.clone()),
        200,
    );
    (StatusCode::OK, axum::Json(json!({"id": id}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_address_strips_display_names() {
        assert_eq!(
            bare_address("Onboard <hello@example.com>"),
            "hello@example.com"
        );
        assert_eq!(bare_address(" a@b "), "a@b");
    }

    #[test]
    fn validate_names_the_first_missing_field() {
        let Err(refusal) = validate(&json!({"from": "a@b", "subject": "s", "text": "t"})) else {
            panic!("a body without `to` is refused");
        };
        assert_eq!(refusal.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(refusal.message, "Missing `to` field.");
        assert!(
            validate(&json!({"from": "a@b", "to": ["c@d"], "subject": "s", "html": "<p/>"}))
                .is_ok()
        );
    }
}
