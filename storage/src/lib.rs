//! fleetmq's embedded store: one redb file holding devices, service clients,
//! retained messages and the admin key hash.
//!
//! Modules:
//! - [`ids`]: [`DeviceId`], validated once against SPEC §2.
//! - [`secret`]: salted slow hashes ([`CredentialHash`]), tokens and AES keys.
//! - [`model`]: the plain records the rest of the program works with.
//! - `codec`: versioned on-disk encodings of those records (postcard), kept
//!   separate from the API structs so a serde change for JSON never changes
//!   the file format.
//! - `devices`, `service_clients`, `retained`, `meta`, `device_state` (presence details
//!   and reported status), `device_config` (versioned configuration): one redb table each,
//!   with the [`Store`] methods that read and write it.
//! - `sessions`: persistent MQTT sessions and their queued QoS 1/2 messages.
//! - [`commands`]: durable commands (SPEC §5), their state machine and indexes.
//! - [`store`]: opening the database and running calls off the async threads.
//! - [`metrics`]: latency histograms and the redb commit latency every write records.
//! - [`error`]: [`StoreError`] and [`OpenError`].
//!
//! Every write is one redb write transaction committed durably; every read of
//! stored bytes goes through a decoder that reports [`StoreError::Corrupt`]
//! instead of panicking.

mod codec;
pub mod commands;
mod device_config;
mod device_state;
mod devices;
pub mod error;
pub mod ids;
mod meta;
pub mod metrics;
pub mod model;
pub mod outbox;
mod retained;
mod schema;
pub mod secret;
mod service_clients;
mod sessions;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod upgrade_tests;

pub use device_config::{ConfigVersion, KEPT_CONFIG_VERSIONS};
pub use device_state::DeviceState;
pub use devices::KEPT_KEY_GENERATIONS;
pub use error::{OpenError, StoreError};
pub use ids::{DeviceId, InvalidDeviceId, MAX_DEVICE_ID_LEN};
pub use model::{
    AclAction, AclRule, DeviceKey, DeviceRecord, MessageProperties, NewDevice, RetainedMessage,
    ServiceClientRecord, DEFAULT_PLUGIN,
};
pub use secret::{generate_key, generate_token, CredentialHash, DEFAULT_ITERATIONS};
pub use sessions::{
    QueueOp, QueuedMessage, SessionRecord, SessionSubscription, MAX_SUBSCRIPTION_ID,
};
pub use store::{now_ms, Store, DB_FILE_NAME};
