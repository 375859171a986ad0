//! Login and logout: a session cookie (HttpOnly, SameSite=Strict, Secure behind TLS), failed
//! attempts rate-limited per name, every attempt audited. The login form itself is protected
//! against login CSRF by a double submit: every rendering of the form sets a fresh random
//! token in a pre-session cookie (`onboard_login`, HttpOnly, SameSite=Strict, path `/login`)
//! and in a hidden field; a POST whose field does not match its cookie is refused (`403`).

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;

use crate::DashboardState;
use crate::auth::{Caller, Via, cookie, is_https, session_cookie};
use crate::pages::layout;
use crate::{account, audit, session};

/// `/login` and `/logout`.
pub fn router() -> Router<DashboardState> {
    Router::new()
        .route("/login", get(form).post(login))
        .route("/logout", post(logout))
}

#[derive(Debug, Deserialize)]
struct Next {
    next: Option<String>,
}

/// Only a local path is a place to go back to.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

/// The pre-session cookie that carries the login form's CSRF token.
pub const LOGIN_COOKIE: &str = "onboard_login";
/// The login form's hidden field with the same token.
pub const LOGIN_FIELD: &str = "login_csrf";
/// How long a login form stays usable.
const LOGIN_FORM_TTL_SECS: u64 = 3600;

fn page(next: &str, message: Option<&str>, token: &str) -> Markup {
    layout::bare(
        "Log in",
        html! {
            form.login method="post" action="/login" {
                h1 { "onboard — operators" }
                @if let Some(message) = message { p.error { (message) } }
                input type="hidden" name="next" value=(next);
                input type="hidden" name=(LOGIN_FIELD) value=(token);
                label { "Name " input name="name" autocomplete="username" autofocus required; }
                label { "Password " input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// The login form again after a refused attempt, with the token it was posted with (its
/// cookie is still set).
fn form_again(status: StatusCode, next: &str, message: &str, token: &str) -> Response {
    (status, page(next, Some(message), token)).into_response()
}

/// The login form with a fresh CSRF token, its cookie set alongside.
fn form_response(
    state: &DashboardState,
    headers: &HeaderMap,
    status: StatusCode,
    next: &str,
    message: Option<&str>,
) -> Response {
    let token = crate::secret::random_hex(32);
    let mut cookie = format!(
        "{LOGIN_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age={LOGIN_FORM_TTL_SECS}"
    );
    if state.settings.secure_cookies || is_https(headers) {
        cookie.push_str("; Secure");
    }
    (
        status,
        [(header::SET_COOKIE, cookie)],
        page(next, message, &token),
    )
        .into_response()
}

async fn form(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Query(q): Query<Next>,
) -> Response {
    form_response(
        &state,
        &headers,
        StatusCode::OK,
        safe_next(q.next.as_deref()),
        None,
    )
}

/// True when the form's token equals its cookie's (both present, compared in constant time).
fn login_csrf_ok(headers: &HeaderMap, presented: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    match (cookie(headers, LOGIN_COOKIE), presented) {
        (Some(expected), Some(presented)) if !expected.is_empty() => {
            bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
        }
        _ => false,
    }
}

#[derive(Debug, Deserialize)]
struct Credentials {
    name: String,
    password: String,
    next: Option<String>,
    login_csrf: Option<String>,
}

async fn login(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Form(c): Form<Credentials>,
) -> Response {
    let next = safe_next(c.next.as_deref()).to_owned();
    let name: String = c.name.trim().chars().take(64).collect();
    if !login_csrf_ok(&headers, c.login_csrf.as_deref()) {
        audit::record(&state.pool, &name, "login", "dashboard", "csrf", json!({})).await;
        return form_response(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            &next,
            Some(
                "This login form has expired or did not come from this site; please log in again.",
            ),
        );
    }
    let token = c.login_csrf.as_deref().unwrap_or_default();
    if !state.limiter.allowed(&name) {
        audit::record(
            &state.pool,
            &name,
            "login",
            "dashboard",
            "rate_limited",
            json!({}),
        )
        .await;
        return form_again(
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            "Too many failed attempts for this name; try again later.",
            token,
        );
    }
    let identity = match account::check_login(&state.pool, &name, &c.password).await {
        Ok(identity) => identity,
        Err(error) => return crate::error::ApiError::from(error).into_response(),
    };
    let Some(identity) = identity else {
        state.limiter.failed(&name);
        audit::record(
            &state.pool,
            &name,
            "login",
            "dashboard",
            "bad_credentials",
            json!({}),
        )
        .await;
        return form_again(
            StatusCode::UNAUTHORIZED,
            &next,
            "Wrong name or password.",
            token,
        );
    };
    state.limiter.succeeded(&name);
    let ttl = state.settings.session_ttl;
    let secret = match session::create(&state.pool, identity.id, ttl).await {
        Ok(secret) => secret,
        Err(error) => return crate::error::ApiError::from(error).into_response(),
    };
    audit::record(
        &state.pool,
        &identity.name,
        "login",
        "dashboard",
        "ok",
        json!({}),
    )
    .await;
    let secure = state.settings.secure_cookies || is_https(&headers);
    let used_form = format!("{LOGIN_COOKIE}=; Path=/login; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        AppendHeaders([
            (
                header::SET_COOKIE,
                session_cookie(&secret, secure, Some(ttl.as_secs())),
            ),
            (header::SET_COOKIE, used_form),
        ]),
        Redirect::to(&next),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn logout(
    caller: Caller,
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let Via::Session { csrf, key } = &caller.via else {
        return Redirect::to("/login").into_response();
    };
    if f.csrf.as_deref() != Some(csrf.as_str()) {
        return crate::error::ApiError::csrf().into_response();
    }
    if let Err(error) = session::delete(&state.pool, key).await {
        return crate::error::ApiError::from(error).into_response();
    }
    audit::record(
        &state.pool,
        &caller.identity.name,
        "logout",
        "dashboard",
        "ok",
        json!({}),
    )
    .await;
    let secure = state.settings.secure_cookies || is_https(&headers);
    (
        [(header::SET_COOKIE, session_cookie("", secure, None))],
        Redirect::to("/login"),
    )
        .into_response()
}
