//! TLS session tickets (stateless resumption) that stay valid across a restart.
//!
//! A fleet that reconnects after a restart would otherwise pay a full handshake per device
//! before any authentication. rustls' own ticketer keys are random per process, so its
//! tickets die with the broker; these are sealed (ChaCha20-Poly1305) under a key derived
//! from a secret of the install's database, per period of [`PERIOD_S`]: a ticket is
//! accepted in the period it was made and the next one, then its key is never derived
//! again, which bounds what a leaked period key exposes. rustls resumes TLS 1.3 only with
//! a fresh (EC)DHE exchange, so a ticket key never decrypts recorded traffic.
//!
//! Each TLS listener has keys of its own (the label names its address, certificate and
//! client CA), so a ticket issued where no client certificate is asked for never resumes
//! a session on a listener that requires one.
//!
//! The secret is set once the store is open ([`TicketKeys::set_secret`]), before the
//! listeners accept; until then no ticket is issued.

use std::sync::{Mutex, OnceLock};

use ring::aead::{self, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// How long one ticket key is used to seal; tickets stay valid for up to two periods.
pub(crate) const PERIOD_S: u64 = 12 * 3600;
/// Bytes before the sealed part: the period (u32, big-endian) and the nonce.
const HEADER: usize = 4 + NONCE_LEN;

/// One TLS listener's ticketer.
pub(crate) struct TicketKeys {
    /// Which listener: part of every key's derivation.
    label: Vec<u8>,
    secret: OnceLock<hmac::Key>,
    /// The last two periods' keys, derived once each.
    cache: Mutex<Vec<(u32, std::sync::Arc<LessSafeKey>)>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("ready", &self.secret.get().is_some())
            .finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// Keys for the listener that `label` names.
    pub(crate) fn new(label: impl Into<Vec<u8>>) -> TicketKeys {
        TicketKeys {
            label: label.into(),
            secret: OnceLock::new(),
            cache: Mutex::new(Vec::with_capacity(2)),
            rng: SystemRandom::new(),
        }
    }

    /// Sets the install's ticket secret (32 bytes derived from the database's key); the
    /// first call wins.
    pub(crate) fn set_secret(&self, secret: [u8; 32]) {
        let _ = self.secret.set(hmac::Key::new(hmac::HMAC_SHA256, &secret));
    }

    fn period_now() -> u32 {
        let secs = fleetmq_storage::now_ms() / 1000;
        u32::try_from(secs / PERIOD_S).unwrap_or(u32::MAX)
    }

    /// The key of `period`, derived from the secret (and cached with the one before).
    fn key(&self, period: u32) -> Option<std::sync::Arc<LessSafeKey>> {
        let secret = self.secret.get()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, key)) = cache.iter().find(|(p, _)| *p == period) {
            return Some(key.clone());
        }
        let mut label = b"fleetmq tls ticket key v1 ".to_vec();
        label.extend_from_slice(&period.to_be_bytes());
        label.extend_from_slice(&self.label);
        let tag = hmac::sign(secret, &label);
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &tag.as_ref()[..32]).ok()?;
        let key = std::sync::Arc::new(LessSafeKey::new(unbound));
        cache.retain(|(p, _)| p.saturating_add(1) >= period && *p <= period.saturating_add(1));
        cache.push((period, key.clone()));
        Some(key)
    }

    fn seal(&self, period: u32, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.key(period)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(HEADER + plain.len() + CHACHA20_POLY1305.tag_len());
        out.extend_from_slice(&period.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(&out[..4]),
            &mut body,
        )
        .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn open(&self, now: u32, cipher: &[u8]) -> Option<Vec<u8>> {
        let period = u32::from_be_bytes(cipher.get(..4)?.try_into().ok()?);
        if period != now && period.checked_add(1) != Some(now) {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = cipher.get(4..HEADER)?.try_into().ok()?;
        let mut body = cipher.get(HEADER..)?.to_vec();
        let key = self.key(period)?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&cipher[..4]),
                &mut body,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        // At least this long: a ticket made late in a period lives on through the next.
        u32::try_from(PERIOD_S).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(Self::period_now(), plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(Self::period_now(), cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: u8) -> TicketKeys {
        let k = TicketKeys::new("listener");
        k.set_secret([secret; 32]);
        k
    }

    #[test]
    fn opens_in_its_period_and_the_next_only() {
        let k = keys(1);
        let t = k.seal(100, b"session state").unwrap();
        assert_eq!(k.open(100, &t).as_deref(), Some(&b"session state"[..]));
        assert_eq!(k.open(101, &t).as_deref(), Some(&b"session state"[..]));
        assert_eq!(k.open(102, &t), None);
        assert_eq!(k.open(99, &t), None);
    }

    #[test]
    fn another_install_or_a_changed_byte_opens_nothing() {
        let t = keys(1).seal(7, b"x").unwrap();
        assert_eq!(keys(2).open(7, &t), None);
        // Another listener of the same install does not either.
        let other = TicketKeys::new("another listener");
        other.set_secret([1; 32]);
        assert_eq!(other.open(7, &t), None);
        // The same secret (a restart) opens it.
        assert_eq!(keys(1).open(7, &t).as_deref(), Some(&b"x"[..]));
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 1;
            assert_eq!(keys(1).open(7, &bad), None, "byte {i}");
        }
        for n in 0..t.len() {
            assert_eq!(keys(1).open(7, &t[..n]), None, "prefix {n}");
        }
    }

    #[test]
    fn without_a_secret_nothing_is_issued() {
        let k = TicketKeys::new("listener");
        assert_eq!(k.seal(1, b"x"), None);
    }
}
