//! The webhook inbox: deliveries by type and status with their raw payload (PII masked),
//! replay of a delivery's job, and rejected deliveries with the reason.

use axum::extract::{Query, State};
use maud::html;

use super::PageResult;
use super::layout::{self, action, state, time};
use crate::DashboardState;
use crate::api::Page;
use crate::auth::{Caller, Via, urlencode};
use crate::mask;
use crate::read::{self, inbox::InboxFilter};

/// `GET /inbox`.
pub async fn page(
    caller: Caller,
    State(s): State<DashboardState>,
    Query(f): Query<InboxFilter>,
    Query(p): Query<Page>,
) -> PageResult {
    let f = f.normalized();
    let limit = read::limit(p.limit);
    let rows = read::inbox::list(&s.pool, &f, p.before, Some(limit)).await?;
    let rejected = read::inbox::rejected(&s.pool, None, Some(20)).await?;
    let revealed = |id: i64| match &caller.via {
        Via::Session { key, .. } => {
            caller.can_act() && s.reveals.granted(key, &format!("inbox:{id}"))
        }
        Via::Bearer => false,
    };
    let mut query = String::new();
    if let Some(t) = &f.event_type {
        query.push_str(&format!("type={}&", urlencode(t)));
    }
    if let Some(st) = &f.status {
        query.push_str(&format!("status={}&", urlencode(st)));
    }
    let here = format!("/inbox?{query}");
    let fixed = html! {
        form.filters method="get" action="/inbox" {
            label { "event type" input name="type" value=[f.event_type.as_deref()] size="28" placeholder="organization.created"; }
            label { "status" select name="status" {
                option value="" { "any" }
                option value="acted" selected[f.status.as_deref() == Some("acted")] { "acted on (has a job)" }
                option value="ignored" selected[f.status.as_deref() == Some("ignored")] { "ignored" }
            } }
            button type="submit" { "Filter" }
            a href="/inbox" { "clear" }
        }
    };
    let live = html! {
        table #inbox {
            tr { th { "id" } th { "received" } th { "type" } th { "svix id" } th { "status" } th { "duplicates" } th { "payload" } th { "" } }
            @for r in &rows {
                @let shown = revealed(r.id);
                tr {
                    td { (r.id) } td { (time(&r.received_at)) } td { (r.event_type) } td { code { (r.svix_id) } }
                    td {
                        @if r.ignored { (state("ignored")) }
                        @else if let (Some(job), Some(st)) = (r.job_id, &r.job_state) { a href={ "/jobs/" (job) } { "job " (job) } " " (state(st)) }
                    }
                    td.duplicates { (r.duplicates) }
                    td { details id={ "payload-" (r.id) } { summary { "raw" @if shown { " (revealed)" } }
                        pre { (serde_json::to_string_pretty(&mask::json(&r.payload.0, shown)).unwrap_or_default()) } } }
                    td {
                        @if caller.can_act() {
                            @if r.job_id.is_some() { (action(&caller, &format!("/inbox/{}/replay", r.id), "replay", &here, false)) " " }
                            @if !shown { (action(&caller, &format!("/inbox/{}/reveal", r.id), "reveal", &here, false)) }
                        }
                    }
                }
            }
        }
        @if rows.len() as i64 == limit {
            @if let Some(last) = rows.last() { p { a href={ "/inbox?" (query) "before=" (last.id) } { "Older →" } } }
        }
        h2 { "Rejected deliveries" }
        table #rejected {
            tr { th { "svix id" } th { "reason" } th { "deliveries" } th { "first" } th { "last" } th { "body (masked)" } }
            @for r in &rejected {
                tr { td { code { (r.svix_id) } } td.error { (r.reason) } td { (r.attempts) } td { (time(&r.first_seen_at)) } td { (time(&r.last_seen_at)) }
                     td { details id={ "rejected-" (r.id) } { summary { "body" } pre { (mask::text(&r.body, false)) } } } }
            }
        }
        @if rejected.is_empty() { p.muted { "None." } }
    };
    Ok(layout::page(
        &caller,
        "/inbox",
        "Webhook inbox",
        fixed,
        live,
    ))
}
