//! Who is calling: a session cookie or `Authorization: Bearer <token>`. Pages without one
//! redirect to the login page, `/api/` answers `401`. Acting needs the operator role, and a
//! POST that a session cookie authenticates needs its CSRF token.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use crate::DashboardState;
use crate::account::{self, Identity, Role};
use crate::error::ApiError;
use crate::session::{self, COOKIE};

/// The header an API POST authenticated by a session cookie carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How the caller authenticated.
#[derive(Debug, Clone)]
pub enum Via {
    /// A session cookie, with the session's CSRF token and key.
    Session {
        /// The CSRF token of the session.
        csrf: String,
        /// The session's key (SHA-256 of the cookie secret).
        key: Vec<u8>,
    },
    /// A Bearer API token (no CSRF: a browser never sends it by itself).
    Bearer,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The operator.
    pub identity: Identity,
    /// How.
    pub via: Via,
}

impl Caller {
    /// The session's CSRF token, for forms (empty for Bearer callers).
    pub fn csrf(&self) -> &str {
        match &self.via {
            Via::Session { csrf, .. } => csrf,
            Via::Bearer => "",
        }
    }

    /// True for the operator role.
    pub fn can_act(&self) -> bool {
        self.identity.role == Role::Operator
    }

    /// Checks that the caller may act: the CSRF token of a session, then the role.
    pub fn authorize_action(&self, presented_csrf: Option<&str>) -> Result<(), ApiError> {
        if let Via::Session { csrf, .. } = &self.via {
            let ok =
                presented_csrf.is_some_and(|p| bool::from(p.as_bytes().ct_eq(csrf.as_bytes())));
            if !ok {
                return Err(ApiError::csrf());
            }
        }
        if !self.can_act() {
            return Err(ApiError::forbidden());
        }
        Ok(())
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Why a request is not authenticated.
#[derive(Debug)]
pub enum Unauthenticated {
    /// An API call: `401`.
    Api(ApiError),
    /// A page: to the login page, back here afterwards.
    Page(String),
}

impl IntoResponse for Unauthenticated {
    fn into_response(self) -> Response {
        match self {
            Unauthenticated::Api(error) => error.into_response(),
            Unauthenticated::Page(next) => {
                Redirect::to(&format!("/login?next={}", urlencode(&next))).into_response()
            }
        }
    }
}

/// Percent-encodes a query value.
pub fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl FromRequestParts<DashboardState> for Caller {
    type Rejection = Unauthenticated;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &DashboardState,
    ) -> Result<Self, Self::Rejection> {
        let is_api = parts.uri.path().starts_with("/api/");
        let reject = |error: ApiError| {
            if is_api {
                Unauthenticated::Api(error)
            } else {
                let next = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                Unauthenticated::Page(next)
            }
        };
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(token) = bearer {
            return match account::authenticate_token(&state.pool, token.trim()).await {
                Ok(Some(identity)) => Ok(Caller {
                    identity,
                    via: Via::Bearer,
                }),
                Ok(None) => Err(reject(ApiError::unauthenticated())),
                Err(error) => Err(Unauthenticated::Api(error.into())),
            };
        }
        let Some(secret) = cookie(&parts.headers, COOKIE) else {
            return Err(reject(ApiError::unauthenticated()));
        };
        match session::find(&state.pool, secret).await {
            Ok(Some(session)) => Ok(Caller {
                identity: session.identity,
                via: Via::Session {
                    csrf: session.csrf,
                    key: session.key,
                },
            }),
            Ok(None) => Err(reject(ApiError::unauthenticated())),
            Err(error) => Err(Unauthenticated::Api(error.into())),
        }
    }
}

/// True when the request came over TLS as far as we can tell (a proxy's `X-Forwarded-Proto`).
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value of a session (or of its removal when `secret` is empty).
pub fn session_cookie(secret: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut cookie = format!("{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict");
    match max_age {
        Some(age) => cookie.push_str(&format!("; Max-Age={age}")),
        None => cookie.push_str("; Max-Age=0"),
    }
    if secure {
        cookie.push_str("; Secure");
    }
    cookie
}
