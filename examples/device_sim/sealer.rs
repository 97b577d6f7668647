//! The SPEC §4 envelope with one device's key, over the broker's own codec
//! ([`fleetmq_broker::envelope`]).

use anyhow::{anyhow, Context};
use base64::Engine as _;
use fleetmq_broker::envelope::{self, CryptoError, NonceSource, KEY_LEN};

/// A device's AES-256-GCM key as the admin API hands it out.
#[derive(Clone, Copy)]
pub(crate) struct DeviceKey {
    generation: u8,
    bytes: [u8; KEY_LEN],
}

impl DeviceKey {
    /// The key of `generation` from the admin API's base64.
    pub(crate) fn decode(generation: u8, base64: &str) -> anyhow::Result<DeviceKey> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(base64.trim())
            .context("device key is not base64")?;
        let bytes = <[u8; KEY_LEN]>::try_from(raw.as_slice())
            .map_err(|_| anyhow!("device key has {} bytes, not {KEY_LEN}", raw.len()))?;
        Ok(DeviceKey { generation, bytes })
    }
}

/// Seals and opens envelopes with one device's key.
pub(crate) struct Sealer {
    key: DeviceKey,
    /// One nonce sequence for the device's whole run, reconnects included: its random
    /// prefix keeps it apart from the broker's sources, which seal with the same key.
    nonces: NonceSource,
}

impl Sealer {
    pub(crate) fn new(key: DeviceKey) -> Sealer {
        Sealer {
            key,
            nonces: NonceSource::new(),
        }
    }

    /// The key generation this device seals with and accepts.
    pub(crate) fn generation(&self) -> u8 {
        self.key.generation
    }

    pub(crate) fn seal(&mut self, topic: &str, plaintext: &[u8]) -> Vec<u8> {
        let DeviceKey { generation, bytes } = self.key;
        envelope::seal(&bytes, generation, self.nonces.next(), topic, plaintext)
    }

    /// Only our own key generation opens: the simulator never holds an older key.
    pub(crate) fn open(&self, topic: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let DeviceKey { generation, bytes } = self.key;
        let key_for = |g: u8| (g == generation).then_some(bytes);
        envelope::open(key_for, topic, sealed).map(|opened| opened.plaintext)
    }
}
