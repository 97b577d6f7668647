//! `/api/v1/clients`: the MQTT clients connected right now, one with its subscriptions
//! and counters, and kicking one.

use fleetmq_broker::ClientInfo;
use http::StatusCode;
use serde::Serialize;

use crate::error::ApiError;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::AppState;

#[derive(Serialize)]
struct ClientList<'a> {
    items: &'a [ClientInfo],
    next_cursor: Option<&'a str>,
}

/// `GET /api/v1/clients`, in client id order.
pub(crate) fn list(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let page = Query::parse(query, &["limit", "cursor"])?.page()?;
    let mut clients = state.broker.clients();
    clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let start = match &page.cursor {
        Some(cursor) => clients.partition_point(|c| c.client_id.as_str() <= cursor.as_str()),
        None => 0,
    };
    let end = clients.len().min(start + page.limit);
    let items = &clients[start..end];
    let next_cursor = (end < clients.len())
        .then(|| items.last().map(|c| c.client_id.as_str()))
        .flatten();
    Ok(response::json(
        StatusCode::OK,
        &ClientList { items, next_cursor },
    ))
}

/// `GET /api/v1/clients/{client_id}`: the client with its subscriptions and counters.
pub(crate) async fn get(state: &AppState, client_id: &str) -> Result<ApiResponse, ApiError> {
    match state.broker.client(client_id).await {
        Some(detail) => Ok(response::json(StatusCode::OK, &detail)),
        None => Err(ApiError::NotFound(format!(
            "no client {client_id:?} is connected"
        ))),
    }
}

/// `DELETE /api/v1/clients/{client_id}`: closes that client's connection.
pub(crate) fn kick(state: &AppState, client_id: &str) -> Result<ApiResponse, ApiError> {
    if state.broker.kick(client_id) {
        tracing::info!(%client_id, "client disconnected through the admin api");
        Ok(response::no_content())
    } else {
        Err(ApiError::NotFound(format!(
            "no client {client_id:?} is connected"
        )))
    }
}
