//! One module per resource of the admin API.

pub(crate) mod alarms;
pub(crate) mod audit;
pub(crate) mod backup;
pub(crate) mod clients;
pub(crate) mod commands;
pub(crate) mod config;
pub(crate) mod connections;
pub(crate) mod device_events;
pub(crate) mod devices;
pub(crate) mod devices_bulk;
pub(crate) mod events;
pub(crate) mod jobs;
pub(crate) mod keys;
pub(crate) mod metrics;
pub(crate) mod openapi;
pub(crate) mod publish;
pub(crate) mod retained;
pub(crate) mod service_clients;
pub(crate) mod stats;
pub(crate) mod subscribe;
pub(crate) mod telemetry;
pub(crate) mod webhooks;
