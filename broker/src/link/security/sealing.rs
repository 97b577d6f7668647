//! Per-connection payload encryption state of a device (SPEC §4).

use fleetmq_storage::{now_ms, DeviceRecord};

use crate::link::security::crypto::{self, CryptoError, KeyRing, NonceSource};

/// A device's keys and this connection's nonce sequence.
pub(crate) struct DeviceCrypto {
    keys: KeyRing,
    nonces: NonceSource,
}

/// Why a payload could not be sealed for a device.
#[derive(Debug, thiserror::Error)]
#[error("device has no encryption key")]
pub(crate) struct NoKey;

impl DeviceCrypto {
    pub(crate) fn new(record: &DeviceRecord, grace: std::time::Duration) -> DeviceCrypto {
        DeviceCrypto {
            keys: KeyRing::new(record, grace),
            nonces: NonceSource::new(),
        }
    }

    /// Decrypts a device's envelope; the AAD is the topic.
    pub(crate) fn open(&mut self, topic: &str, envelope: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let now = now_ms();
        let keys = &self.keys;
        crypto::open(|generation| keys.accept(generation, now), topic, envelope)
            .map(|opened| opened.plaintext)
    }

    /// Encrypts a payload for the device with its current key generation.
    pub(crate) fn seal(&mut self, topic: &str, plaintext: &[u8]) -> Result<Vec<u8>, NoKey> {
        let (generation, key) = self.keys.current().ok_or(NoKey)?;
        Ok(crypto::seal(
            &key,
            generation,
            self.nonces.next(),
            topic,
            plaintext,
        ))
    }
}
