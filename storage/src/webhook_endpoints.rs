//! The `webhook_endpoints` table: webhook endpoints created through the admin API
//! (SPEC §8), endpoint id → versioned [`WebhookEndpoint`]. Endpoints from the config
//! file are not stored; they are the config's.
//!
//! The secret is stored as given: the broker signs every delivery with it, so it cannot
//! be a one-way hash. The file is as sensitive as the config file that holds the
//! config-file endpoints' secrets.

use redb::ReadableTable as _;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, Location};
use crate::error::StoreError;
use crate::schema::{WEBHOOK_ENDPOINTS, WEBHOOK_ENDPOINTS_TABLE as TABLE};
use crate::store::Store;

const KIND: &str = "webhook";

/// A webhook endpoint created at runtime.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Server-generated, stable.
    pub id: String,
    /// `http://` or `https://` URL to POST to.
    pub url: String,
    /// HMAC-SHA256 key for `X-Fleetmq-Signature`; never shown by the API.
    pub secret: String,
    /// Event type patterns (`device.online`, `command.*`, `*`); `None`: every type.
    pub events: Option<Vec<String>>,
    /// Whether events are queued for it and sent.
    pub enabled: bool,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("enabled", &self.enabled)
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

/// An endpoint as stored. A new format is a new variant, never an edit to `V1`.
#[derive(Serialize, Deserialize)]
enum StoredEndpoint {
    V1(EndpointV1),
}

#[derive(Serialize, Deserialize)]
struct EndpointV1 {
    url: String,
    secret: String,
    events: Option<Vec<String>>,
    enabled: bool,
    created_at_ms: u64,
}

fn at(key: &str) -> Location<'_> {
    Location { table: TABLE, key }
}

pub(crate) fn encode_endpoint(e: &WebhookEndpoint) -> Result<Vec<u8>, StoreError> {
    let stored = StoredEndpoint::V1(EndpointV1 {
        url: e.url.clone(),
        secret: e.secret.clone(),
        events: e.events.clone(),
        enabled: e.enabled,
        created_at_ms: e.created_at_ms,
    });
    encode(at(&e.id), &stored)
}

pub(crate) fn decode_endpoint(id: &str, bytes: &[u8]) -> Result<WebhookEndpoint, StoreError> {
    match decode(at(id), bytes)? {
        StoredEndpoint::V1(v) => Ok(WebhookEndpoint {
            id: id.to_owned(),
            url: v.url,
            secret: v.secret,
            events: v.events,
            enabled: v.enabled,
            created_at_ms: v.created_at_ms,
        }),
    }
}

impl Store {
    /// Stores a new endpoint. [`StoreError::Conflict`] if its id is taken,
    /// [`StoreError::Invalid`] if it is empty. URLs are checked by the caller, which
    /// also knows the config file's endpoints.
    pub fn create_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<(), StoreError> {
        if e.id.is_empty() {
            return Err(StoreError::Invalid("a webhook id must not be empty".into()));
        }
        self.write(|txn| {
            let mut table = txn.open_table(WEBHOOK_ENDPOINTS)?;
            if table.get(e.id.as_str())?.is_some() {
                return Err(StoreError::Conflict {
                    kind: KIND,
                    key: e.id.clone(),
                });
            }
            table.insert(e.id.as_str(), encode_endpoint(e)?.as_slice())?;
            Ok(())
        })
    }

    /// Replaces an existing endpoint. [`StoreError::NotFound`] if absent.
    pub fn update_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(WEBHOOK_ENDPOINTS)?;
            if table.get(e.id.as_str())?.is_none() {
                return Err(StoreError::NotFound {
                    kind: KIND,
                    key: e.id.clone(),
                });
            }
            table.insert(e.id.as_str(), encode_endpoint(e)?.as_slice())?;
            Ok(())
        })
    }

    /// The endpoint with this id, if any.
    pub fn get_webhook_endpoint(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError> {
        self.read(|txn| match txn.open_table(WEBHOOK_ENDPOINTS)?.get(id)? {
            Some(v) => Ok(Some(decode_endpoint(id, v.value())?)),
            None => Ok(None),
        })
    }

    /// Every stored endpoint, by id. An undecodable one is an error: it would otherwise
    /// silently stop receiving events.
    pub fn list_webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(WEBHOOK_ENDPOINTS)?.iter()? {
                let (k, v) = entry?;
                out.push(decode_endpoint(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// Removes an endpoint and returns it. [`StoreError::NotFound`] if absent.
    pub fn delete_webhook_endpoint(&self, id: &str) -> Result<WebhookEndpoint, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(WEBHOOK_ENDPOINTS)?;
            let removed = match table.remove(id)? {
                Some(v) => decode_endpoint(id, v.value()),
                None => Err(StoreError::NotFound {
                    kind: KIND,
                    key: id.to_owned(),
                }),
            };
            removed
        })
    }
}

#[cfg(test)]
mod tests;
