//! The SPEC §4 envelope with one device's key, over the broker's own codec
//! ([`fleetmq_broker::envelope`]): the simulator seals version 0x02 (replay-protected)
//! and opens both versions, as the broker may answer in either.

use anyhow::{anyhow, Context};
use base64::Engine as _;
use std::time::{SystemTime, UNIX_EPOCH};

use fleetmq_broker::envelope::{self, CountedNonce, CryptoError, DEVICE_COUNTER_MAX, KEY_LEN};

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
    /// The next 0x02 counter, for the device's whole run, reconnects included. The
    /// simulator persists nothing, so instead of a stored boot counter as the epoch it
    /// keeps the epoch at 0 and starts the counter at the Unix time in nanoseconds: it
    /// still grows from one run to the next (unless the clock steps back), which is all
    /// the broker's replay window asks. The counter's top bit stays clear (the device's
    /// direction), so it never meets the broker's nonces under the same key.
    counter: u64,
}

impl Sealer {
    pub(crate) fn new(key: DeviceKey) -> Sealer {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        Sealer {
            key,
            counter: now_ns & DEVICE_COUNTER_MAX,
        }
    }

    /// The key generation this device seals with and accepts.
    pub(crate) fn generation(&self) -> u8 {
        self.key.generation
    }

    pub(crate) fn seal(&mut self, topic: &str, plaintext: &[u8]) -> Vec<u8> {
        let DeviceKey { generation, bytes } = self.key;
        let nonce = CountedNonce {
            epoch: 0,
            counter: self.counter,
        };
        // Past the device's counter space (~292 years of nanoseconds) a device would
        // take a new epoch; the simulator never gets there.
        self.counter = (self.counter + 1) & DEVICE_COUNTER_MAX;
        envelope::seal_v2(&bytes, generation, nonce, topic, plaintext)
    }

    /// Only our own key generation opens (the simulator never holds an older key), in
    /// either envelope version.
    pub(crate) fn open(&self, topic: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let DeviceKey { generation, bytes } = self.key;
        let key_for = |g: u8| (g == generation).then_some(bytes);
        envelope::open(key_for, topic, sealed).map(|opened| opened.plaintext)
    }
}
