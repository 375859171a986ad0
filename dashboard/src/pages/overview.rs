//! The overview: jobs by state and queue, the last hour as charts, the oldest available job,
//! onboardings by state, and alerts.

use axum::extract::State;
use maud::html;

use super::layout::{self, state, time};
use super::{PageResult, chart};
use crate::DashboardState;
use crate::auth::Caller;
use crate::read::{self, onboardings::OnboardingRow};

fn saga_list(rows: &[OnboardingRow]) -> maud::Markup {
    html! {
        ul {
            @for r in rows {
                li { a href={ "/onboardings/" (r.id) } { (r.org_id) } " " (state(&r.state)) " since " (time(&r.created_at)) }
            }
        }
    }
}

/// `GET /`.
pub async fn page(caller: Caller, State(s): State<DashboardState>) -> PageResult {
    let o = read::overview::read(&s.pool, s.settings.stuck_after).await?;
    let mut queues: Vec<&str> = o.live.iter().map(|c| c.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    let live_states = read::jobs::LIVE_STATES;
    let count = |q: &str, st: &str| {
        o.live
            .iter()
            .find(|c| c.queue == q && c.state == st)
            .map_or(0, |c| c.count)
    };
    let completed: Vec<f64> = o.last_hour.iter().map(|m| m.completed as f64).collect();
    let failed: Vec<f64> = o.last_hour.iter().map(|m| m.failed as f64).collect();
    let latency: Vec<f64> = o
        .last_hour
        .iter()
        .map(|m| m.latency_ms.unwrap_or(0.0))
        .collect();
    let stuck_min = s.settings.stuck_after.as_secs() / 60;
    let a = &o.alerts;
    let live = html! {
        @if !(a.compensation_failed.is_empty() && a.completed_with_errors.is_empty() && a.not_terminal.is_empty() && a.past_lease.is_empty()) {
            section.card.alert #alerts {
                h2 { "Alerts" }
                @if !a.compensation_failed.is_empty() { h3 { "compensation_failed" } (saga_list(&a.compensation_failed)) }
                @if !a.completed_with_errors.is_empty() { h3 { "completed_with_errors" } (saga_list(&a.completed_with_errors)) }
                @if !a.not_terminal.is_empty() { h3 { "not terminal after " (stuck_min) " min" } (saga_list(&a.not_terminal)) }
                @if !a.past_lease.is_empty() {
                    h3 { "jobs past their lease" }
                    p { @for id in &a.past_lease { a href={ "/jobs/" (id) } { "#" (id) } " " } }
                }
            }
        } @else {
            p.muted #alerts { "No alerts." }
        }
        h2 { "Last hour" }
        div.cards {
            (chart::bars("Completed per minute", &completed, "#3c9a5f", ""))
            (chart::bars("Failed per minute (discarded, cancelled)", &failed, "#c9483f", ""))
            (chart::bars("Queue latency (run_at → start)", &latency, "#3f6fc9", " ms"))
        }
        div.cards {
            div.card {
                h2 { "Live jobs" }
                @if queues.is_empty() {
                    p.muted { "None: every job has finished." }
                } @else {
                    table {
                        tr { th { "queue" } @for st in live_states { th { (st) @if o.live_capped.iter().any(|c| c == st) { " (≥ " (read::overview::COUNT_CAP) " in all: estimate)" } } } }
                        @for q in &queues {
                            tr { td { a href={ "/jobs?queue=" (q) } { (q) } } @for st in live_states { td { a href={ "/jobs?queue=" (q) "&state=" (st) } { (count(q, st)) } } } }
                        }
                    }
                }
                p { "Oldest available: "
                    @match &o.oldest_available {
                        Some((id, q, age)) => { a href={ "/jobs/" (id) } { "#" (id) } " in " (q) ", waiting " (format!("{age:.0}")) " s" }
                        None => { "none" }
                    }
                }
            }
            div.card {
                h2 { "Finished jobs" }
                table {
                    @for c in &o.finished {
                        tr { td { a href={ "/jobs?state=" (c.state) } { (state(&c.state)) } }
                             td { @if c.at_least { "≥ " (c.count) " (estimate)" } @else { (c.count) } } }
                    }
                }
            }
            div.card {
                h2 { "Onboardings" }
                table {
                    @for c in &o.onboardings {
                        tr { td { a href={ "/onboardings?state=" (c.state) } { (state(&c.state)) } }
                             td { @if c.at_least { "≥ " (c.count) " (estimate)" } @else { (c.count) } } }
                    }
                }
            }
        }
    };
    Ok(layout::page(&caller, "/", "Overview", html! {}, live))
}
