//! The provider emulator: a loopback HTTP server that speaks the wire protocol of the Twilio
//! Accounts API, Resend's emails API and the two Clerk Backend API calls onboarding makes, so the
//! real clients in `worker::provider` run end to end (DESIGN.md §7).
//!
//! Every effect happens when its request arrives, and every mutating call — successful or not —
//! is appended to a ledger (`GET /sandbox/ledger`, [`Sandbox::ledger`]). Reads are not effects.
//!
//! # Endpoints
//!
//! | provider | request | notes |
//! |---|---|---|
//! | Twilio | `POST /2010-04-01/Accounts.json` | Basic auth (main SID + token), form `FriendlyName` → 201 |
//! | Twilio | `GET /2010-04-01/Accounts.json` | `FriendlyName` (exact), `Status`, `PageSize`, `Page`; paginated with `next_page_uri` |
//! | Twilio | `GET /2010-04-01/Accounts/{Sid}.json` | 200 or 404 (code 20404) |
//! | Twilio | `POST /2010-04-01/Accounts/{Sid}.json` | form `Status` and/or `FriendlyName`; a closed account cannot be reopened (400) |
//! | Resend | `POST /emails` | Bearer key, JSON body, optional `Idempotency-Key` (24 h, successes only) |
//! | Clerk | `GET /v1/users/{id}` | a user whose primary email is `<id>@example.com` |
//! | Clerk | `PATCH /v1/organizations/{id}/metadata` | deep merge, `null` deletes a key |
//! | Clerk | `GET /v1/organizations/{id}` | an organization the sandbox has seen, else 404 |
//! | sandbox | `GET /sandbox/ledger`, `GET /sandbox/subaccounts`, `POST /sandbox/heal`, `POST /sandbox/register`, `GET /healthz` | control plane, no auth |
//!
//! Error bodies follow each provider: Twilio's legacy `{"code","message","more_info","status"}`,
//! Resend's `{"statusCode","message","name"}` and Clerk's `{"errors":[{"message","long_message","code"}]}`.
//!
//! # Magic values
//!
//! The onboarding worker names sub-accounts `org:<clerk_org_id>` and never sends the org slug to
//! Twilio, so a Twilio magic suffix applies when **any** of these ends with it: the
//! `FriendlyName`, the org id after the `org:` prefix, or the org's slug. The sandbox plays Clerk,
//! where slugs live: it learns an org's slug from [`SandboxConfig::slug_lookup`] at each Twilio
//! create — `onboard dev`, `onboard sandbox` with `DATABASE_URL` and the test stack read it from
//! the service's `organization` table, the mirror of Clerk's organizations that the
//! `organization.created` delivery itself fills — so slug magic works from the webhook alone.
//! `POST /sandbox/register {"org_id": "…", "slug": "…"}` still records a slug by hand for a
//! sandbox run without a database.
//!
//! | magic | effect |
//! |---|---|
//! | `-fail-twilio` | Twilio create answers 400 (code 20001), nothing is created |
//! | `-flaky-twilio` | Twilio create answers 503 (code 20503) twice per `FriendlyName`, then succeeds |
//! | `-slow-twilio` | Twilio create creates the account at once (ledger: 201) but answers after [`SandboxConfig::slow_delay`] |
//! | recipient `fail@…` | email send answers 422 `invalid_parameter` |
//! | recipient `flaky@…` | email send answers 429 `rate_limit_exceeded` with `Retry-After: 1` twice per recipient, then succeeds |
//! | user id ending `-missing` | `GET /v1/users/{id}` answers 404 `resource_not_found` |
//! | user id ending `-no-email` | `GET /v1/users/{id}` answers a user without email addresses |
//!
//! `POST /sandbox/heal {"key": "…"}` turns the magic off for that key: a slug, an org id, a
//! `FriendlyName` or a recipient address (case-insensitive).
//!
//! # Ledger actions
//!
//! `create_subaccount` (key = `FriendlyName`), `suspend_subaccount`, `close_subaccount`,
//! `activate_subaccount` (reactivation) and `update_subaccount` (an update without `Status`) —
//! key = the account's `FriendlyName`, or the SID when it is unknown — `send_email` (key = the
//! recipients, comma-separated) and `update_org_metadata` (key = org id). Credentials never
//! appear in the ledger.

mod clerk;
mod config;
mod control;
mod magic;
mod resend;
mod state;
mod twilio;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{CREDENTIAL_VARS, SandboxConfig, SlugLookup};
pub use magic::{FAIL_TWILIO, FLAKY_FAILURES, FLAKY_TWILIO, SLOW_TWILIO};
pub use state::{AccountStatus, Action, Effect, Provider, SandboxState, SubAccountInfo};

/// How long [`Sandbox::shutdown`] waits for in-flight requests before aborting the server.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// A running sandbox server; dropping it stops the server in the background.
pub struct Sandbox {
    /// The address the server listens on (the real port when spawned on port 0).
    pub addr: SocketAddr,
    state: SandboxState,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Binds `listen` (port 0 picks a free port) and serves the sandbox on it in a background task.
pub async fn spawn(listen: SocketAddr, config: SandboxConfig) -> std::io::Result<Sandbox> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let state = SandboxState::new(config);
    let app = router(state.clone());
    let signal = state.closed();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
    });
    tracing::info!(%addr, "sandbox listening");
    Ok(Sandbox {
        addr,
        state,
        task: Some(task),
    })
}

/// The sandbox's routes over `state`, for embedding in another server.
pub fn router(state: SandboxState) -> Router {
    Router::new()
        .merge(twilio::routes())
        .merge(resend::routes())
        .merge(clerk::routes())
        .merge(control::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

impl Sandbox {
    /// The base URL of every emulated provider, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every effect recorded so far, in order.
    pub async fn ledger(&self) -> Vec<Effect> {
        self.state.ledger()
    }

    /// Every sub-account created so far (not the main account), in creation order.
    pub async fn subaccounts(&self) -> Vec<SubAccountInfo> {
        self.state.subaccounts()
    }

    /// Turns the magic failure of `key` (slug, org id, `FriendlyName` or recipient) off.
    pub async fn heal(&self, key: &str) {
        self.state.heal(key);
    }

    /// Records that `org_id` has slug `slug`, so slug magic applies to `org:<org_id>`.
    pub async fn register(&self, org_id: &str, slug: &str) {
        self.state.register(org_id, slug);
    }

    /// The shared state behind the server.
    pub fn state(&self) -> &SandboxState {
        &self.state
    }

    /// Stops accepting connections, cuts slow answers short and waits for the server to end.
    pub async fn shutdown(mut self) {
        self.state.close();
        if let Some(mut task) = self.task.take() {
            match tokio::time::timeout(SHUTDOWN_DEADLINE, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::warn!(%error, "sandbox server ended with an error"),
                Ok(Err(error)) => tracing::warn!(%error, "sandbox server task failed"),
                Err(_) => {
                    tracing::warn!("sandbox did not stop within the deadline; aborting it");
                    task.abort();
                }
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.state.close();
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Answers an unknown path in the error format of the provider that owns its prefix.
async fn not_found(uri: Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/2010-04-01") {
        twilio::error(
            StatusCode::NOT_FOUND,
            20404,
            &format!("The requested resource {path} was not found"),
        )
    } else if path.starts_with("/v1/") {
        clerk::error(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "not found",
            "Resource not found",
        )
    } else if path.starts_with("/emails") {
        resend::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "The requested endpoint does not exist.",
        )
    } else {
        control::error(StatusCode::NOT_FOUND, "not_found", "no such route")
    }
}

/// Answers a known path with the wrong method in the error format of its provider.
async fn method_not_allowed(uri: Uri) -> Response {
    let path = uri.path();
    let status = StatusCode::METHOD_NOT_ALLOWED;
    if path.starts_with("/2010-04-01") {
        twilio::error(status, 20004, "Method not allowed")
    } else if path.starts_with("/v1/") {
        clerk::error(
            status,
            "method_not_allowed",
            "method not allowed",
            "This method is not allowed on this resource",
        )
    } else if path.starts_with("/emails") {
        resend::error(
            status,
            "method_not_allowed",
            "Method is not allowed for the requested path.",
        )
    } else {
        (status, "method not allowed").into_response()
    }
}
