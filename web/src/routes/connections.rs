//! `/api/v1/connections/refused`: the recent refused MQTT connection attempts, newest
//! first, each with who the client said it was and why it was refused (never its
//! secret). Repeats of one address, client id and cause are one item with a count.

use fleetmq_broker::{RefusalCause, RefusedConnect, Transport};
use http::StatusCode;
use serde::Serialize;

use crate::error::ApiError;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::time::rfc3339_ms;
use crate::AppState;

#[derive(Serialize)]
struct Refused {
    /// The last attempt.
    at: String,
    /// The first attempt this item counts.
    first_at: String,
    peer: String,
    client_id: Option<String>,
    username: Option<String>,
    protocol: Option<&'static str>,
    transport: Transport,
    cause: RefusalCause,
    count: u64,
}

impl From<RefusedConnect> for Refused {
    fn from(r: RefusedConnect) -> Refused {
        Refused {
            at: rfc3339_ms(r.at_ms),
            first_at: rfc3339_ms(r.first_at_ms),
            peer: r.peer.to_string(),
            client_id: r.client_id,
            username: r.username,
            protocol: r.protocol,
            transport: r.transport,
            cause: r.cause,
            count: r.count,
        }
    }
}

#[derive(Serialize)]
struct RefusedList {
    items: Vec<Refused>,
    next_cursor: Option<String>,
    /// Attempts not kept because new items came faster than the list takes them.
    suppressed: u64,
}

/// `GET /api/v1/connections/refused?identity=&limit=&cursor=`; `identity` keeps the
/// attempts whose client id or username it is (a device's page asks with its id).
pub(crate) fn refused(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let query = Query::parse(query, &["limit", "cursor", "identity"])?;
    let page = query.page()?;
    let before = match page.cursor.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!("cursor: {text:?} is not a cursor of this list"))
        })?),
    };
    let identity = query.one("identity")?;
    let found = state
        .broker
        .refused_connections(identity, before, page.limit);
    let body = RefusedList {
        items: found.items.into_iter().map(Refused::from).collect(),
        next_cursor: found.next_cursor.map(|c| c.to_string()),
        suppressed: found.suppressed,
    };
    Ok(response::json(StatusCode::OK, &body))
}
