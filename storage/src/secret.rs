//! Secrets: salted slow hashes, device tokens and their keyed hashes, AES keys.
//!
//! Two ways to store a secret:
//! - [`CredentialHash`], salted PBKDF2, for secrets people choose (service-client
//!   passwords, the admin API key): tens of milliseconds per check on purpose. Async
//!   callers run it on the blocking pool (for example through
//!   [`Store::call`](crate::Store::call)).
//! - [`TokenHash`], HMAC-SHA256 under the install's [`TokenKey`], for device tokens: the
//!   broker generates them with 256 bits from the OS RNG ([`generate_token`]), so no
//!   guessing is left for a slow hash to slow down, and a check costs about a
//!   microsecond. Someone who reads the file learns the key too, but a 256-bit token is
//!   no more guessable with it than without it.
//!
//! [`DeviceCredential`] is what a device record holds: a [`TokenHash`], or the
//! [`CredentialHash`] every device had before keyed hashes (upgraded on its next
//! successful connect or rotation).

use std::fmt;
use std::num::NonZeroU32;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{hmac, pbkdf2};
use serde::{Deserialize, Serialize};

/// PBKDF2 iterations used by [`CredentialHash::new`].
pub const DEFAULT_ITERATIONS: u32 = 100_000;

static ALGORITHM: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;

/// A salted PBKDF2-HMAC-SHA256 hash of a secret (device token, service client
/// password, admin API key). The secret itself is never stored.
///
/// `Debug` does not print the salt or hash bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialHash {
    /// PBKDF2 iteration count; `0` never verifies.
    pub iterations: u32,
    /// Random per-hash salt.
    pub salt: [u8; 16],
    /// The derived 32-byte hash.
    pub hash: [u8; 32],
}

impl CredentialHash {
    /// Hashes `secret` with [`DEFAULT_ITERATIONS`] and a fresh random salt.
    pub fn new(secret: &[u8]) -> CredentialHash {
        const DEFAULT: NonZeroU32 = match NonZeroU32::new(DEFAULT_ITERATIONS) {
            Some(n) => n,
            None => panic!("DEFAULT_ITERATIONS is zero"),
        };
        CredentialHash::with_iterations(secret, DEFAULT)
    }

    /// Hashes `secret` with a chosen iteration count and a fresh random salt.
    /// Lower counts are for tests only.
    pub fn with_iterations(secret: &[u8], iterations: NonZeroU32) -> CredentialHash {
        let salt: [u8; 16] = random_bytes();
        let mut hash = [0u8; 32];
        pbkdf2::derive(ALGORITHM, iterations, &salt, secret, &mut hash);
        CredentialHash {
            iterations: iterations.get(),
            salt,
            hash,
        }
    }

    /// Whether `secret` hashes to this value. Compares in constant time.
    pub fn verify(&self, secret: &[u8]) -> bool {
        let Some(iterations) = NonZeroU32::new(self.iterations) else {
            return false;
        };
        pbkdf2::verify(ALGORITHM, iterations, &self.salt, secret, &self.hash).is_ok()
    }
}

impl fmt::Debug for CredentialHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialHash")
            .field("iterations", &self.iterations)
            .field("salt", &"<redacted>")
            .field("hash", &"<redacted>")
            .finish()
    }
}

/// The per-install key device tokens are hashed under (HMAC-SHA256). Created with the
/// database file and kept in it (`token_key`), so hashes stay valid across restarts and
/// a copied file keeps working. `Debug` does not print it.
#[derive(Clone)]
pub struct TokenKey {
    key: hmac::Key,
}

impl TokenKey {
    /// The key with these bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> TokenKey {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// A key from the OS RNG, and its bytes (to store).
    pub(crate) fn generate() -> ([u8; 32], TokenKey) {
        let bytes: [u8; 32] = random_bytes();
        (bytes, TokenKey::from_bytes(&bytes))
    }

    /// The keyed hash of `token`.
    pub fn hash(&self, token: &[u8]) -> TokenHash {
        let mut tag = [0u8; 32];
        tag.copy_from_slice(hmac::sign(&self.key, token).as_ref());
        TokenHash { tag }
    }

    /// A 32-byte secret for another purpose, named by `label` (HMAC of the label under
    /// this key: it reveals nothing of the key, and differs per label and per install).
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&self.key, label).as_ref());
        out
    }

    /// Whether `token` hashes to `stored`; constant time (`ring::hmac::verify`).
    pub fn verify(&self, stored: &TokenHash, token: &[u8]) -> bool {
        hmac::verify(&self.key, token, &stored.tag).is_ok()
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// HMAC-SHA256 of a device token under the install's [`TokenKey`]. `Debug` does not
/// print it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenHash {
    /// The 32-byte tag.
    pub tag: [u8; 32],
}

impl TokenHash {
    /// Whether `other` is the same tag, in constant time: the time taken does not tell
    /// how many bytes matched (for a caller that hashed once and compares many).
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.tag
            .iter()
            .zip(&other.tag)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// How a device's token is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceCredential {
    /// A keyed hash: checked in about a microsecond.
    Keyed(TokenHash),
    /// A salted PBKDF2 hash, as devices provisioned before keyed hashes have; checked
    /// the slow way, then replaced by a [`DeviceCredential::Keyed`] one.
    Legacy(CredentialHash),
}

impl DeviceCredential {
    /// The keyed hash of a new token.
    pub fn keyed(key: &TokenKey, token: &[u8]) -> DeviceCredential {
        DeviceCredential::Keyed(key.hash(token))
    }

    /// Whether checking a token costs PBKDF2 (run it on the blocking pool, bounded).
    pub fn is_legacy(&self) -> bool {
        matches!(self, DeviceCredential::Legacy(_))
    }

    /// Whether `token` is this device's token. Constant time in the token either way;
    /// microseconds for a keyed hash, tens of milliseconds for a legacy one.
    pub fn verify(&self, key: &TokenKey, token: &[u8]) -> bool {
        match self {
            DeviceCredential::Keyed(hash) => key.verify(hash, token),
            DeviceCredential::Legacy(hash) => hash.verify(token),
        }
    }
}

/// A new random token: 32 bytes (256 bits) from the OS RNG as 64 lowercase hex digits.
pub fn generate_token() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes: [u8; 32] = random_bytes();
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// A new random AES-256 key from the OS RNG.
pub fn generate_key() -> [u8; 32] {
    random_bytes()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS RNG failing means no secret can be made safely; there is no
    // sensible fallback, so this is treated like allocation failure.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random number generator failed");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_compare() {
        let tag = |t: [u8; 32]| TokenHash { tag: t };
        assert!(tag([7; 32]).matches(&tag([7; 32])));
        let mut other = [7; 32];
        other[31] = 8;
        assert!(!tag([7; 32]).matches(&tag(other)));
    }

    fn fast(secret: &[u8]) -> CredentialHash {
        CredentialHash::with_iterations(secret, NonZeroU32::new(2).unwrap())
    }

    #[test]
    fn verify_true_and_false() {
        let h = CredentialHash::new(b"s3cret");
        assert_eq!(h.iterations, DEFAULT_ITERATIONS);
        assert!(h.verify(b"s3cret"));
        assert!(!h.verify(b"s3cres"));
        assert!(!h.verify(b""));
    }

    #[test]
    fn same_secret_gets_different_salts() {
        let a = fast(b"token");
        let b = fast(b"token");
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.hash, b.hash);
        assert!(a.verify(b"token") && b.verify(b"token"));
    }

    #[test]
    fn zero_iterations_never_verify() {
        let mut h = fast(b"x");
        h.iterations = 0;
        assert!(!h.verify(b"x"));
    }

    #[test]
    fn tampered_parameters_do_not_verify() {
        let h = fast(b"x");
        let mut other = h.clone();
        other.iterations = 3;
        assert!(!other.verify(b"x"));
        let mut other = h.clone();
        other.salt[0] ^= 1;
        assert!(!other.verify(b"x"));
    }

    #[test]
    fn debug_redacts() {
        let mut h = fast(b"x");
        h.hash = [0xab; 32];
        h.salt = [0xcd; 16];
        let s = format!("{h:?}");
        assert!(s.contains("redacted"), "{s}");
        assert!(!s.contains("171") && !s.contains("205"), "{s}");
    }

    #[test]
    fn tokens_are_64_lowercase_hex_and_distinct() {
        let a = generate_token();
        let b = generate_token();
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }

    #[test]
    fn keyed_hashes_verify_only_their_token_under_their_key() {
        let (bytes, key) = TokenKey::generate();
        let token = generate_token();
        let stored = DeviceCredential::keyed(&key, token.as_bytes());
        assert!(!stored.is_legacy());
        assert!(stored.verify(&key, token.as_bytes()));
        assert!(!stored.verify(&key, b""));
        let mut wrong = token.clone().into_bytes();
        wrong[63] ^= 1;
        assert!(!stored.verify(&key, &wrong));
        // The same bytes make the same key (it is read back from the file) ...
        assert!(stored.verify(&TokenKey::from_bytes(&bytes), token.as_bytes()));
        // ... and another install's key verifies nothing.
        let (_, other) = TokenKey::generate();
        assert!(!stored.verify(&other, token.as_bytes()));
        assert_eq!(key.hash(b"x"), key.hash(b"x"));
        assert_ne!(key.hash(b"x"), other.hash(b"x"));
    }

    #[test]
    fn keyed_hash_is_hmac_sha256() {
        // RFC 4231 test case 2 (key "Jefe"), with the key padded to 32 bytes by
        // HMAC's own zero padding.
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(b"Jefe");
        let tag = TokenKey::from_bytes(&bytes).hash(b"what do ya want for nothing?");
        assert_eq!(
            hex(&tag.tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn legacy_credentials_verify_the_slow_way() {
        let stored = DeviceCredential::Legacy(fast(b"old-token"));
        let (_, key) = TokenKey::generate();
        assert!(stored.is_legacy());
        assert!(stored.verify(&key, b"old-token"));
        assert!(!stored.verify(&key, b"old-tokem"));
    }

    #[test]
    fn keyed_debug_redacts() {
        let (_, key) = TokenKey::generate();
        let stored = DeviceCredential::Keyed(TokenHash { tag: [0xab; 32] });
        for s in [format!("{key:?}"), format!("{stored:?}")] {
            assert!(s.contains("redacted") && !s.contains("171"), "{s}");
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn keys_are_random() {
        assert_ne!(generate_key(), generate_key());
    }
}
