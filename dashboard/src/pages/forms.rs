//! The pages' action POSTs: CSRF token from the form, role checked, the same library actions
//! as the API, then back to the page the button was on.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::PageError;
use crate::DashboardState;
use crate::action::{self, BulkRequest, JobAction, Limits, SagaAction};
use crate::api::parse_id;
use crate::auth::{Caller, Via};
use crate::error::ApiError;
use crate::read::jobs::JobFilter;

/// The fields every action form sends, and the optional ones of some.
#[derive(Debug, Deserialize, Default)]
pub struct ActionForm {
    csrf: Option<String>,
    back: Option<String>,
    max_running: Option<String>,
    max_per_second: Option<String>,
}

fn back(form_back: Option<&str>, default: &str) -> Redirect {
    match form_back {
        Some(b) if b.starts_with('/') && !b.starts_with("//") => Redirect::to(b),
        _ => Redirect::to(default),
    }
}

type FormResult = Result<Response, PageError>;

/// `POST /jobs/{id}/{retry|cancel|discard}`.
pub async fn job_action(
    caller: Caller,
    State(state): State<DashboardState>,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> FormResult {
    caller.authorize_action(f.csrf.as_deref())?;
    let id = parse_id(&id)?;
    let action = JobAction::parse(&action).ok_or_else(|| ApiError::not_found("no such action"))?;
    action::job(&state.pool, &caller.identity, id, action).await?;
    Ok(back(f.back.as_deref(), &format!("/jobs/{id}")).into_response())
}

/// `POST /jobs/bulk`: the checked ids, or everything the filter matches (`scope=filter`).
pub async fn jobs_bulk(
    caller: Caller,
    State(state): State<DashboardState>,
    body: axum::body::Bytes,
) -> FormResult {
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(&body);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    caller.authorize_action(get("csrf").as_deref())?;
    let action = get("action")
        .as_deref()
        .and_then(JobAction::parse)
        .ok_or_else(|| ApiError::bad_request("choose retry, cancel or discard"))?;
    let request = if get("scope").as_deref() == Some("filter") {
        BulkRequest {
            action,
            ids: vec![],
            filter: Some(JobFilter {
                state: get("state"),
                queue: get("queue"),
                kind: get("kind"),
                org: get("org"),
                q: get("q"),
            }),
        }
    } else {
        let ids: Vec<i64> = pairs
            .iter()
            .filter(|(n, _)| n == "id")
            .filter_map(|(_, v)| v.parse().ok())
            .collect();
        if ids.is_empty() {
            return Err(ApiError::bad_request("select at least one job").into());
        }
        BulkRequest {
            action,
            ids,
            filter: None,
        }
    };
    action::bulk(&state.pool, &caller.identity, request).await?;
    Ok(back(get("back").as_deref(), "/jobs").into_response())
}

fn serde_urlencoded_pairs(body: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

/// `POST /onboardings/{id}/{restart|retry|cancel|reveal}`.
pub async fn onboarding_action(
    caller: Caller,
    State(state): State<DashboardState>,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> FormResult {
    caller.authorize_action(f.csrf.as_deref())?;
    let id = parse_id(&id)?;
    let here = format!("/onboardings/{id}");
    if action == "reveal" {
        reveal(&state, &caller, &format!("onboarding:{id}")).await;
        return Ok(back(f.back.as_deref(), &here).into_response());
    }
    let action = SagaAction::parse(&action).ok_or_else(|| ApiError::not_found("no such action"))?;
    action::onboarding(&state.pool, &caller.identity, id, action).await?;
    Ok(back(f.back.as_deref(), &here).into_response())
}

async fn reveal(state: &DashboardState, caller: &Caller, target: &str) {
    if let Via::Session { key, .. } = &caller.via {
        state.reveals.grant(key, target);
    }
    crate::audit::record(
        &state.pool,
        &caller.identity.name,
        "reveal",
        target,
        "ok",
        json!({"via": "page"}),
    )
    .await;
}

/// `POST /inbox/{id}/{replay|reveal}`.
pub async fn inbox_action(
    caller: Caller,
    State(state): State<DashboardState>,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> FormResult {
    caller.authorize_action(f.csrf.as_deref())?;
    let id = parse_id(&id)?;
    match action.as_str() {
        "replay" => {
            action::replay(&state.pool, &caller.identity, id).await?;
        }
        "reveal" => reveal(&state, &caller, &format!("inbox:{id}")).await,
        _ => return Err(ApiError::not_found("no such action").into()),
    }
    Ok(back(f.back.as_deref(), "/inbox").into_response())
}

fn optional<T: std::str::FromStr>(raw: Option<&str>) -> Result<Option<T>, ApiError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("`{s}` is not a number"))),
    }
}

/// `POST /queues/{name}/{pause|resume|limits}`.
pub async fn queue_action(
    caller: Caller,
    State(state): State<DashboardState>,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> FormResult {
    caller.authorize_action(f.csrf.as_deref())?;
    match action.as_str() {
        "pause" => action::queue_pause(&state.pool, &caller.identity, &name, true).await?,
        "resume" => action::queue_pause(&state.pool, &caller.identity, &name, false).await?,
        "limits" => {
            let limits = Limits {
                max_running: optional(f.max_running.as_deref())?,
                max_per_second: optional(f.max_per_second.as_deref())?,
            };
            action::queue_limits(&state.pool, &caller.identity, &name, limits).await?
        }
        _ => return Err(ApiError::not_found("no such action").into()),
    };
    Ok(back(f.back.as_deref(), "/queues").into_response())
}
