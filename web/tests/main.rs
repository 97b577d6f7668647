//! The admin API's integration tests, one test binary: every file
//! is a module here, so the suite links once instead of once per file.

mod admin_key;
mod alarms;
mod api;
mod backup;
mod clients;
mod dashboard;
mod device_events;
mod devices_bulk;
mod jobs;
mod keys;
mod refusals;
mod retained;
mod stats_history;
mod subscribe;
mod tokens;
mod webhooks;
