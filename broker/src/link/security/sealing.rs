//! Per-connection payload encryption state of a device (SPEC §4).

use std::sync::{Arc, Mutex, PoisonError};

use fleetmq_storage::{now_ms, DeviceRecord};

use crate::link::security::crypto::{self, CryptoError, KeyRing, NonceSource};
use crate::link::security::replay::{broker_nonce, DeviceReplay, ReplayRegistry};
use crate::link::settings::BrokerConfig;

/// A device's keys, this connection's 0x01 nonce sequence, and the device's replay
/// state (shared with its other connections).
pub(crate) struct DeviceCrypto {
    keys: KeyRing,
    nonces: NonceSource,
    replay: Arc<Mutex<DeviceReplay>>,
    /// `security.require_replay_protection`: 0x01 refused, everything sealed as 0x02.
    require_v2: bool,
}

/// Why a payload could not be sealed for a device.
#[derive(Debug, thiserror::Error)]
#[error("device has no encryption key")]
pub(crate) struct NoKey;

impl DeviceCrypto {
    pub(crate) fn new(
        record: &DeviceRecord,
        config: &BrokerConfig,
        registry: &ReplayRegistry,
    ) -> DeviceCrypto {
        DeviceCrypto {
            keys: KeyRing::new(record, config.key_grace),
            nonces: NonceSource::new(),
            replay: registry.device(&record.id),
            require_v2: config.require_replay_protection,
        }
    }

    /// Decrypts a device's envelope; the AAD is the topic. A 0x02 envelope must pass
    /// the device's replay window, checked and moved only once it authenticated (and
    /// under the device's lock, so two connections of one device cannot both take it).
    pub(crate) fn open(&mut self, topic: &str, envelope: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let now = now_ms();
        let keys = &self.keys;
        let opened = crypto::open(|generation| keys.accept(generation, now), topic, envelope)?;
        let mut replay = self.replay.lock().unwrap_or_else(PoisonError::into_inner);
        match opened.counted() {
            Some(nonce) => {
                // The key just opened the envelope, so it is there.
                let key = keys
                    .accept(opened.generation, now)
                    .ok_or(CryptoError::UnknownGeneration(opened.generation))?;
                replay.accept(&key, nonce).map_err(CryptoError::Replayed)?;
            }
            None if self.require_v2 => return Err(CryptoError::ReplayProtectionRequired),
            None => replay.saw_v1(),
        }
        Ok(opened.plaintext)
    }

    /// Decrypts the will payload of a CONNECT. Authenticity and the version policy
    /// apply, the replay window does not: MQTT clients (rumqttc, paho) fix the will when
    /// the client is built and send the very same bytes in every CONNECT, so a device
    /// could never reconnect if its will were a replay the second time. What this
    /// leaves open: whoever holds the device's token can connect with a will captured
    /// earlier, which is published only when that connection ends abnormally.
    pub(crate) fn open_will(&self, topic: &str, envelope: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let now = now_ms();
        let keys = &self.keys;
        let opened = crypto::open(|generation| keys.accept(generation, now), topic, envelope)?;
        if opened.counted().is_none() && self.require_v2 {
            return Err(CryptoError::ReplayProtectionRequired);
        }
        Ok(opened.plaintext)
    }

    /// Encrypts a payload for the device with its current key generation: as 0x02 when
    /// replay protection is required or the device's latest envelope was 0x02 (it reads
    /// them), else as 0x01 (what every device reads).
    pub(crate) fn seal(&mut self, topic: &str, plaintext: &[u8]) -> Result<Vec<u8>, NoKey> {
        let (generation, key) = self.keys.current().ok_or(NoKey)?;
        let v2 = self.require_v2
            || self
                .replay
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .uses_v2();
        Ok(if v2 {
            crypto::seal_v2(&key, generation, broker_nonce(), topic, plaintext)
        } else {
            crypto::seal(&key, generation, self.nonces.next(), topic, plaintext)
        })
    }
}
