//! Onboardings: the list by state with search, and one saga's step timeline, attempts and
//! errors, compensations, the Clerk metadata sync and the actions its state allows.

use axum::extract::{Path, Query, State};
use maud::html;

use super::layout::{self, action, state, time, time_opt};
use super::{PageError, PageResult};
use crate::DashboardState;
use crate::api::{Page, parse_id};
use crate::auth::{Caller, Via, urlencode};
use crate::error::ApiError;
use crate::mask;
use crate::read::{self, onboardings::OnboardingFilter};

const STATES: [&str; 6] = [
    "running",
    "completed",
    "completed_with_errors",
    "compensating",
    "compensated",
    "compensation_failed",
];

/// `GET /onboardings`.
pub async fn list(
    caller: Caller,
    State(s): State<DashboardState>,
    Query(f): Query<OnboardingFilter>,
    Query(p): Query<Page>,
) -> PageResult {
    let f = f.normalized();
    let limit = read::limit(p.limit);
    let rows = read::onboardings::list(&s.pool, &f, p.before, Some(limit)).await?;
    let mut query = String::new();
    if let Some(st) = &f.state {
        query.push_str(&format!("state={}&", urlencode(st)));
    }
    if let Some(q) = &f.q {
        query.push_str(&format!("q={}&", urlencode(q)));
    }
    let fixed = html! {
        form.filters method="get" action="/onboardings" {
            label { "state" select name="state" {
                option value="" { "any" }
                @for st in STATES { option value=(st) selected[f.state.as_deref() == Some(st)] { (st) } }
            } }
            label { "org id, name or slug" input name="q" value=[f.q.as_deref()] size="24"; }
            button type="submit" { "Search" }
            a href="/onboardings" { "clear" }
        }
    };
    let live = html! {
        table #onboardings {
            tr { th { "id" } th { "org" } th { "name" } th { "slug" } th { "state" } th { "source" } th { "started" } th { "updated" } }
            @for r in &rows {
                tr {
                    td { a href={ "/onboardings/" (r.id) } { (r.id) } }
                    td { a href={ "/onboardings/" (r.id) } { (r.org_id) } }
                    td { (r.name.as_deref().unwrap_or("")) } td { (r.slug.as_deref().unwrap_or("")) }
                    td { (state(&r.state)) } td { (r.source) } td { (time(&r.created_at)) } td { (time(&r.updated_at)) }
                }
            }
        }
        @if rows.is_empty() { p.muted { "No onboarding matches." } }
        @if rows.len() as i64 == limit {
            @if let Some(last) = rows.last() { p { a href={ "/onboardings?" (query) "before=" (last.id) } { "Older →" } } }
        }
    };
    Ok(layout::page(
        &caller,
        "/onboardings",
        "Onboardings",
        fixed,
        live,
    ))
}

/// `GET /onboardings/{id}`.
pub async fn detail(
    caller: Caller,
    State(s): State<DashboardState>,
    Path(id): Path<String>,
) -> PageResult {
    let id = parse_id(&id)?;
    let d = read::onboardings::get(&s.pool, id)
        .await?
        .ok_or_else(|| PageError(ApiError::not_found(format!("no onboarding {id}"))))?;
    let revealed = match &caller.via {
        Via::Session { key, .. } => {
            caller.can_act() && s.reveals.granted(key, &format!("onboarding:{id}"))
        }
        Via::Bearer => false,
    };
    let here = format!("/onboardings/{id}");
    let steps_jobs = |prefix: &str| {
        d.jobs
            .iter()
            .filter(|j| j.job.kind.starts_with(prefix))
            .collect::<Vec<_>>()
    };
    let compensations = steps_jobs("onboarding.undo_");
    let syncs: Vec<_> = d
        .jobs
        .iter()
        .filter(|j| j.job.kind == onboarding::saga::SYNC_METADATA_KIND)
        .collect();
    let live = html! {
        div.cards {
            div.card {
                p { "organization " code #org-id { (d.row.org_id) } " — " (d.row.name.as_deref().unwrap_or("")) " (" (d.row.slug.as_deref().unwrap_or("")) ")" }
                p { "state " span #saga-state data-state=(d.row.state) { (state(&d.row.state)) } }
                p { "source " (d.row.source) ", started " (time(&d.row.created_at)) ", updated " (time(&d.row.updated_at)) }
                @if caller.can_act() {
                    p #actions {
                        @if d.allowed.restart { (action(&caller, &format!("{here}/restart"), "restart", &here, false)) " " }
                        @if d.allowed.retry { (action(&caller, &format!("{here}/retry"), "retry", &here, false)) " " }
                        @if d.allowed.cancel { (action(&caller, &format!("{here}/cancel"), "cancel", &here, true)) }
                    }
                }
                p { a href={ "/jobs?org=" (urlencode(&d.row.org_id)) } { "all jobs of this org" } }
            }
            div.card {
                h2 { "request" @if revealed { " (revealed)" } }
                pre #request { (serde_json::to_string_pretty(&mask::json(&d.request, revealed)).unwrap_or_default()) }
                @if caller.can_act() && !revealed { (action(&caller, &format!("{here}/reveal"), "reveal", &here, false)) span.muted { " (audited)" } }
            }
        }
        h2 { "Steps" }
        table #steps {
            tr { th { "#" } th { "step" } th { "state" } th { "attempts" } th { "last error" } th { "output" } th { "updated" } }
            @for st in &d.steps {
                tr data-step=(st.name) {
                    td { (st.position) } td { (st.name) } td { (state(&st.state)) } td { (st.attempts) }
                    td.error { (mask::text(st.last_error.as_deref().unwrap_or(""), revealed)) }
                    td { @if st.output.0.as_object().is_some_and(|o| !o.is_empty()) { code { (mask::json(&st.output.0, revealed).to_string()) } } }
                    td { (time(&st.updated_at)) }
                }
            }
        }
        h2 { "Jobs (every attempt)" }
        table #saga-jobs {
            tr { th { "job" } th { "kind" } th { "state" } th { "attempt" } th { "finished" } th { "errors" } }
            @for j in &d.jobs {
                tr {
                    td { a href={ "/jobs/" (j.job.id) } { (j.job.id) } } td { (j.job.kind) } td { (state(&j.job.state)) }
                    td { (j.job.attempt) "/" (j.job.max_attempts) } td { (time_opt(j.job.finalized_at.as_ref())) }
                    td { @for e in &j.errors {
                        div.error { "#" (e.0["attempt"]) " " (e.0["at"].as_str().unwrap_or("")) ": " (mask::text(e.0["message"].as_str().unwrap_or(""), revealed)) }
                    } }
                }
            }
        }
        h2 { "Compensations" }
        @if compensations.is_empty() { p.muted { "None." } }
        @else { ul { @for j in &compensations { li { a href={ "/jobs/" (j.job.id) } { (j.job.kind) } " " (state(&j.job.state)) } } } }
        h2 { "Clerk metadata sync" }
        @if syncs.is_empty() { p.muted { "Not yet (the saga is not terminal)." } }
        @else { ul #syncs { @for j in &syncs { li { a href={ "/jobs/" (j.job.id) } { (j.job.args.0["state"].as_str().unwrap_or("")) } " " (state(&j.job.state)) " " (time_opt(j.job.finalized_at.as_ref())) } } } }
    };
    Ok(layout::page(
        &caller,
        "/onboardings",
        &format!("Onboarding {id}"),
        html! {},
        live,
    ))
}
