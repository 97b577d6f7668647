//! fleetmq's embedded store: one redb file holding devices, service clients,
//! retained messages, sessions, commands, telemetry, the webhook outbox, the admin
//! key hash and the device token key.
//!
//! # Layering
//!
//! Modules import only from the layers below their own (and from their own
//! submodules), so the `use crate::...` imports form no circle:
//!
//! 1. Leaves, importing no other module of this crate:
//!    - [`error`]: [`StoreError`] and [`OpenError`].
//!    - [`ids`]: [`DeviceId`], validated once against SPEC §2.
//!    - [`secret`]: salted slow hashes ([`CredentialHash`]), device tokens and their
//!      keyed hashes ([`DeviceCredential`] under a [`TokenKey`]), AES keys.
//!    - [`metrics`]: latency histograms and the redb commit latency every write records.
//! 2. Definitions, on the leaves:
//!    - [`model`]: the plain records the rest of the program works with (ids, secret).
//!    - `schema`: every redb table definition, creating the tables, the schema version
//!      and the migrations between versions (error).
//! 3. Encoding and the handle:
//!    - `codec`: versioned on-disk encodings of the model records (postcard), kept
//!      separate from the API structs so a serde change for JSON never changes the
//!      file format (error, ids, model, secret).
//!    - `token_key`: the install's device token key in `meta`, created by the first
//!      open (codec, error, metrics, schema, secret).
//!    - [`store`]: [`Store`], opening the database through `schema` and `token_key` and
//!      running calls off the async threads, with the transaction helpers the table
//!      modules use (error, metrics, schema, secret, token_key).
//! 4. One module per concern, each on the layers below and never on each other, except
//!    `devices` on `service_clients` (device ids and service client names are one
//!    namespace):
//!    - `devices`, `service_clients`, `retained`, `meta` (the admin key hash),
//!      `api_keys` (named admin API keys and revoking the built-in one), `audit` (the
//!      admin API's audit log),
//!      `device_state` (presence details and reported status), `device_config`
//!      (versioned configuration), `webhook_endpoints` (webhook endpoints created
//!      through the API), `jobs` (SPEC §12 jobs and their progress) and `sessions`
//!      (persistent MQTT sessions and their
//!      queued QoS 1/2 messages) add their methods to [`Store`] (`impl Store` in each
//!      file; `store` does not know them).
//!    - `backup` ([`Store::backup_to`], a consistent copy of every table into a new
//!      file, and [`check_file`], redb's integrity check) adds its method to [`Store`]
//!      like the modules above (schema, store).
//!    - [`alarms`] (alarm rules, alarms and the evaluator's state, SPEC §11) adds its
//!      methods to [`Store`] like the modules above.
//!    - [`commands`] (durable commands, SPEC §5), [`telemetry`], [`device_events`]
//!      (what devices publish on `device/{id}/events`, SPEC §7) and [`outbox`] (the
//!      webhook outbox, SPEC §7) are free functions over a `redb::Database` with their
//!      own transactions and record formats; they do not use [`Store`].
//! 5. This file re-exports the public types, so other crates import
//!    `fleetmq_storage::{Store, DeviceRecord, ...}` without knowing the layout.
//!
//! Test-only modules sit above all of these: `test_support` (fixtures) and
//! `upgrade_tests` (opening files of other schema versions). So does `fuzz` (feature
//! `fuzzing`, not an API): the record codecs for the fuzz targets in `fuzz/`.
//!
//! Every write is one redb write transaction committed durably (or explicitly not);
//! every read of stored bytes goes through a decoder that reports
//! [`StoreError::Corrupt`] instead of panicking.

pub mod alarms;
mod api_keys;
mod audit;
mod backup;
mod codec;
pub mod commands;
mod device_config;
pub mod device_events;
mod device_state;
mod devices;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod ids;
pub mod jobs;
mod meta;
pub mod metrics;
pub mod model;
pub mod outbox;
mod quiet_panic;
mod retained;
mod schema;
pub mod secret;
mod service_clients;
mod sessions;
mod stats_history;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod test_support;
mod token_key;
#[cfg(test)]
mod upgrade_tests;
mod webhook_endpoints;

pub use api_keys::{valid_api_key_name, DeleteKeyError, MAX_API_KEY_NAME_LEN};
pub use audit::{AuditPage, AuditRetention};
pub use backup::{check_file, BackupSummary, Integrity};
pub use device_config::{ConfigVersion, KEPT_CONFIG_VERSIONS};
pub use device_state::DeviceState;
pub use devices::KEPT_KEY_GENERATIONS;
pub use error::{OpenError, StoreError};
pub use ids::{DeviceId, InvalidDeviceId, MAX_DEVICE_ID_LEN};
pub use model::{
    AclAction, AclRule, ApiKeyRecord, ApiRole, AuditEntry, CredentialUpgrade, DeviceKey,
    DeviceRecord, MessageProperties, NewDevice, RetainedMessage, ServiceClientRecord,
    DEFAULT_PLUGIN,
};
pub use secret::{
    generate_key, generate_token, CredentialHash, DeviceCredential, TokenHash, TokenKey,
    DEFAULT_ITERATIONS,
};
pub use sessions::{
    QueueOp, QueuedMessage, SessionRecord, SessionSubscription, MAX_SUBSCRIPTION_ID,
};
pub use stats_history::StatsSample;
pub use store::{now_ms, Store, DB_FILE_NAME};
pub use webhook_endpoints::WebhookEndpoint;
