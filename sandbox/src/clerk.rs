//! The Clerk Backend API calls onboarding makes: `GET /v1/users/{id}` (a user whose primary email
//! is `<id>@example.com`), `PATCH /v1/organizations/{id}/metadata` (deep merge, `null` deletes)
//! and `GET /v1/organizations/{id}`, with `Authorization: Bearer sk_…` and Clerk's error bodies.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::state::{Action, Organization, Provider, SandboxState, deep_merge};

/// User id suffix: `GET /v1/users/{id}` answers 404.
const MISSING_USER: &str = "-missing";
/// User id suffix: the user has no email address.
const USER_WITHOUT_EMAIL: &str = "-no-email";

/// The Clerk routes.
pub(crate) fn routes() -> Router<SandboxState> {
    Router::new()
        .route("/v1/users/{user_id}", get(get_user))
        .route("/v1/organizations/{org_id}", get(get_organization))
        .route(
            "/v1/organizations/{org_id}/metadata",
            patch(update_metadata),
        )
}

/// A Clerk error body: `{"errors":[{"message","long_message","code"}],"clerk_trace_id"}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str, long_message: &str) -> Response {
    let body = json!({
        "errors": [{"message": message, "long_message": long_message, "code": code}],
        "clerk_trace_id": uuid::Uuid::new_v4().simple().to_string(),
    });
    (status, axum::Json(body)).into_response()
}

fn unauthenticated() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "authentication_invalid",
        "Invalid authentication",
        "Unable to authenticate the request, you need to supply an active API key",
    )
}

fn not_found(kind: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "resource_not_found",
        "not found",
        &format!("{kind} not found"),
    )
}

fn authenticated(state: &SandboxState, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|key| key == state.config().clerk_secret_key)
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn email_address(id: &str, address: &str, at: i64) -> Value {
    json!({
        "id": id,
        "object": "email_address",
        "email_address": address,
        "reserved": false,
        "verification": {"status": "verified", "strategy": "admin", "attempts": null, "expire_at": null},
        "linked_to": [],
        "matches_sso_connection": false,
        "created_at": at,
        "updated_at": at,
    })
}

/// A Clerk user. The primary address is listed second, so clients must follow
/// `primary_email_address_id` rather than take the first one.
fn user_json(user_id: &str) -> Value {
    let at = millis(Utc::now());
    let (emails, primary) = if user_id.ends_with(USER_WITHOUT_EMAIL) {
        (Vec::new(), Value::Null)
    } else {
        let primary = format!("idn_primary_{user_id}");
        let emails = vec![
            email_address(
                &format!("idn_secondary_{user_id}"),
                &format!("secondary.{user_id}@example.org"),
                at,
            ),
            email_address(&primary, &format!("{user_id}@example.com"), at),
        ];
        (emails, Value::String(primary))
    };
    json!({
        "object": "user",
        "id": user_id,
        "external_id": null,
        "username": null,
        "first_name": "Sandbox",
        "last_name": "User",
        "image_url": "https://img.clerk.com/sandbox",
        "has_image": false,
        "primary_email_address_id": primary,
        "primary_phone_number_id": null,
        "primary_web3_wallet_id": null,
        "password_enabled": false,
        "two_factor_enabled": false,
        "totp_enabled": false,
        "backup_code_enabled": false,
        "email_addresses": emails,
        "phone_numbers": [],
        "web3_wallets": [],
        "passkeys": [],
        "external_accounts": [],
        "saml_accounts": [],
        "public_metadata": {},
        "private_metadata": {},
        "unsafe_metadata": {},
        "banned": false,
        "locked": false,
        "last_sign_in_at": null,
        "last_active_at": null,
        "created_at": at,
        "updated_at": at,
    })
}

fn organization_json(org: &Organization, slug: Option<&String>) -> Value {
    json!({
        "object": "organization",
        "id": org.id,
        "name": slug.unwrap_or(&org.id),
        "slug": slug,
        "image_url": "https://img.clerk.com/sandbox",
        "has_image": false,
        "max_allowed_memberships": 0,
        "admin_delete_enabled": true,
        "public_metadata": org.public_metadata,
        "private_metadata": org.private_metadata,
        "created_by": null,
        "created_at": millis(org.created_at),
        "updated_at": millis(org.updated_at),
    })
}

/// `GET /v1/users/{user_id}`.
async fn get_user(
    State(state): State<SandboxState>,
    headers: HeaderMap,
    user_id: Result<Path<String>, PathRejection>,
) -> Response {
    if !authenticated(&state, &headers) {
        return unauthenticated();
    }
    match user_id {
        Ok(Path(user_id)) if !user_id.ends_with(MISSING_USER) => {
            (StatusCode::OK, axum::Json(user_json(&user_id))).into_response()
        }
        _ => not_found("User"),
    }
}

/// `GET /v1/organizations/{org_id}`: organizations the sandbox has seen through the metadata endpoint.
async fn get_organization(
    State(state): State<SandboxState>,
    headers: HeaderMap,
    org_id: Result<Path<String>, PathRejection>,
) -> Response {
    if !authenticated(&state, &headers) {
        return unauthenticated();
    }
    let Ok(Path(org_id)) = org_id else {
        return not_found("Organization");
    };
    let data = state.lock();
    match data.orgs.get(&org_id) {
        Some(org) => {
            let body = organization_json(org, data.slugs.get(&org_id));
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        None => not_found("Organization"),
    }
}

/// One of the two metadata fields of the body: absent or `null` → `Ok(None)`, an object →
/// `Ok(Some)`, anything else → `Err(())`.
fn metadata_field(
    body: &mut Map<String, Value>,
    field: &str,
) -> Result<Option<Map<String, Value>>, ()> {
    match body.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(()),
    }
}

fn not_an_object(field: &str) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "form_param_format_invalid",
        "is invalid",
        &format!("{field} must be a JSON object"),
    )
}

/// `PATCH /v1/organizations/{org_id}/metadata` with `{public_metadata?, private_metadata?}`.
async fn update_metadata(
    State(state): State<SandboxState>,
    headers: HeaderMap,
    org_id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let org_id = org_id.map(|Path(id)| id).unwrap_or_default();
    let fail = |response: Response| {
        state.record(
            Provider::Clerk,
            Action::UpdateOrgMetadata,
            org_id.clone(),
            None,
            response.status().as_u16(),
        );
        response
    };
    if !authenticated(&state, &headers) {
        return fail(unauthenticated());
    }
    if org_id.is_empty() {
        return fail(not_found("Organization"));
    }
    let parsed = body
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let Some(Value::Object(mut body)) = parsed else {
        return fail(error(
            StatusCode::BAD_REQUEST,
            "request_body_invalid",
            "Request body invalid",
            "The request body is invalid. Please consult the API documentation for more information.",
        ));
    };
    let public = match metadata_field(&mut body, "public_metadata") {
        Ok(public) => public,
        Err(()) => return fail(not_an_object("public_metadata")),
    };
    let private = match metadata_field(&mut body, "private_metadata") {
        Ok(private) => private,
        Err(()) => return fail(not_an_object("private_metadata")),
    };

    let mut data = state.lock();
    let now = Utc::now();
    let org = data
        .orgs
        .entry(org_id.clone())
        .or_insert_with(|| Organization {
            id: org_id.clone(),
            public_metadata: Map::new(),
            private_metadata: Map::new(),
            created_at: now,
            updated_at: now,
        });
    if let Some(public) = public {
        deep_merge(&mut org.public_metadata, public);
    }
    if let Some(private) = private {
        deep_merge(&mut org.private_metadata, private);
    }
    org.updated_at = now;
    let org = org.clone();
    let body = organization_json(&org, data.slugs.get(&org_id));
    data.record(
        Provider::Clerk,
        Action::UpdateOrgMetadata,
        &org_id,
        Some(org_id.clone()),
        200,
    );
    (StatusCode::OK, axum::Json(body)).into_response()
}
