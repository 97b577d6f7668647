//! The SPEC §4 payload envelope: AES-256-GCM with the topic as AAD, in two versions.
//!
//! ```text
//! byte 0      : 0x01 or 0x02 (envelope version)
//! byte 1      : key generation (u8)
//! bytes 2..14 : 96-bit nonce
//!               0x01: unique per message (random)
//!               0x02: epoch (u32, big-endian) | counter (u64, big-endian), see `replay`
//! bytes 14..  : AES-256-GCM ciphertext followed by its 16-byte tag
//! AAD         : 0x01: the topic name, UTF-8 bytes
//!               0x02: byte 0, byte 1, then the topic name
//! ```
//!
//! Version 0x02 authenticates its header too: relabelling a 0x02 envelope as 0x01 (to
//! slip past the replay window while 0x01 is still accepted) fails the tag.
//!
//! Sans-IO: [`seal`], [`seal_v2`] and [`open`] are pure functions over bytes; [`open`]
//! reads both versions, checks every length before reading and reports what a peer got
//! wrong as a [`CryptoError`]. [`NonceSource`] hands out unique random nonces per
//! connection (0x01), [`KeyRing`] decides which key generations a device may still use,
//! and [`ReplayWindow`] is the 0x02 replay check (also for devices checking the broker).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

pub use super::keyring::KeyRing;
pub use super::replay::{
    CountedNonce, ReplayError, ReplayWindow, BROKER_DIRECTION, DEVICE_COUNTER_MAX, WINDOW,
};

/// The original envelope version: random nonces, no replay protection.
pub const ENVELOPE_VERSION: u8 = 0x01;
/// The envelope version whose nonce is a [`CountedNonce`] the broker checks for replays.
pub const ENVELOPE_V2: u8 = 0x02;
/// Length of an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Length of the GCM nonce (bytes 2..14).
pub const NONCE_LEN: usize = 12;
/// Length of the GCM tag at the end of the envelope.
pub const TAG_LEN: usize = 16;
/// Length of the header: version, generation, nonce.
pub const HEADER_LEN: usize = 2 + NONCE_LEN;
/// The shortest possible envelope: header and tag around an empty plaintext.
pub const MIN_ENVELOPE_LEN: usize = HEADER_LEN + TAG_LEN;

/// Why an envelope was refused. Every variant is the sender's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Shorter than [`MIN_ENVELOPE_LEN`] bytes.
    #[error("envelope too short: {len} bytes, at least {MIN_ENVELOPE_LEN} needed")]
    TooShort {
        /// The envelope's length.
        len: usize,
    },
    /// Byte 0 is neither [`ENVELOPE_VERSION`] nor [`ENVELOPE_V2`].
    #[error("unknown envelope version {0:#04x}")]
    UnknownVersion(u8),
    /// Byte 1 names a key generation that is unknown or past its grace period.
    #[error("key generation {0} is unknown or no longer accepted")]
    UnknownGeneration(u8),
    /// The tag did not verify: wrong key, wrong topic, or altered bytes.
    #[error("envelope failed authentication (wrong key, wrong topic or altered bytes)")]
    Authentication,
    /// An authentic 0x02 envelope whose nonce the receiver has already accepted, or
    /// one too old to tell (see [`ReplayWindow`]).
    #[error("replayed envelope: {0}")]
    Replayed(ReplayError),
    /// An authentic 0x01 envelope where `security.require_replay_protection` is on.
    #[error("envelope version 0x01 refused: replay protection (0x02) is required")]
    ReplayProtectionRequired,
}

/// A successfully opened envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The envelope version (byte 0).
    pub version: u8,
    /// The key generation the sender used (byte 1).
    pub generation: u8,
    /// The nonce (bytes 2..14).
    pub nonce: [u8; NONCE_LEN],
    /// The decrypted payload.
    pub plaintext: Vec<u8>,
}

impl Opened {
    /// The epoch and counter of a 0x02 envelope; `None` for 0x01.
    pub fn counted(&self) -> Option<CountedNonce> {
        (self.version == ENVELOPE_V2).then(|| CountedNonce::from_bytes(self.nonce))
    }
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("version", &self.version)
            .field("generation", &self.generation)
            .field("plaintext_len", &self.plaintext.len())
            .finish_non_exhaustive()
    }
}

/// An AES-256-GCM key for ring.
fn aead_key(key: &[u8; KEY_LEN]) -> LessSafeKey {
    // Infallible: ring only refuses keys whose length is not AES-256's, and the type
    // fixes it at 32 bytes.
    let unbound = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is a valid AES-256 key");
    LessSafeKey::new(unbound)
}

/// The additional authenticated data of an envelope: the topic, and for 0x02 the
/// version and generation bytes in front of it.
fn aad(version: u8, generation: u8, topic: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(2 + topic.len());
    if version != ENVELOPE_VERSION {
        aad.extend_from_slice(&[version, generation]);
    }
    aad.extend_from_slice(topic.as_bytes());
    aad
}

/// Encrypts `plaintext` for `topic` into a 0x01 envelope (`generation` goes in byte 1).
///
/// `nonce` must never repeat under the same key: take it from a [`NonceSource`].
pub fn seal(
    key: &[u8; KEY_LEN],
    generation: u8,
    nonce: [u8; NONCE_LEN],
    topic: &str,
    plaintext: &[u8],
) -> Vec<u8> {
    seal_version(ENVELOPE_VERSION, key, generation, nonce, topic, plaintext)
}

/// Encrypts `plaintext` for `topic` into a 0x02 envelope with a counted nonce.
///
/// `nonce` must never repeat under the same key and must grow for the receiver's
/// [`ReplayWindow`]: a device takes a persisted boot epoch and a counter (see `replay`).
pub fn seal_v2(
    key: &[u8; KEY_LEN],
    generation: u8,
    nonce: CountedNonce,
    topic: &str,
    plaintext: &[u8],
) -> Vec<u8> {
    let nonce = nonce.to_bytes();
    seal_version(ENVELOPE_V2, key, generation, nonce, topic, plaintext)
}

fn seal_version(
    version: u8,
    key: &[u8; KEY_LEN],
    generation: u8,
    nonce: [u8; NONCE_LEN],
    topic: &str,
    plaintext: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIN_ENVELOPE_LEN + plaintext.len());
    out.push(version);
    out.push(generation);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let body = &mut out[HEADER_LEN..];
    // Infallible: ring refuses only inputs longer than GCM's limit (~64 GiB), far beyond
    // any MQTT payload (256 MiB at most).
    let tag = aead_key(key)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(version, generation, topic)),
            body,
        )
        .expect("an MQTT payload is within AES-GCM's length limit");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Decrypts a 0x01 or 0x02 envelope received on `topic`, asking `key_for` for the key
/// of the generation in byte 1 (`None`: unknown or no longer accepted).
///
/// This checks authenticity only: whether a 0x02 nonce was seen before is the
/// receiver's [`ReplayWindow`]'s question, asked after `open` succeeded.
pub fn open(
    key_for: impl Fn(u8) -> Option<[u8; KEY_LEN]>,
    topic: &str,
    envelope: &[u8],
) -> Result<Opened, CryptoError> {
    let Some(&version) = envelope.first() else {
        return Err(CryptoError::TooShort { len: 0 });
    };
    if version != ENVELOPE_VERSION && version != ENVELOPE_V2 {
        return Err(CryptoError::UnknownVersion(version));
    }
    let too_short = CryptoError::TooShort {
        len: envelope.len(),
    };
    if envelope.len() < MIN_ENVELOPE_LEN {
        return Err(too_short);
    }
    let Some((&[_, generation, ref nonce @ ..], sealed)) =
        envelope.split_first_chunk::<HEADER_LEN>()
    else {
        return Err(too_short);
    };
    let key = key_for(generation).ok_or(CryptoError::UnknownGeneration(generation))?;
    let mut buf = sealed.to_vec();
    let plaintext_len = aead_key(&key)
        .open_in_place(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad(version, generation, topic)),
            &mut buf,
        )
        .map_err(|_| CryptoError::Authentication)?
        .len();
    buf.truncate(plaintext_len);
    Ok(Opened {
        version,
        generation,
        nonce: *nonce,
        plaintext: buf,
    })
}

/// Unique nonces for one connection: an 8-byte random prefix and a 4-byte big-endian
/// counter. When the counter wraps the prefix is replaced, so a nonce never repeats
/// within a source; the random prefix keeps sources (connections, restarts) apart.
pub struct NonceSource {
    rng: SystemRandom,
    prefix: [u8; 8],
    counter: u32,
}

/// Prefixes handed out when the system random source fails: a process-wide sequence
/// that starts at the clock's nanoseconds on first use, so no two sources of this
/// process share one and a later run starts past an earlier one.
static FALLBACK_PREFIX: AtomicU64 = AtomicU64::new(0);

impl NonceSource {
    /// A source with a fresh random prefix.
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        let prefix = fresh_prefix(&rng);
        Self {
            rng,
            prefix,
            counter: 0,
        }
    }

    /// The next nonce; never the same twice from one source.
    #[allow(
        clippy::should_implement_trait,
        reason = "an endless source, not an Iterator: there is no None to return"
    )]
    pub fn next(&mut self) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.prefix);
        nonce[8..].copy_from_slice(&self.counter.to_be_bytes());
        match self.counter.checked_add(1) {
            Some(next) => self.counter = next,
            None => {
                self.prefix = fresh_prefix(&self.rng);
                self.counter = 0;
            }
        }
        nonce
    }
}

impl Default for NonceSource {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceSource")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// 8 random bytes; should the system random source fail (a broken host), the next
/// value of [`FALLBACK_PREFIX`] instead, which is unique but not secret. A nonce only
/// has to be unique for AES-GCM, not unpredictable.
fn fresh_prefix(rng: &SystemRandom) -> [u8; 8] {
    let mut prefix = [0u8; 8];
    if rng.fill(&mut prefix).is_ok() {
        return prefix;
    }
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    fallback_prefix(now_ns)
}

/// The next prefix of [`FALLBACK_PREFIX`], seeding it with `now_ns` on first use.
fn fallback_prefix(now_ns: u64) -> [u8; 8] {
    // Only the first caller seeds; a failed exchange means the sequence already runs.
    let _ = FALLBACK_PREFIX.compare_exchange(0, now_ns, Ordering::Relaxed, Ordering::Relaxed);
    FALLBACK_PREFIX
        .fetch_add(1, Ordering::Relaxed)
        .to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOPIC: &str = "device/d1/telemetry";
    const KEY: [u8; 32] = [7; 32];
    const NONCE: [u8; 12] = [9; 12];
    const GOLDEN_V2: &str =
        "020700000003000000000000002a506f8f1fa202e51b3961804cabe318bf3526daeb401e4dc7a334";

    fn only(key: [u8; 32], generation: u8) -> impl Fn(u8) -> Option<[u8; 32]> {
        move |g| (g == generation).then_some(key)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn round_trip() {
        let env = seal(&KEY, 3, NONCE, TOPIC, b"{\"cpu\":40}");
        assert_eq!(env.len(), MIN_ENVELOPE_LEN + 10);
        assert_eq!((env[0], env[1]), (ENVELOPE_VERSION, 3));
        assert_eq!(env[2..14], NONCE);
        let opened = open(only(KEY, 3), TOPIC, &env).expect("opens");
        assert_eq!(
            opened,
            Opened {
                version: ENVELOPE_VERSION,
                generation: 3,
                nonce: NONCE,
                plaintext: b"{\"cpu\":40}".to_vec()
            }
        );
        let empty = seal(&KEY, 3, NONCE, TOPIC, b"");
        assert_eq!(empty.len(), MIN_ENVELOPE_LEN);
        assert_eq!(
            open(only(KEY, 3), TOPIC, &empty).map(|o| o.plaintext),
            Ok(Vec::new())
        );
    }

    /// Fixed key, nonce, topic and plaintext give these exact bytes, cross-checked with
    /// an independent AES-GCM implementation (Python `cryptography`), so the envelope
    /// format cannot drift.
    #[test]
    fn golden_vector() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let nonce: [u8; 12] = std::array::from_fn(|i| 0xa0 + i as u8);
        let env = seal(&key, 7, nonce, "device/d1/telemetry", br#"{"cpu":40}"#);
        let golden =
            "0107a0a1a2a3a4a5a6a7a8a9aaab9d3a1f5d30e9388b5218674217517495c9ef19a660ed278ca1fb";
        assert_eq!(hex(&env), golden);
        let opened = open(only(key, 7), "device/d1/telemetry", &env).expect("opens");
        assert_eq!(opened.plaintext, br#"{"cpu":40}"#);
    }

    #[test]
    fn other_topic_fails() {
        let env = seal(&KEY, 1, NONCE, TOPIC, b"hello");
        assert_eq!(
            open(only(KEY, 1), "device/d2/telemetry", &env),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            open(only(KEY, 1), "", &env),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn wrong_key_fails() {
        let env = seal(&KEY, 1, NONCE, TOPIC, b"hello");
        assert_eq!(
            open(only([8; 32], 1), TOPIC, &env),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn every_flipped_bit_fails() {
        let env = seal(&KEY, 1, NONCE, TOPIC, b"hello");
        for i in 0..env.len() * 8 {
            let mut bad = env.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let err = open(only(KEY, 1), TOPIC, &bad).expect_err("altered envelope must fail");
            let want = match i / 8 {
                0 => CryptoError::UnknownVersion(bad[0]),
                1 => CryptoError::UnknownGeneration(bad[1]),
                _ => CryptoError::Authentication,
            };
            assert_eq!(err, want, "bit {i}");
        }
    }

    #[test]
    fn short_or_garbage_fails() {
        assert_eq!(
            open(only(KEY, 1), TOPIC, b""),
            Err(CryptoError::TooShort { len: 0 })
        );
        assert_eq!(
            open(only(KEY, 1), TOPIC, &[1]),
            Err(CryptoError::TooShort { len: 1 })
        );
        assert_eq!(
            open(only(KEY, 1), TOPIC, &[1; 29]),
            Err(CryptoError::TooShort { len: 29 })
        );
        assert_eq!(
            open(only(KEY, 1), TOPIC, &[1; 30]),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            open(only(KEY, 1), TOPIC, &[3; 40]),
            Err(CryptoError::UnknownVersion(3))
        );
        assert_eq!(
            open(only(KEY, 1), TOPIC, b"{\"cpu\":40}"),
            Err(CryptoError::UnknownVersion(b'{'))
        );
        let mut env = seal(&KEY, 1, NONCE, TOPIC, b"hello");
        env.truncate(env.len() - 1);
        assert_eq!(
            open(only(KEY, 1), TOPIC, &env),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn unknown_generation() {
        let env = seal(&KEY, 4, NONCE, TOPIC, b"hello");
        assert_eq!(
            open(only(KEY, 3), TOPIC, &env),
            Err(CryptoError::UnknownGeneration(4))
        );
    }

    /// The 0x02 golden vector: the header is in the AAD, so it differs from 0x01's
    /// ciphertext under the same key, nonce and topic (cross-checked with Python
    /// `cryptography`: `AESGCM(key).encrypt(nonce, pt, bytes([2, 7]) + topic)`).
    #[test]
    fn golden_vector_v2() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let nonce = CountedNonce {
            epoch: 3,
            counter: 42,
        };
        let env = seal_v2(&key, 7, nonce, "device/d1/telemetry", br#"{"cpu":40}"#);
        assert_eq!(&hex(&env[..14]), "020700000003000000000000002a");
        assert_eq!(hex(&env), GOLDEN_V2);
        let opened = open(only(key, 7), "device/d1/telemetry", &env).expect("opens");
        assert_eq!(
            (opened.version, opened.counted()),
            (ENVELOPE_V2, Some(nonce))
        );
        assert_eq!(opened.plaintext, br#"{"cpu":40}"#);
        assert!(format!("{opened:?}").contains("version: 2"));
    }

    /// Relabelling a 0x02 envelope as 0x01 (which has no replay check) or changing its
    /// generation byte fails authentication: the header is authenticated.
    #[test]
    fn v2_header_is_authenticated() {
        let nonce = CountedNonce {
            epoch: 1,
            counter: 1,
        };
        let env = seal_v2(&KEY, 1, nonce, TOPIC, b"hello");
        let mut downgraded = env.clone();
        downgraded[0] = ENVELOPE_VERSION;
        assert_eq!(
            open(only(KEY, 1), TOPIC, &downgraded),
            Err(CryptoError::Authentication)
        );
        let mut other_generation = env.clone();
        other_generation[1] = 2;
        assert_eq!(
            open(|_| Some(KEY), TOPIC, &other_generation),
            Err(CryptoError::Authentication)
        );
        // And the other way: a 0x01 envelope relabelled 0x02.
        let mut upgraded = seal(&KEY, 1, NONCE, TOPIC, b"hello");
        upgraded[0] = ENVELOPE_V2;
        assert_eq!(
            open(only(KEY, 1), TOPIC, &upgraded),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            open(only(KEY, 1), TOPIC, &env).map(|o| o.counted()),
            Ok(Some(nonce))
        );
        assert_eq!(
            open(only(KEY, 1), TOPIC, &seal(&KEY, 1, NONCE, TOPIC, b"x")).map(|o| o.counted()),
            Ok(None)
        );
    }

    #[test]
    fn nonce_source_counts_and_is_random_per_source() {
        let mut a = NonceSource::new();
        let mut b = NonceSource::default();
        let (a0, a1, b0) = (a.next(), a.next(), b.next());
        assert_eq!(a0[..8], a1[..8]);
        assert_eq!(a0[8..], [0, 0, 0, 0]);
        assert_eq!(a1[8..], [0, 0, 0, 1]);
        assert_ne!(a0[..8], b0[..8], "prefixes are random (2^-64 flake chance)");
        assert!(format!("{a:?}").starts_with("NonceSource"));
    }

    #[test]
    fn nonce_source_new_prefix_on_wrap() {
        let mut n = NonceSource::new();
        n.counter = u32::MAX - 1;
        let first = n.next();
        let last = n.next();
        let wrapped = n.next();
        assert_eq!(first[8..], (u32::MAX - 1).to_be_bytes());
        assert_eq!(last[8..], u32::MAX.to_be_bytes());
        assert_eq!(wrapped[8..], [0, 0, 0, 0]);
        assert_ne!(wrapped[..8], last[..8]);
        assert_eq!(n.next()[8..], [0, 0, 0, 1]);
    }

    #[test]
    fn fallback_prefixes_never_repeat() {
        let a = u64::from_be_bytes(fallback_prefix(1_000));
        let b = u64::from_be_bytes(fallback_prefix(1_000));
        let c = u64::from_be_bytes(fallback_prefix(5));
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    proptest! {
        #[test]
        fn open_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..128),
            topic in "\\PC{0,16}",
        ) {
            let _ = open(only(KEY, 1), &topic, &bytes);
            let _ = open(|_| Some(KEY), &topic, &bytes);
        }

        #[test]
        fn seal_open_round_trips(
            plaintext in prop::collection::vec(any::<u8>(), 0..256),
            generation in any::<u8>(),
            nonce in any::<[u8; 12]>(),
            topic in "\\PC{0,32}",
        ) {
            let env = seal(&KEY, generation, nonce, &topic, &plaintext);
            prop_assert_eq!(env.len(), MIN_ENVELOPE_LEN + plaintext.len());
            let opened = open(only(KEY, generation), &topic, &env);
            prop_assert_eq!(opened, Ok(Opened { version: ENVELOPE_VERSION, generation, nonce, plaintext }));
        }

        #[test]
        fn seal_v2_open_round_trips(
            plaintext in prop::collection::vec(any::<u8>(), 0..256),
            generation in any::<u8>(),
            epoch in any::<u32>(),
            counter in any::<u64>(),
            topic in "\\PC{0,32}",
        ) {
            let nonce = CountedNonce { epoch, counter };
            let env = seal_v2(&KEY, generation, nonce, &topic, &plaintext);
            prop_assert_eq!(env.len(), MIN_ENVELOPE_LEN + plaintext.len());
            let opened = open(only(KEY, generation), &topic, &env).expect("opens");
            prop_assert_eq!(opened.counted(), Some(nonce));
            prop_assert_eq!(opened.plaintext, plaintext);
        }
    }
}
