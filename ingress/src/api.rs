//! The onboarding API (DESIGN.md §6): `POST /v1/onboarding` with a Bearer API key and a
//! required `Idempotency-Key`, and the saga's status by id or by organization.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use onboarding::start::{self, IdempotentStart, OnboardingView};
use onboarding::{
    ClerkOrgId, ClerkUserId, Creator, EmailAddress, IdempotencyKey, OnboardingRequest, Source,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// Checks `Authorization: Bearer <key>`; returns the key's id.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<i64, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or(ApiError::Unauthorized)?;
    let id = state
        .db(async {
            onboarding::api_key::authenticate(state.pool(), token)
                .await
                .map_err(ApiError::database)
        })
        .await?;
    id.ok_or(ApiError::Unauthorized)
}

/// The `202` body of `POST /v1/onboarding`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Accepted {
    /// The saga's id.
    pub id: i64,
    /// Where to poll it.
    pub status_url: String,
}

/// `POST /v1/onboarding`: starts the organization's onboarding at most once per key.
pub async fn create_onboarding(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let api_key_id = authenticate(&state, &headers).await?;
    let key = headers
        .get("idempotency-key")
        .ok_or(ApiError::MissingIdempotencyKey)?;
    let key = key
        .to_str()
        .map_err(|_| onboarding::Invalid("must be visible ASCII"))
        .and_then(IdempotencyKey::parse)
        .map_err(|e| ApiError::InvalidIdempotencyKey(e.0))?;
    let bytes = state.read_body(body).await?;
    let request = parse_request(&bytes).map_err(ApiError::Invalid)?;
    let outcome = state
        .db(async {
            start::start_idempotent(state.pool(), api_key_id, &key, &request)
                .await
                .map_err(ApiError::database)
        })
        .await?;
    let id = match outcome {
        IdempotentStart::Fresh(started) => started.onboarding_id,
        IdempotentStart::Replayed { onboarding_id } => onboarding_id,
        IdempotentStart::KeyReused => return Err(ApiError::IdempotencyKeyReused),
        IdempotentStart::OrganizationDeleted => return Err(ApiError::OrganizationDeleted),
    };
    let status_url = state.status_url(id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            id,
            status_url: status_url.clone(),
        }),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&status_url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/onboarding/{id}`.
pub async fn get_onboarding(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<OnboardingView>, ApiError> {
    authenticate(&state, &headers).await?;
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound)?;
    let view = state
        .db(async {
            start::get(state.pool(), id)
                .await
                .map_err(ApiError::database)
        })
        .await?;
    view.map(Json).ok_or(ApiError::NotFound)
}

/// The query of `GET /v1/onboarding`.
#[derive(Debug, Deserialize)]
pub struct FindQuery {
    org_id: Option<String>,
}

/// `GET /v1/onboarding?org_id=…`.
pub async fn find_onboarding(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<FindQuery>, QueryRejection>,
) -> Result<Json<OnboardingView>, ApiError> {
    authenticate(&state, &headers).await?;
    let invalid = |message: &str| {
        ApiError::Invalid(vec![FieldError {
            field: "org_id".into(),
            message: message.into(),
        }])
    };
    let Ok(Query(query)) = query else {
        return Err(invalid("the query string is malformed"));
    };
    let org_id = query.org_id.ok_or_else(|| invalid("is required"))?;
    let org_id = ClerkOrgId::parse(&org_id).map_err(|e| invalid(e.0))?;
    let view = state
        .db(async {
            start::find_by_org(state.pool(), &org_id)
                .await
                .map_err(ApiError::database)
        })
        .await?;
    view.map(Json).ok_or(ApiError::NotFound)
}

const FIELDS: [&str; 6] = [
    "org_id",
    "name",
    "slug",
    "creator_user_id",
    "creator_email",
    "creator_first_name",
];

/// Parses the body of `POST /v1/onboarding`, naming every bad field.
pub fn parse_request(bytes: &[u8]) -> Result<OnboardingRequest, Vec<FieldError>> {
    let body = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => map,
        _ => return Err(vec![field_error("body", "must be a JSON object")]),
    };
    let mut errors = Vec::new();
    for name in body.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        errors.push(field_error(name, "is not a known field"));
    }
    let org_id = required(&body, "org_id", &mut errors)
        .and_then(|v| check(&mut errors, "org_id", ClerkOrgId::parse(v)));
    let name = required(&body, "name", &mut errors)
        .and_then(|v| check(&mut errors, "name", parse_name(v)));
    let slug = required(&body, "slug", &mut errors)
        .and_then(|v| check(&mut errors, "slug", parse_slug(v)));
    let user_id = required(&body, "creator_user_id", &mut errors)
        .and_then(|v| check(&mut errors, "creator_user_id", ClerkUserId::parse(v)));
    let email = optional(&body, "creator_email", &mut errors)
        .and_then(|v| check(&mut errors, "creator_email", EmailAddress::parse(v)));
    let first_name = optional(&body, "creator_first_name", &mut errors)
        .and_then(|v| check(&mut errors, "creator_first_name", parse_first_name(v)));
    match (org_id, name, slug, user_id) {
        (Some(org_id), Some(name), Some(slug), Some(user_id)) if errors.is_empty() => {
            Ok(OnboardingRequest {
                org_id,
                name: Some(name),
                slug: Some(slug),
                creator: Creator {
                    user_id: Some(user_id),
                    email,
                    first_name,
                },
                source: Source::Api,
            })
        }
        _ => Err(errors),
    }
}

fn field_error(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

fn required<'a>(
    body: &'a Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match body.get(field) {
        None | Some(Value::Null) => {
            errors.push(field_error(field, "is required"));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(field_error(field, "must be a string"));
            None
        }
    }
}

fn optional<'a>(
    body: &'a Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(field_error(field, "must be a string"));
            None
        }
    }
}

fn check<T>(
    errors: &mut Vec<FieldError>,
    field: &str,
    parsed: Result<T, onboarding::Invalid>,
) -> Option<T> {
    parsed
        .map_err(|e| errors.push(field_error(field, e.0)))
        .ok()
}

fn parse_name(value: &str) -> Result<String, onboarding::Invalid> {
    let name = value.trim();
    if name.is_empty() || name.chars().count() > 256 || name.chars().any(char::is_control) {
        return Err(onboarding::Invalid(
            "must be 1 to 256 characters without control characters",
        ));
    }
    Ok(name.to_owned())
}

fn parse_slug(value: &str) -> Result<String, onboarding::Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(onboarding::Invalid(
            "must be 1 to 64 lowercase letters, digits, `-` or `_`",
        ));
    }
    Ok(value.to_owned())
}

fn parse_first_name(value: &str) -> Result<String, onboarding::Invalid> {
    let name = value.trim();
    if name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(onboarding::Invalid(
            "must be at most 100 characters without control characters",
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_body_becomes_a_request() {
        let body = br#"{"org_id":"org_1","name":" Acme ","slug":"acme","creator_user_id":"user_1","creator_email":"a@example.com"}"#;
        let request = parse_request(body).unwrap();
        assert_eq!(request.name.as_deref(), Some("Acme"));
        assert_eq!(
            request.creator.email.as_ref().map(EmailAddress::as_str),
            Some("a@example.com")
        );
        assert_eq!(request.creator.first_name, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let body = br#"{"org_id":"nope","name":"","slug":"Not A Slug","creator_email":"x","creator_first_name":3,"extra":1}"#;
        let errors = parse_request(body).unwrap_err();
        let mut fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "creator_email",
                "creator_first_name",
                "creator_user_id",
                "extra",
                "name",
                "org_id",
                "slug"
            ]
        );
        assert_eq!(parse_request(b"[1]").unwrap_err()[0].field, "body");
    }
}
