//! `/api/v1/stats`: the broker's counters, command states, telemetry, device events,
//! alarm evaluation and the webhook backlog; `/api/v1/stats/history`: messages per
//! second and connections a minute apart over the last two hours (`crate::history`).

use http::StatusCode;
use serde::Serialize;

use crate::error::ApiError;
use crate::history::{self, Point, Sample};
use crate::response::{self, ApiResponse};
use crate::AppState;

#[derive(Serialize)]
struct Stats<B, C, T, E, W> {
    #[serde(flatten)]
    broker: B,
    commands: C,
    telemetry: T,
    device_events: E,
    alarms: Alarms,
    webhooks: W,
}

#[derive(Serialize)]
struct Alarms {
    /// Committed telemetry points the alarm evaluator never saw (it was behind).
    dropped_points: u64,
}

#[derive(Serialize)]
struct Webhooks<S> {
    /// Deliveries the outbox still owes (pending or failed).
    backlog: u64,
    #[serde(flatten)]
    counters: S,
}

/// `GET /api/v1/stats`.
pub(crate) async fn get(state: &AppState) -> Result<ApiResponse, ApiError> {
    let broker = &state.broker;
    let body = Stats {
        broker: broker.stats(),
        commands: broker.commands().stats(),
        telemetry: broker.telemetry().stats(),
        device_events: broker.device_events().stats(),
        alarms: Alarms {
            dropped_points: broker.alarms().dropped_points(),
        },
        webhooks: Webhooks {
            backlog: broker.events().backlog().await,
            counters: broker.events().webhook_stats(),
        },
    };
    Ok(response::json(StatusCode::OK, &body))
}

#[derive(Serialize)]
struct History {
    interval_s: u64,
    points: Vec<Point>,
}

/// `GET /api/v1/stats/history`.
pub(crate) fn history(state: &AppState) -> Result<ApiResponse, ApiError> {
    let now = Sample::of(fleetmq_storage::now_ms(), &state.broker.stats());
    let body = History {
        interval_s: history::EVERY.as_secs(),
        points: state.history.report(now),
    };
    Ok(response::json(StatusCode::OK, &body))
}
