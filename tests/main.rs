//! Tests of the `fleetmq` binary, one test binary: every file
//! is a module here, so the suite links once instead of once per file.

#[macro_use]
mod support;

mod admin_tls;
mod backup;
mod cli;
mod cli_admin;
mod cli_alarms;
mod cli_events;
mod cli_fleet;
mod cli_import;
mod cli_jobs;
mod cli_keys;
mod cli_webhooks;
mod kill9;
mod kill9_fleet_ops;
mod kill9_sessions;
mod restart;
mod teltonika;
mod tracker_sim;
