//! Queues: depth, oldest job age, rate, caps, paused; pause/resume and caps editing.

use axum::extract::State;
use maud::html;

use super::PageResult;
use super::layout::{self, action};
use crate::DashboardState;
use crate::auth::Caller;
use crate::read;

/// `GET /queues`.
pub async fn page(caller: Caller, State(s): State<DashboardState>) -> PageResult {
    let queues = read::queues::list(&s.pool).await?;
    let live = html! {
        table #queues {
            tr { th { "queue" } th { "runnable now" } th { "waiting" } th { "running" } th { "oldest runnable" } th { "completed/min" }
                 th { "max running" } th { "max per second" } th { "paused" } th { "" } }
            @for q in &queues {
                tr data-queue=(q.name) {
                    td { a href={ "/jobs?queue=" (q.name) } { (q.name) } }
                    td { (q.available) @if q.capped { "+" } } td { (q.waiting) @if q.capped { "+" } } td { (q.running) }
                    td { @if let Some(age) = q.oldest_age_s { (format!("{age:.0} s")) } }
                    td { (q.completed_last_minute) }
                    td { (q.max_running.map(|n| n.to_string()).unwrap_or_else(|| "—".into())) }
                    td { (q.max_per_second.map(|n| n.to_string()).unwrap_or_else(|| "—".into())) }
                    td { @if q.paused { span.state.s-failed { "paused" } } @else { "no" } }
                    td {
                        @if caller.can_act() {
                            @if q.paused { (action(&caller, &format!("/queues/{}/resume", q.name), "resume", "/queues", false)) }
                            @else { (action(&caller, &format!("/queues/{}/pause", q.name), "pause", "/queues", true)) }
                            " "
                            form.inline method="post" action={ "/queues/" (q.name) "/limits" } {
                                input type="hidden" name="csrf" value=(caller.csrf());
                                input type="hidden" name="back" value="/queues";
                                input name="max_running" size="4" placeholder="running" value=[q.max_running];
                                input name="max_per_second" size="4" placeholder="per s" value=[q.max_per_second];
                                button type="submit" data-action="limits" { "set caps" }
                            }
                        }
                    }
                }
            }
        }
        @if queues.iter().any(|q| q.capped) { p.muted { "n+: at least n (counts stop at " (read::overview::COUNT_CAP) " per state)." } }
        p.muted { "Caps set here survive worker restarts: built-in defaults apply only to a queue whose caps no operator has set." }
    };
    Ok(layout::page(&caller, "/queues", "Queues", html! {}, live))
}
