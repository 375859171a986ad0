//! Login and logout: a session cookie (HttpOnly, SameSite=Strict, Secure behind TLS), failed
//! attempts rate-limited per name, every attempt audited.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;

use crate::DashboardState;
use crate::auth::{Caller, Via, is_https, session_cookie};
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

fn page(next: &str, message: Option<&str>) -> Markup {
    layout::bare(
        "Log in",
        html! {
            form.login method="post" action="/login" {
                h1 { "onboard — operators" }
                @if let Some(message) = message { p.error { (message) } }
                input type="hidden" name="next" value=(next);
                label { "Name " input name="name" autocomplete="username" autofocus required; }
                label { "Password " input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

async fn form(Query(q): Query<Next>) -> Markup {
    page(safe_next(q.next.as_deref()), None)
}

#[derive(Debug, Deserialize)]
struct Credentials {
    name: String,
    password: String,
    next: Option<String>,
}

async fn login(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Form(c): Form<Credentials>,
) -> Response {
    let next = safe_next(c.next.as_deref()).to_owned();
    let name: String = c.name.trim().chars().take(64).collect();
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
        return (
            StatusCode::TOO_MANY_REQUESTS,
            page(
                &next,
                Some("Too many failed attempts for this name; try again later."),
            ),
        )
            .into_response();
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
        return (
            StatusCode::UNAUTHORIZED,
            page(&next, Some("Wrong name or password.")),
        )
            .into_response();
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
    (
        [(
            header::SET_COOKIE,
            session_cookie(&secret, secure, Some(ttl.as_secs())),
        )],
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
