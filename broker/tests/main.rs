//! The broker crate's integration tests, one test binary: every file
//! is a module here, so the suite links once instead of once per file.

#[macro_use]
mod common;

mod acl;
mod alarms;
mod auth;
mod auth_tokens;
mod client_detail;
mod command_batches;
mod commands;
mod config;
mod conformance_connect;
mod conformance_keepalive;
mod conformance_publish;
mod conformance_retained;
mod conformance_session;
mod conformance_subscribe;
mod conformance_sys;
mod conformance_topic_alias;
mod conformance_v5;
mod conformance_will;
mod device_events;
mod device_path;
mod encryption;
mod jobs;
mod parking_window;
mod presence;
mod refusals;
mod robustness;
mod session_properties;
mod slow_consumer;
mod subscribe_window;
mod taps;
mod telemetry;
mod teltonika;
mod tls;
mod webhook_endpoints;
mod webhooks;
