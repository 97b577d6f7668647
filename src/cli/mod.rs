//! The admin commands of the `fleetmq` binary: a client of the admin HTTP API.
//!
//! Modules:
//! - `client`: where the API is and which key to use ([`ConnArgs`]), one HTTP exchange.
//! - `error`: `CliError` and the exit codes (0 ok, 1 API error, 2 usage, 3 cannot
//!   connect / unauthorized, 4 `command send --wait` did not complete).
//! - `output`: `--json` (the API's JSON as it came) or tables and `key: value` lines.
//! - `devices`, `commands`, `device_config`, `clients`, `events`, `keys` (`key` and
//!   `audit`), `webhooks`, `jobs`: one per command group; `device_import` is `device import`,
//!   the bulk provisioning from a CSV or JSON file; `alarms` is `alarm` (SPEC §11);
//!   `backup` downloads a consistent copy of the data (`POST /api/v1/backup`);
//!   `telemetry`, `service_clients` (`service-client`), `publish` and `stats` are one
//!   route each; `subscribe` is an MQTT client, not an API client (the API has no
//!   stream of messages).

mod alarms;
mod backup;
mod client;
mod clients;
mod commands;
mod device_config;
mod device_import;
mod devices;
mod error;
mod events;
mod jobs;
mod keys;
mod output;
mod publish;
mod service_clients;
mod stats;
mod subscribe;
mod subscribe_api;
mod telemetry;
mod webhooks;

use std::process::ExitCode;

use clap::Subcommand;

use client::Admin;
pub use client::ConnArgs;
use error::{exit, CliError};

/// The admin commands, flattened into `fleetmq`'s own subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Provision and manage devices (admin API client)
    Device {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        action: devices::DeviceAction,
    },
    /// Send, show, list and cancel device commands (admin API client)
    Command {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        action: commands::CommandAction,
    },
    /// Set or show a device's configuration (admin API client)
    Config {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        action: device_config::ConfigAction,
    },
    /// List connected MQTT clients, show one with its subscriptions and counters, or kick one (admin API client)
    Clients {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        action: Option<clients::ClientsAction>,
    },
    /// Follow the live event stream, one line per event (admin API client)
    Events {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        args: events::EventsArgs,
    },
    /// Send one command to many devices, paced: create, list, show, cancel jobs (admin API client)
    Job {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        action: jobs::JobAction,
    },
    /// Create, list and revoke named admin API keys (admin API client)
    Key {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        action: keys::KeyAction,
    },
    /// Show the audit log of state-changing admin API requests, newest first (admin API client)
    Audit {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        args: keys::AuditArgs,
    },
    /// List and acknowledge alarms, list alarm rules (admin API client)
    Alarm {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        action: alarms::AlarmAction,
    },
    /// Manage webhook endpoints and their deliveries (admin API client)
    #[command(visible_alias = "webhooks")]
    Webhook {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        action: webhooks::WebhookAction,
    },
    /// A device's stored telemetry, newest first, or its latest values (admin API client)
    Telemetry {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        args: telemetry::TelemetryArgs,
    },
    /// Add, update, list, show and delete service clients: MQTT users with ACL rules (admin API client, admin key)
    #[command(visible_alias = "service-clients")]
    ServiceClient {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        action: service_clients::ServiceClientAction,
    },
    /// Publish one message as the broker (admin API client)
    Publish {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        args: publish::PublishArgs,
    },
    /// Print the messages of topic filters, one line each (an MQTT client with a service client's credentials, or `--api`: the admin API with an operator key)
    Subscribe(subscribe::SubscribeArgs),
    /// The broker's counters: connections, messages, commands, telemetry, webhooks (admin API client)
    Stats {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        args: stats::StatsArgs,
    },
    /// Copy the running broker's data to a file, consistently (admin API client, admin key)
    Backup {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        args: backup::BackupArgs,
    },
}

/// Runs an admin command on a runtime of its own; returns the process exit code.
pub fn run(command: AdminCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::API);
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => err.report(),
    }
}

/// Connects with the variant's flags and runs `module::function(&admin, json, arg)`.
macro_rules! api {
    ($conn:ident, $($call:ident)::+ ($($arg:ident)?)) => {{
        let admin = Admin::connect(&$conn).await?;
        $($call)::+(&admin, $conn.json $(, $arg)?).await
    }};
}

async fn dispatch(command: AdminCommand) -> Result<u8, CliError> {
    use AdminCommand as C;
    match command {
        C::Device { conn, action } => return api!(conn, devices::run(action)),
        C::Command { conn, action } => return api!(conn, commands::run(action)),
        C::Config { conn, action } => api!(conn, device_config::run(action))?,
        C::Clients { conn, action } => api!(conn, clients::run(action))?,
        C::Events { conn, args } => api!(conn, events::run(args))?,
        C::Job { conn, action } => api!(conn, jobs::run(action))?,
        C::Key { conn, action } => api!(conn, keys::run(action))?,
        C::Audit { conn, args } => api!(conn, keys::audit(args))?,
        C::Alarm { conn, action } => api!(conn, alarms::run(action))?,
        C::Webhook { conn, action } => api!(conn, webhooks::run(action))?,
        C::Backup { conn, args } => api!(conn, backup::run(args))?,
        C::Telemetry { conn, args } => api!(conn, telemetry::run(args))?,
        C::ServiceClient { conn, action } => api!(conn, service_clients::run(action))?,
        C::Publish { conn, args } => api!(conn, publish::run(args))?,
        C::Stats { conn, args } => api!(conn, stats::run(args))?,
        C::Subscribe(args) => subscribe::run(args).await?,
    }
    Ok(exit::OK)
}
