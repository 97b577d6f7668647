//! Secrets: salted slow hashes, device tokens and AES keys.
//!
//! Everything here is CPU-heavy or touches the OS RNG; async callers run it on
//! the blocking pool (for example through [`Store::call`](crate::Store::call)).

use std::fmt;
use std::num::NonZeroU32;

use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
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

/// A new random token: 32 bytes from the OS RNG as 64 lowercase hex digits.
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
    fn keys_are_random() {
        assert_ne!(generate_key(), generate_key());
    }
}
