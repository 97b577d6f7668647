//! fleetmq's admin HTTP API (SPEC §8) on hyper 1.
//!
//! Modules:
//! - `server`: [`serve`], the accept loop and graceful drain, and [`AppState`].
//! - `router`: `ROUTES`, the one table of path patterns and methods, and
//!   dispatch from it; the API key is checked first for `/api/v1/*`.
//! - `dashboard`: the web dashboard at `GET /`, files compiled in from `web/assets/`.
//! - `routes`: one module per resource (`devices` and `devices_bulk`, `commands`,
//!   `config`, `telemetry`, `webhooks`, `service_clients`, `clients`, `publish`,
//!   `stats`, `keys`, `audit`, `backup`), plus `events`
//!   (`GET /api/v1/events`, server-sent events with resume), `metrics` (`GET /metrics`)
//!   and `openapi` (`GET /api/v1/openapi.json`, the hand-kept `openapi.json`).
//! - `history`: the per-minute samples behind `GET /api/v1/stats/history`, a bounded
//!   ring kept in the store too, and the task that takes them.
//! - `prometheus`: the Prometheus text exposition format.
//! - `auth`: [`ensure_admin_key`] and [`AdminKey`], the built-in key, which checks
//!   presented keys without a slow hash per request.
//! - `access`: who a request is (the built-in key or a named key, `routes::keys`) and
//!   the role rule the router applies from its table.
//! - `audit`: the audit log's bounded queue and batch writer task.
//! - `config`: the `[admin]` section, [`RawAdminConfig`] → [`AdminConfig`].
//! - `error`: `ApiError`, the one funnel from failure to HTTP answer, and [`WebError`].
//! - `json`: reading request bodies under the size limit.
//! - `response`: the body and response types, JSON answers; a leaf under `error` and
//!   `json`.
//! - `query`: query strings, path segments and paging parameters.
//! - `time`: RFC 3339 timestamps.
//! - `tls`: `admin.tls`, the admin listener's certificate and key (rustls).
//!
//! Every store call and every password hash runs on the blocking pool through
//! [`fleetmq_storage::Store::call`]; a failed request never changes state (all
//! validation happens before the one store write a request makes).

mod access;
mod audit;
mod auth;
mod config;
mod dashboard;
mod error;
mod history;
mod json;
mod prometheus;
mod query;
mod response;
mod router;
mod routes;
mod server;
mod time;
mod tls;

pub use auth::{
    ensure_admin_key, AdminKey, Verdict, ADMIN_KEY_FILE, CONFIGURED_KEY_NAME, GENERATED_KEY_NAME,
    MAX_SLOW_VERIFIES, SLOW_VERIFY_WAIT,
};
pub use config::{
    AdminConfig, AdminTls, ConfigError, RawAdminConfig, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_BULK_BODY_BYTES, DEFAULT_SSE_KEEPALIVE, MIN_API_KEY_LEN,
};
pub use dashboard::{Asset, ASSETS};
pub use error::WebError;
pub use server::{serve, AppState, DRAIN_DEADLINE};
