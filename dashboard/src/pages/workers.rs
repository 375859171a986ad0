//! Workers: heartbeats and jobs in flight; dead ones flagged.

use axum::extract::State;
use maud::html;

use super::PageResult;
use super::layout::{self, time};
use crate::DashboardState;
use crate::auth::Caller;
use crate::read;

/// `GET /workers`.
pub async fn page(caller: Caller, State(s): State<DashboardState>) -> PageResult {
    let workers = read::workers::list(&s.pool).await?;
    let live = html! {
        table {
            tr { th { "id" } th { "host" } th { "pid" } th { "queue" } th { "started" } th { "last heartbeat" } th { "in flight" } th { "" } }
            @for w in &workers {
                tr {
                    td { code { (w.id) } } td { (w.hostname) } td { (w.pid) } td { (w.queue) }
                    td { (time(&w.started_at)) } td { (time(&w.heartbeat_at)) } td { (w.in_flight) }
                    td { @if w.dead { span.state.s-failed { "dead" } } @else { span.state.s-ok { "alive" } } }
                }
            }
        }
        @if workers.is_empty() { p.muted { "No worker has started." } }
    };
    Ok(layout::page(&caller, "/workers", "Workers", html! {}, live))
}
