//! Which key generations of a device are accepted (SPEC §4 key rotation): the current
//! one always, a superseded one for `security.key_grace_s` after it was superseded.

use std::fmt;
use std::time::Duration;

use fleetmq_storage::{DeviceKey, DeviceRecord};

use super::crypto::KEY_LEN;
/// The key generations of one device and how long a superseded one stays accepted
/// (SPEC §4: generation n is still accepted for a grace period after n+1 is created).
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<DeviceKey>,
    grace_ms: u64,
}

impl KeyRing {
    /// The key ring of a stored device, with `grace` for superseded generations.
    pub fn new(record: &DeviceRecord, grace: Duration) -> Self {
        Self::from_keys(&record.keys, grace)
    }

    /// A key ring over `keys` (as stored: ascending generation, the current one has no
    /// `superseded_at_ms`) with `grace` for superseded generations.
    pub fn from_keys(keys: &[DeviceKey], grace: Duration) -> Self {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        Self {
            keys: keys.to_vec(),
            grace_ms,
        }
    }

    /// The generation and key to encrypt with: the newest key not yet superseded.
    pub fn current(&self) -> Option<(u8, [u8; KEY_LEN])> {
        self.current_key().map(|k| (k.generation, k.key))
    }

    /// The key for `generation` if a device may still use it at `now_ms`: the current
    /// generation always, a superseded one only while `now_ms < superseded_at + grace`.
    pub fn accept(&self, generation: u8, now_ms: u64) -> Option<[u8; KEY_LEN]> {
        if let Some(current) = self.current_key().filter(|k| k.generation == generation) {
            return Some(current.key);
        }
        self.keys
            .iter()
            .filter(|k| k.generation == generation)
            .find(|k| {
                k.superseded_at_ms
                    .is_some_and(|at| now_ms < at.saturating_add(self.grace_ms))
            })
            .map(|k| k.key)
    }

    fn current_key(&self) -> Option<&DeviceKey> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.superseded_at_ms.is_none())
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let generations: Vec<u8> = self.keys.iter().map(|k| k.generation).collect();
        f.debug_struct("KeyRing")
            .field("generations", &generations)
            .field("grace_ms", &self.grace_ms)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::security::crypto::{open, seal, CryptoError, NonceSource};

    const TOPIC: &str = "device/d1/telemetry";
    const NONCE: [u8; 12] = [9; 12];
    const HOUR_MS: u64 = 3_600_000;
    fn key(generation: u8, byte: u8, superseded_at_ms: Option<u64>) -> DeviceKey {
        DeviceKey {
            generation,
            key: [byte; 32],
            created_at_ms: 0,
            superseded_at_ms,
        }
    }

    fn rotated_ring() -> KeyRing {
        let keys = [key(1, 0x11, Some(10 * HOUR_MS)), key(2, 0x22, None)];
        KeyRing::from_keys(&keys, Duration::from_secs(24 * 3600))
    }

    #[test]
    fn key_ring_current_and_grace() {
        let ring = rotated_ring();
        assert_eq!(ring.current(), Some((2, [0x22; 32])));
        let inside = 34 * HOUR_MS - 1;
        let outside = 34 * HOUR_MS;
        assert_eq!(ring.accept(2, u64::MAX), Some([0x22; 32]));
        assert_eq!(ring.accept(1, 10 * HOUR_MS), Some([0x11; 32]));
        assert_eq!(ring.accept(1, inside), Some([0x11; 32]));
        assert_eq!(ring.accept(1, outside), None);
        assert_eq!(ring.accept(3, 0), None);
        let debug = format!("{ring:?}");
        assert_eq!(
            debug,
            "KeyRing { generations: [1, 2], grace_ms: 86400000, .. }"
        );
    }

    #[test]
    fn key_ring_opens_old_generation_only_within_grace() {
        let ring = rotated_ring();
        let old = seal(&[0x11; 32], 1, NONCE, TOPIC, b"old");
        let open_at = |now| open(|g| ring.accept(g, now), TOPIC, &old).map(|o| o.plaintext);
        assert_eq!(open_at(34 * HOUR_MS - 1), Ok(b"old".to_vec()));
        assert_eq!(
            open_at(34 * HOUR_MS),
            Err(CryptoError::UnknownGeneration(1))
        );
        let (generation, key) = ring.current().expect("has a current key");
        let new = seal(&key, generation, NonceSource::new().next(), TOPIC, b"new");
        assert_eq!(new[1], 2);
        let opened = open(|g| ring.accept(g, u64::MAX), TOPIC, &new);
        assert_eq!(opened.map(|o| o.plaintext), Ok(b"new".to_vec()));
    }

    #[test]
    fn key_ring_from_a_device_record() {
        let mut record = DeviceRecord {
            id: "d1".parse().expect("valid id"),
            plugin: "json".to_owned(),
            labels: Default::default(),
            encrypted: true,
            credential: fleetmq_storage::DeviceCredential::Keyed(fleetmq_storage::TokenHash {
                tag: [0; 32],
            }),
            keys: vec![key(1, 0x11, Some(10 * HOUR_MS)), key(2, 0x22, None)],
            created_at_ms: 0,
        };
        let ring = KeyRing::new(&record, Duration::from_secs(3600));
        assert_eq!(ring.current(), Some((2, [0x22; 32])));
        assert_eq!(ring.accept(1, 11 * HOUR_MS - 1), Some([0x11; 32]));
        assert_eq!(ring.accept(1, 11 * HOUR_MS), None);
        record.keys.clear();
        assert_eq!(KeyRing::new(&record, Duration::MAX).current(), None);
    }

    #[test]
    fn key_ring_edge_cases() {
        let empty = KeyRing::from_keys(&[], Duration::ZERO);
        assert_eq!(empty.current(), None);
        assert_eq!(empty.accept(1, 0), None);
        let keys = [key(1, 1, Some(u64::MAX - 1)), key(2, 2, None)];
        let huge = KeyRing::from_keys(&keys, Duration::MAX);
        assert_eq!(huge.accept(1, u64::MAX - 1), Some([1; 32]));
        let keys = [key(1, 1, Some(100)), key(2, 2, None)];
        let no_grace = KeyRing::from_keys(&keys, Duration::ZERO);
        assert_eq!(no_grace.accept(1, 99), Some([1; 32]));
        assert_eq!(no_grace.accept(1, 100), None);
        let all_superseded = KeyRing::from_keys(&[key(1, 1, Some(100))], Duration::ZERO);
        assert_eq!(all_superseded.current(), None);
        assert_eq!(all_superseded.accept(1, 99), Some([1; 32]));
    }
}
