//! The JSON admin API under `/api/`: the pages' reads and actions. Same auth as the pages
//! (session or Bearer token); a viewer acting gets `403`, an action the state does not allow
//! `409` with a stable code.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::DashboardState;
use crate::action::{self, BulkRequest, JobAction, Limits, SagaAction};
use crate::auth::{CSRF_HEADER, Caller};
use crate::error::ApiError;
use crate::mask;
use crate::read::{self, inbox::InboxFilter, jobs::JobFilter, onboardings::OnboardingFilter};

type ApiResult = Result<Json<Value>, ApiError>;

/// The `/api/` routes.
pub fn router() -> Router<DashboardState> {
    Router::new()
        .route("/api/me", get(me))
        .route("/api/overview", get(overview))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/bulk", post(jobs_bulk))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/{action}", post(job_action))
        .route("/api/onboardings", get(onboardings))
        .route("/api/onboardings/{id}", get(onboarding))
        .route("/api/onboardings/{id}/{action}", post(onboarding_action))
        .route("/api/queues", get(queues))
        .route("/api/queues/{name}/{action}", post(queue_action))
        .route("/api/inbox", get(inbox))
        .route("/api/inbox/{id}/replay", post(inbox_replay))
        .route("/api/rejected", get(rejected))
        .route("/api/workers", get(workers))
        .route("/api/audit", get(audit))
}

fn csrf(headers: &HeaderMap) -> Option<&str> {
    headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok())
}

/// An integer id from the path, or `400`.
pub fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("`{raw}` is not an integer id")))
}

/// Paging of a list: ids below `before`, `limit` rows.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Page {
    /// Keyset: ids below this.
    pub before: Option<i64>,
    /// Rows (default 50, at most 200).
    pub limit: Option<i64>,
}

fn page_of<T: serde::Serialize>(rows: Vec<T>, next: Option<i64>) -> Json<Value> {
    Json(json!({"items": rows, "next_before": next}))
}

async fn me(caller: Caller) -> Json<Value> {
    Json(json!({"name": caller.identity.name, "role": caller.identity.role, "csrf": caller.csrf()}))
}

async fn overview(_: Caller, State(state): State<DashboardState>) -> ApiResult {
    let overview = read::overview::read(&state.pool, state.settings.stuck_after).await?;
    Ok(Json(serde_json::to_value(overview).unwrap_or_default()))
}

async fn jobs(
    _: Caller,
    State(state): State<DashboardState>,
    Query(filter): Query<JobFilter>,
    Query(page): Query<Page>,
) -> ApiResult {
    let rows = read::jobs::list(&state.pool, &filter.normalized(), page.before, page.limit).await?;
    let next = (rows.len() as i64 == read::limit(page.limit))
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|mut r| {
            r.args.0 = mask::json(&r.args.0, false);
            serde_json::to_value(r).unwrap_or_default()
        })
        .collect();
    Ok(page_of(rows, next))
}

async fn job(_: Caller, State(state): State<DashboardState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let mut job = read::jobs::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    job.job.args.0 = mask::json(&job.job.args.0, false);
    Ok(Json(serde_json::to_value(job).unwrap_or_default()))
}

async fn job_action(
    caller: Caller,
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult {
    caller.authorize_action(csrf(&headers))?;
    let id = parse_id(&id)?;
    let action = JobAction::parse(&action)
        .ok_or_else(|| ApiError::not_found(format!("no job action `{action}`")))?;
    Ok(Json(
        action::job(&state.pool, &caller.identity, id, action).await?,
    ))
}

async fn jobs_bulk(
    caller: Caller,
    State(state): State<DashboardState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    caller.authorize_action(csrf(&headers))?;
    let request: BulkRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(
        action::bulk(&state.pool, &caller.identity, request).await?,
    ))
}

async fn onboardings(
    _: Caller,
    State(state): State<DashboardState>,
    Query(filter): Query<OnboardingFilter>,
    Query(page): Query<Page>,
) -> ApiResult {
    let rows =
        read::onboardings::list(&state.pool, &filter.normalized(), page.before, page.limit).await?;
    let next = (rows.len() as i64 == read::limit(page.limit))
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(page_of(rows, next))
}

#[derive(Debug, Deserialize)]
struct RevealQuery {
    #[serde(default)]
    reveal: bool,
}

async fn onboarding(
    caller: Caller,
    State(state): State<DashboardState>,
    Path(id): Path<String>,
    Query(q): Query<RevealQuery>,
) -> ApiResult {
    let id = parse_id(&id)?;
    if q.reveal && !caller.can_act() {
        return Err(ApiError::forbidden());
    }
    let mut detail = read::onboardings::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no onboarding {id}")))?;
    if q.reveal {
        crate::audit::record(
            &state.pool,
            &caller.identity.name,
            "reveal",
            &format!("onboarding:{id}"),
            "ok",
            json!({"via": "api"}),
        )
        .await;
    }
    detail.request = mask::json(&detail.request, q.reveal);
    for step in &mut detail.steps {
        step.output.0 = mask::json(&step.output.0, q.reveal);
        step.last_error = step.last_error.as_deref().map(|e| mask::text(e, q.reveal));
    }
    Ok(Json(serde_json::to_value(detail).unwrap_or_default()))
}

async fn onboarding_action(
    caller: Caller,
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult {
    caller.authorize_action(csrf(&headers))?;
    let id = parse_id(&id)?;
    let action = SagaAction::parse(&action)
        .ok_or_else(|| ApiError::not_found(format!("no onboarding action `{action}`")))?;
    Ok(Json(
        action::onboarding(&state.pool, &caller.identity, id, action).await?,
    ))
}

async fn queues(_: Caller, State(state): State<DashboardState>) -> ApiResult {
    Ok(Json(
        json!({"items": read::queues::list(&state.pool).await?}),
    ))
}

async fn queue_action(
    caller: Caller,
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    caller.authorize_action(csrf(&headers))?;
    match action.as_str() {
        "pause" => Ok(Json(
            action::queue_pause(&state.pool, &caller.identity, &name, true).await?,
        )),
        "resume" => Ok(Json(
            action::queue_pause(&state.pool, &caller.identity, &name, false).await?,
        )),
        "limits" => {
            let limits: Limits =
                serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
            Ok(Json(
                action::queue_limits(&state.pool, &caller.identity, &name, limits).await?,
            ))
        }
        other => Err(ApiError::not_found(format!("no queue action `{other}`"))),
    }
}

async fn inbox(
    _: Caller,
    State(state): State<DashboardState>,
    Query(filter): Query<InboxFilter>,
    Query(page): Query<Page>,
) -> ApiResult {
    let rows =
        read::inbox::list(&state.pool, &filter.normalized(), page.before, page.limit).await?;
    let next = (rows.len() as i64 == read::limit(page.limit))
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|mut r| {
            r.payload.0 = mask::json(&r.payload.0, false);
            serde_json::to_value(r).unwrap_or_default()
        })
        .collect();
    Ok(page_of(rows, next))
}

async fn inbox_replay(
    caller: Caller,
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    caller.authorize_action(csrf(&headers))?;
    let id = parse_id(&id)?;
    Ok(Json(
        action::replay(&state.pool, &caller.identity, id).await?,
    ))
}

async fn rejected(
    _: Caller,
    State(state): State<DashboardState>,
    Query(page): Query<Page>,
) -> ApiResult {
    let rows = read::inbox::rejected(&state.pool, page.before, page.limit).await?;
    let next = (rows.len() as i64 == read::limit(page.limit))
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|mut r| {
            r.body = mask::text(&r.body, false);
            serde_json::to_value(r).unwrap_or_default()
        })
        .collect();
    Ok(page_of(rows, next))
}

async fn workers(_: Caller, State(state): State<DashboardState>) -> ApiResult {
    Ok(Json(
        json!({"items": read::workers::list(&state.pool).await?}),
    ))
}

async fn audit(
    _: Caller,
    State(state): State<DashboardState>,
    Query(page): Query<Page>,
) -> ApiResult {
    let rows = crate::audit::list(&state.pool, page.before, read::limit(page.limit)).await?;
    let next = (rows.len() as i64 == read::limit(page.limit))
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(page_of(rows, next))
}
