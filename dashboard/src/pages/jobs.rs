//! Jobs: filters, search by org id and args text, keyset pagination, bulk actions; and one job
//! with its args, every attempt's error, its actions and its saga.

use axum::extract::{Path, Query, State};
use maud::{Markup, html};

use super::layout::{self, action, state, time, time_opt};
use super::{PageError, PageResult};
use crate::DashboardState;
use crate::api::{Page, parse_id};
use crate::auth::{Caller, urlencode};
use crate::error::ApiError;
use crate::read::{self, jobs::JobFilter};

const STATES: [&str; 7] = [
    "available",
    "scheduled",
    "running",
    "retryable",
    "completed",
    "cancelled",
    "discarded",
];

fn filter_query(f: &JobFilter) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("state", &f.state),
        ("queue", &f.queue),
        ("kind", &f.kind),
        ("org", &f.org),
        ("q", &f.q),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={}", urlencode(v)));
        }
    }
    parts.join("&")
}

fn filters(f: &JobFilter) -> Markup {
    html! {
        form.filters method="get" action="/jobs" {
            label { "state" select name="state" {
                option value="" { "any" }
                @for s in STATES { option value=(s) selected[f.state.as_deref() == Some(s)] { (s) } }
            } }
            label { "queue" input name="queue" value=[f.queue.as_deref()] size="12"; }
            label { "kind" input name="kind" value=[f.kind.as_deref()] size="22"; }
            label { "org id" input name="org" value=[f.org.as_deref()] size="18" placeholder="org_…"; }
            label { "args text (live jobs)" input name="q" value=[f.q.as_deref()] size="18"; }
            button type="submit" { "Filter" }
            a href="/jobs" { "clear" }
        }
    }
}

/// `GET /jobs`.
pub async fn list(
    caller: Caller,
    State(s): State<DashboardState>,
    Query(f): Query<JobFilter>,
    Query(p): Query<Page>,
) -> PageResult {
    let f = f.normalized();
    let limit = read::limit(p.limit);
    let rows = read::jobs::list(&s.pool, &f, p.before, Some(limit)).await?;
    let query = filter_query(&f);
    let here = if query.is_empty() {
        "/jobs".to_owned()
    } else {
        format!("/jobs?{query}")
    };
    let bulk = html! {
        @if caller.can_act() {
            form #bulk.filters method="post" action="/jobs/bulk" {
                input type="hidden" name="csrf" value=(caller.csrf());
                input type="hidden" name="back" value=(here);
                @for (k, v) in [("state", &f.state), ("queue", &f.queue), ("kind", &f.kind), ("org", &f.org), ("q", &f.q)] {
                    @if let Some(v) = v { input type="hidden" name=(k) value=(v); }
                }
                label { "bulk action" select name="action" { option value="retry" { "retry" } option value="cancel" { "cancel" } option value="discard" { "discard" } } }
                label { "on" select name="scope" { option value="ids" { "the checked jobs" } option value="filter" { "everything this filter matches (≤ 1000)" } } }
                button type="submit" { "Apply" }
            }
        }
    };
    let live = html! {
        table #jobs {
            tr { th { "" } th { "id" } th { "kind" } th { "queue" } th { "state" } th { "attempt" } th { "run at" } th { "finished" } }
            @for j in &rows {
                tr {
                    td { @if caller.can_act() { input type="checkbox" form="bulk" name="id" value=(j.id); } }
                    td { a href={ "/jobs/" (j.id) } { (j.id) } }
                    td { (j.kind) } td { (j.queue) } td { (state(&j.state)) }
                    td { (j.attempt) "/" (j.max_attempts) } td { (time(&j.run_at)) } td { (time_opt(j.finalized_at.as_ref())) }
                }
            }
        }
        @if rows.is_empty() { p.muted { "No job matches." } }
        @if rows.len() as i64 == limit {
            @if let Some(last) = rows.last() {
                p { a #older href={ "/jobs?" (query) @if !query.is_empty() { "&" } "before=" (last.id) } { "Older →" } }
            }
        }
    };
    Ok(layout::page(
        &caller,
        "/jobs",
        "Jobs",
        html! { (filters(&f)) (bulk) },
        live,
    ))
}

/// `GET /jobs/{id}`.
pub async fn detail(
    caller: Caller,
    State(s): State<DashboardState>,
    Path(id): Path<String>,
) -> PageResult {
    let id = parse_id(&id)?;
    let job = read::jobs::get(&s.pool, id)
        .await?
        .ok_or_else(|| PageError(ApiError::not_found(format!("no job {id}"))))?;
    let j = &job.job;
    let here = format!("/jobs/{id}");
    // Only the buttons the action would accept are shown (the API refuses the others too).
    let allowed = read::jobs::allowed(&s.pool, j).await?;
    let live = html! {
        div.cards {
            div.card {
                p { "state " span #job-state { (state(&j.state)) } @if job.cancel_requested && j.state == "running" { " (cancel requested)" } }
                p { "kind " code { (j.kind) } " on queue " code { (j.queue) } }
                p { "attempt " (j.attempt) " of " (j.max_attempts) }
                p { "enqueued " (time(&j.created_at)) ", runs at " (time(&j.run_at)) }
                @match job.attempted_at.as_ref() {
                    Some(started) => p { "last attempt started " (time(started)) },
                    None => p { "not attempted yet" },
                }
                @if let Some(finished) = j.finalized_at.as_ref() { p { "finished " (time(finished)) } }
                @if let Some(owner) = &job.lease_owner { p { "held by " code { (owner) } " until " (time_opt(job.lease_expires_at.as_ref())) } }
                @if let Some(key) = &job.unique_key { p { "unique key " code { (key) } } }
                @if let Some(saga) = job.onboarding_id { p { "step of " a #saga-link href={ "/onboardings/" (saga) } { "onboarding " (saga) } } }
                @if caller.can_act() {
                    p #actions {
                        @if allowed.retry { (action(&caller, &format!("/jobs/{id}/retry"), "retry", &here, false)) " " }
                        @if allowed.cancel { (action(&caller, &format!("/jobs/{id}/cancel"), "cancel", &here, true)) " " }
                        @if allowed.discard { (action(&caller, &format!("/jobs/{id}/discard"), "discard", &here, true)) }
                        @if let Some(saga) = &allowed.saga { span.muted { " (onboarding " (saga.0) " is " (saga.1) ")" } }
                    }
                }
            }
            div.card { h2 { "args" } pre { (serde_json::to_string_pretty(&crate::mask::json(&j.args.0, false)).unwrap_or_default()) } }
        }
        h2 { "Attempts" }
        table #attempts {
            tr { th { "attempt" } th { "started" } th { "ended" } th { "duration" } th { "worker" } th { "outcome" } th { "error" } }
            @for a in &job.attempts {
                tr {
                    td { (a.attempt) } td { (time_opt(a.started_at.as_ref())) } td { (time_opt(a.ended_at.as_ref())) }
                    td.duration { (duration(a.duration_ms)) } td { code { (a.worker.as_deref().unwrap_or("")) } }
                    td { (state(&a.outcome)) } td.error { (crate::mask::text(a.error.as_deref().unwrap_or(""), false)) }
                }
            }
        }
        @if job.attempts.is_empty() { p.muted { "Not attempted yet." } }
    };
    Ok(layout::page(
        &caller,
        "/jobs",
        &format!("Job {id}"),
        html! {},
        live,
    ))
}

/// A duration in milliseconds as an operator reads it.
fn duration(ms: Option<i64>) -> String {
    match ms {
        None => String::new(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}
