//! `GET /api/v1/audit`: the audit log of state-changing requests, newest first.

use fleetmq_storage::AuditEntry;
use http::StatusCode;
use serde::Serialize;

use crate::error::ApiError;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::time::rfc3339_ms;
use crate::AppState;

#[derive(Serialize)]
struct EntryView<'a> {
    at: String,
    key: &'a str,
    method: &'a str,
    route: &'a str,
    target: Option<&'a str>,
    status: u16,
}

#[derive(Serialize)]
struct AuditList<'a> {
    items: Vec<EntryView<'a>>,
    next_cursor: Option<String>,
}

fn view(e: &AuditEntry) -> EntryView<'_> {
    EntryView {
        at: rfc3339_ms(e.at_ms),
        key: &e.key,
        method: &e.method,
        route: &e.route,
        target: e.target.as_deref(),
        status: e.status,
    }
}

/// `GET /api/v1/audit?limit=&cursor=`.
pub(crate) async fn list(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let page = Query::parse(query, &["limit", "cursor"])?.page()?;
    let before = match page.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!("cursor {c:?}: not a cursor of this list"))
        })?),
    };
    let limit = page.limit;
    let found = state
        .store
        .call(move |s| s.list_audit(before, limit))
        .await?;
    let items = found.entries.iter().map(|(_, e)| view(e)).collect();
    let next_cursor = found.next.map(|seq| seq.to_string());
    Ok(response::json(
        StatusCode::OK,
        &AuditList { items, next_cursor },
    ))
}
