//! What the broker publishes on its own behalf (`POST /api/v1/publish`, device config)
//! and what the admin API does with retained messages, and why either can fail.

use bytes::Bytes;
use fleetmq_storage::StoreError;

/// A message the broker publishes on its own behalf (`POST /api/v1/publish`).
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

/// Why the broker refused to publish a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    #[error("invalid qos {0}: must be 0, 1 or 2")]
    InvalidQos(u8),
    #[error("payload of {size} bytes exceeds mqtt.max_payload ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("broker is shutting down")]
    ShuttingDown,
    #[error("storage error: {0}")]
    Storage(#[source] StoreError),
}

/// Why a retained message could not be listed or deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetainedError {
    #[error("invalid topic: {0:?}")]
    InvalidTopic(String),
    #[error("storage error: {0}")]
    Storage(#[source] StoreError),
}
