//! The server-rendered pages (maud): each page's `#live` part is re-fetched by the refresh
//! script, so filters (in the URL) and scroll survive. Actions are form POSTs with the
//! session's CSRF token; buttons an operator may not use are not shown.

pub mod audit;
pub mod chart;
pub mod forms;
pub mod inbox;
pub mod jobs;
pub mod layout;
pub mod onboardings;
pub mod overview;
pub mod queues;
pub mod workers;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::html;

use crate::DashboardState;
use crate::error::ApiError;

/// Every page and every page action.
pub fn router() -> Router<DashboardState> {
    Router::new()
        .route("/", get(overview::page))
        .route("/jobs", get(jobs::list))
        .route("/jobs/bulk", post(forms::jobs_bulk))
        .route("/jobs/{id}", get(jobs::detail))
        .route("/jobs/{id}/{action}", post(forms::job_action))
        .route("/queues", get(queues::page))
        .route("/queues/{name}/{action}", post(forms::queue_action))
        .route("/onboardings", get(onboardings::list))
        .route("/onboardings/{id}", get(onboardings::detail))
        .route("/onboardings/{id}/{action}", post(forms::onboarding_action))
        .route("/inbox", get(inbox::page))
        .route("/inbox/{id}/{action}", post(forms::inbox_action))
        .route("/workers", get(workers::page))
        .route("/audit", get(audit::page))
}

/// An error as a page (with the API's code, for tests and humans).
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        PageError(error)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        PageError(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = e.status;
        let body = layout::bare(
            "Error",
            html! {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.error data-code=(e.code) { (e.code) ": " @if status.is_server_error() { "try again later" } @else { (e.message) } }
                p { a href="javascript:history.back()" { "Back" } " · " a href="/" { "Overview" } }
            },
        );
        (
            if status == StatusCode::OK {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                status
            },
            body,
        )
            .into_response()
    }
}

/// Result of a page handler.
pub type PageResult = Result<maud::Markup, PageError>;
