//! What a CLI command fails with, and the exit code each failure maps to.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the admin API refused the request (4xx other than 401, 5xx) or answered nonsense |
//! | 2 | usage: bad flags or arguments, unreadable `@file`, bad config file |
//! | 3 | cannot reach the admin API, or it refused the API key (401), or no key was found; `subscribe`: cannot reach the MQTT broker or it refused the connection |
//! | 4 | `command send --wait`: the command ended other than `completed`, or was still pending when the wait ran out |

use std::process::ExitCode;

/// Exit codes of the admin commands (see the module docs).
pub mod exit {
    pub const OK: u8 = 0;
    pub const API: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const NOT_COMPLETED: u8 = 4;
}

/// Why an admin command failed. The `Display` text is what the user sees after `error: `.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The command line cannot be used as given (clap catches the rest).
    #[error("{0}")]
    Usage(String),
    /// The config file or environment that names the admin address is invalid.
    #[error("{0:#}")]
    Config(anyhow::Error),
    /// No TCP connection, a timeout, or a broken HTTP exchange.
    #[error("cannot reach the admin API at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The MQTT broker refused `fleetmq subscribe`'s connection (CONNACK code).
    #[error("{0}")]
    MqttRefused(String),
    /// The API answered 401: names the URL and where the key came from, since a key
    /// read from the wrong directory's `admin.key` is the usual cause.
    #[error("{message} (401 unauthorized) from {url}; the key came from {key_from}")]
    Unauthorized {
        message: String,
        url: String,
        key_from: String,
    },
    /// No key was given and none could be read from the data directory.
    #[error("no admin API key: give --api-key or FLEETMQ_API_KEY, or run where {path} is readable ({reason})")]
    NoKey { path: String, reason: String },
    /// The API refused the request with its own error body.
    #[error("{message} ({status} {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The API answered 403: the key's role does not allow the request.
    #[error("{message} (403 {code}) from {url}; the key came from {key_from}")]
    Forbidden {
        code: String,
        message: String,
        url: String,
        key_from: String,
    },
    /// The API answered something that is not what the contract says.
    #[error("unexpected answer from the admin API: {0}")]
    Protocol(String),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config(_) => exit::USAGE,
            Self::Connect { .. }
            | Self::Unauthorized { .. }
            | Self::NoKey { .. }
            | Self::MqttRefused(_) => exit::UNREACHABLE,
            Self::Api { .. } | Self::Forbidden { .. } | Self::Protocol(_) => exit::API,
        }
    }

    /// Prints the error to stderr and returns its exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {self}");
        ExitCode::from(self.exit_code())
    }
}
