//! The audit trail: every operator action and reveal.

use axum::extract::{Query, State};
use maud::html;

use super::PageResult;
use super::layout::{self, state, time};
use crate::DashboardState;
use crate::api::Page;
use crate::auth::Caller;

/// `GET /audit`.
pub async fn page(
    caller: Caller,
    State(s): State<DashboardState>,
    Query(p): Query<Page>,
) -> PageResult {
    let limit = crate::read::limit(p.limit);
    let rows = crate::audit::list(&s.pool, p.before, limit).await?;
    let live = html! {
        table #audit {
            tr { th { "when" } th { "who" } th { "what" } th { "target" } th { "result" } th { "detail" } }
            @for r in &rows {
                tr { td { (time(&r.at)) } td { (r.operator) } td { (r.action) } td { (r.target) } td { (state(&r.result)) }
                     td { code { (r.detail.0.to_string()) } } }
            }
        }
        @if rows.len() as i64 == limit { @if let Some(last) = rows.last() { p { a href={ "/audit?before=" (last.id) } { "Older →" } } } }
    };
    Ok(layout::page(&caller, "/audit", "Audit", html! {}, live))
}
