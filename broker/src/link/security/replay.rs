//! Replay protection for envelope version 0x02 (SPEC §4 as extended in
//! `docs/security.md`).
//!
//! A 0x02 nonce is a [`CountedNonce`]: a 4-byte big-endian **epoch** and an 8-byte
//! big-endian **counter**. The receiver keeps, per key, the newest (epoch, counter) it
//! accepted and a 64-bit bitmap of the [`WINDOW`] counters below it (the IPsec/DTLS
//! anti-replay window), and accepts an authentic envelope only if its nonce is newer:
//!
//! - a higher epoch than the newest: accepted, the window starts again there;
//! - a lower epoch: refused ([`ReplayError::OldEpoch`]);
//! - the same epoch: a higher counter moves the window up; a counter within the 64 below
//!   the newest is accepted once ([`ReplayError::Duplicate`] the second time), out of
//!   order included; anything older is refused ([`ReplayError::TooOld`]). A counter that
//!   wraps (back to 0 in the same epoch) is therefore refused too.
//!
//! **What survives a device reboot** is the epoch, not the counter: the device keeps a
//! boot counter in persistent storage, increments and writes it *before* it seals the
//! first envelope of a boot, and uses it as the epoch; the counter lives in RAM and
//! starts at 0 each boot. (The Unix time in seconds at boot works as an epoch for a
//! device with a trustworthy clock, until 2106.) A random per-boot epoch was rejected:
//! the broker cannot tell a new random epoch from an old one, so whoever captured a
//! previous boot's envelopes could replay them as soon as the broker forgot that epoch,
//! and forgetting is unavoidable with bounded memory. Monotonic epochs need one word of
//! state per key, never more, whatever a sender does.
//!
//! **Directions.** The device and the broker seal with the same key, so their nonces must
//! never meet: the top bit of the counter is the direction (0 device → broker, 1 broker →
//! device). A device's counter is 63 bits; an envelope from a device with the bit set
//! is refused ([`ReplayError::WrongDirection`]), which also refuses a broker envelope
//! reflected back. The broker's nonces ([`broker_nonce`]) take a random epoch per broker
//! process and one process-wide counter that starts at the Unix time in nanoseconds at
//! start: unique (both the random epoch and the counter range would have to repeat), and
//! increasing across the broker's restarts unless its clock steps back, so a device can
//! check the broker's envelopes with a [`ReplayWindow`] fed the counter under epoch 0.
//!
//! **What the broker keeps** ([`ReplayRegistry`]): per device, across reconnects (a
//! device's connections share it, a takeover included), one [`ReplayWindow`] per key
//! it used, at most [`MAX_KEYS_PER_DEVICE`] (least recently used goes first; keys are told
//! apart by a fingerprint, so a re-provisioned device starts afresh), and the envelope
//! version of its latest authentic envelope. About 100 bytes per encrypted device that
//! connected since the broker started (removed when the device is deleted), created on an
//! authenticated CONNECT and changed only by envelopes that passed authentication:
//! nothing an attacker sends grows it. It is held
//! in memory only: after a broker restart the first authentic envelope of each key sets
//! the window, so envelopes captured before the restart can be replayed (in increasing
//! order) until the device's next envelope is accepted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use fleetmq_storage::DeviceId;
use ring::rand::{SecureRandom, SystemRandom};

use super::crypto::{KEY_LEN, NONCE_LEN};

/// How many counters below the newest one a [`ReplayWindow`] still accepts once.
pub const WINDOW: u64 = 64;
/// The counter's top bit: set on nonces the broker seals, clear on a device's.
pub const BROKER_DIRECTION: u64 = 1 << 63;
/// The highest counter a device may use in one epoch (then it must take a new epoch).
pub const DEVICE_COUNTER_MAX: u64 = BROKER_DIRECTION - 1;
/// Keys whose windows the broker keeps per device (current, in grace, re-provisioned).
pub const MAX_KEYS_PER_DEVICE: usize = 4;

/// The nonce of a 0x02 envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountedNonce {
    /// Bytes 2..6: a persisted boot counter on devices, random per process on the broker.
    pub epoch: u32,
    /// Bytes 6..14: +1 per envelope; top bit = direction ([`BROKER_DIRECTION`]).
    pub counter: u64,
}

impl CountedNonce {
    /// The 12 nonce bytes: epoch then counter, both big-endian.
    pub fn to_bytes(self) -> [u8; NONCE_LEN] {
        let mut out = [0u8; NONCE_LEN];
        out[..4].copy_from_slice(&self.epoch.to_be_bytes());
        out[4..].copy_from_slice(&self.counter.to_be_bytes());
        out
    }

    /// The epoch and counter of 12 nonce bytes.
    pub fn from_bytes(bytes: [u8; NONCE_LEN]) -> Self {
        let (epoch, counter) = bytes.split_at(4);
        let mut e = [0u8; 4];
        let mut c = [0u8; 8];
        e.copy_from_slice(epoch);
        c.copy_from_slice(counter);
        Self {
            epoch: u32::from_be_bytes(e),
            counter: u64::from_be_bytes(c),
        }
    }

    /// Whether the broker sealed it (the counter's top bit).
    pub fn from_broker(self) -> bool {
        self.counter & BROKER_DIRECTION != 0
    }
}

/// Why a 0x02 nonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// This exact nonce was accepted before.
    #[error("counter {counter} of epoch {epoch} was already accepted")]
    Duplicate {
        /// The envelope's epoch.
        epoch: u32,
        /// The envelope's counter.
        counter: u64,
    },
    /// More than [`WINDOW`] counters below the newest accepted one of its epoch.
    #[error("counter {counter} is too far behind the newest ({newest}) of epoch {epoch}")]
    TooOld {
        /// The envelope's epoch.
        epoch: u32,
        /// The envelope's counter.
        counter: u64,
        /// The newest counter accepted in that epoch.
        newest: u64,
    },
    /// An epoch below the newest one accepted: an earlier boot's envelope.
    #[error("epoch {epoch} is older than the current epoch {current}")]
    OldEpoch {
        /// The envelope's epoch.
        epoch: u32,
        /// The newest epoch accepted.
        current: u32,
    },
    /// A counter with the other direction's bit: a reflected envelope, or a device
    /// counter past [`DEVICE_COUNTER_MAX`].
    #[error("counter {0:#018x} carries the other direction's bit")]
    WrongDirection(u64),
}

/// The anti-replay state of one key: the newest accepted nonce and which of the
/// [`WINDOW`] counters below it were accepted. Pure; 16 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// The newest accepted (epoch, counter); `None` before the first.
    newest: Option<(u32, u64)>,
    /// Bit i: counter `newest - i` of the newest epoch was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// A window that has accepted nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `nonce` would be accepted (changes nothing).
    pub fn check(&self, nonce: CountedNonce) -> Result<(), ReplayError> {
        let CountedNonce { epoch, counter } = nonce;
        let Some((current, newest)) = self.newest else {
            return Ok(());
        };
        if epoch < current {
            return Err(ReplayError::OldEpoch { epoch, current });
        }
        if epoch > current || counter > newest {
            return Ok(());
        }
        let age = newest - counter;
        if age >= WINDOW {
            return Err(ReplayError::TooOld {
                epoch,
                counter,
                newest,
            });
        }
        if self.seen & (1 << age) != 0 {
            return Err(ReplayError::Duplicate { epoch, counter });
        }
        Ok(())
    }

    /// Accepts `nonce` once: checks it, then records it. Call only for an envelope that
    /// passed authentication, or a forger could move the window.
    pub fn accept(&mut self, nonce: CountedNonce) -> Result<(), ReplayError> {
        self.check(nonce)?;
        let CountedNonce { epoch, counter } = nonce;
        match self.newest {
            Some((current, newest)) if current == epoch && counter <= newest => {
                self.seen |= 1 << (newest - counter);
            }
            Some((current, newest)) if current == epoch => {
                let shift = counter - newest;
                self.seen = if shift >= WINDOW {
                    1
                } else {
                    (self.seen << shift) | 1
                };
                self.newest = Some((epoch, counter));
            }
            _ => {
                self.seen = 1;
                self.newest = Some((epoch, counter));
            }
        }
        Ok(())
    }

    /// The newest accepted nonce.
    pub fn newest(&self) -> Option<CountedNonce> {
        self.newest
            .map(|(epoch, counter)| CountedNonce { epoch, counter })
    }
}

/// What the broker keeps for one device, shared by its connections.
#[derive(Debug, Default)]
pub(crate) struct DeviceReplay {
    /// One window per key, told apart by a fingerprint; at most [`MAX_KEYS_PER_DEVICE`].
    windows: Vec<KeyWindow>,
    /// Bumped per use, to find the least recently used window.
    tick: u64,
    /// The version of the device's latest authentic envelope (0: none yet).
    latest_version: u8,
}

#[derive(Debug)]
struct KeyWindow {
    fingerprint: [u8; 8],
    window: ReplayWindow,
    used: u64,
}

/// A short, one-way name for a key (the first 8 bytes of its SHA-256).
fn fingerprint(key: &[u8; KEY_LEN]) -> [u8; 8] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest.as_ref()[..8]);
    out
}

impl DeviceReplay {
    /// An authentic 0x02 envelope sealed by the device under `key`: accepted once.
    pub(crate) fn accept(
        &mut self,
        key: &[u8; KEY_LEN],
        nonce: CountedNonce,
    ) -> Result<(), ReplayError> {
        if nonce.from_broker() {
            return Err(ReplayError::WrongDirection(nonce.counter));
        }
        self.tick += 1;
        let fingerprint = fingerprint(key);
        let index = match self
            .windows
            .iter()
            .position(|w| w.fingerprint == fingerprint)
        {
            Some(i) => i,
            None => {
                if self.windows.len() >= MAX_KEYS_PER_DEVICE {
                    let oldest = (0..self.windows.len()).min_by_key(|&i| self.windows[i].used);
                    if let Some(i) = oldest {
                        self.windows.swap_remove(i);
                    }
                }
                self.windows.push(KeyWindow {
                    fingerprint,
                    window: ReplayWindow::new(),
                    used: 0,
                });
                self.windows.len() - 1
            }
        };
        let entry = &mut self.windows[index];
        entry.used = self.tick;
        entry.window.accept(nonce)?;
        self.latest_version = super::crypto::ENVELOPE_V2;
        Ok(())
    }

    /// An authentic 0x01 envelope from the device.
    pub(crate) fn saw_v1(&mut self) {
        self.latest_version = super::crypto::ENVELOPE_VERSION;
    }

    /// Whether the device's latest authentic envelope was 0x02.
    pub(crate) fn uses_v2(&self) -> bool {
        self.latest_version == super::crypto::ENVELOPE_V2
    }
}

/// The [`DeviceReplay`] of every device that connected with encryption since start.
#[derive(Debug, Default)]
pub(crate) struct ReplayRegistry {
    devices: Mutex<HashMap<DeviceId, Arc<Mutex<DeviceReplay>>>>,
}

impl ReplayRegistry {
    /// The state of `device`, shared with its other connections.
    pub(crate) fn device(&self, device: &DeviceId) -> Arc<Mutex<DeviceReplay>> {
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(devices.entry(device.clone()).or_default())
    }

    /// A deleted device: its state goes (a device created again with its id has new keys).
    pub(crate) fn forget(&self, device: &DeviceId) {
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        devices.remove(device);
    }
}

/// The broker's epoch: random per process.
static BROKER_EPOCH: OnceLock<u32> = OnceLock::new();
/// The broker's counter (without the direction bit): seeded with the Unix time in
/// nanoseconds on first use, +1 per envelope the broker seals as 0x02.
static BROKER_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The next nonce for a 0x02 envelope the broker seals (any device: one sequence).
pub(crate) fn broker_nonce() -> CountedNonce {
    let epoch = *BROKER_EPOCH.get_or_init(|| {
        let mut bytes = [0u8; 4];
        // A failing system random source leaves the epoch at 0: the counter, seeded
        // from the clock, still keeps nonces apart.
        let _ = SystemRandom::new().fill(&mut bytes);
        u32::from_be_bytes(bytes)
    });
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| {
        u64::try_from(d.as_nanos()).unwrap_or(DEVICE_COUNTER_MAX)
    });
    // Only the first caller seeds; a failed exchange means the sequence already runs.
    let _ = BROKER_COUNTER.compare_exchange(0, now_ns, Ordering::Relaxed, Ordering::Relaxed);
    let seq = BROKER_COUNTER.fetch_add(1, Ordering::Relaxed);
    CountedNonce {
        epoch,
        counter: BROKER_DIRECTION | (seq & DEVICE_COUNTER_MAX),
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
