//! Failure backoff (`[mqtt.auth_backoff]`): slows password guessing without locking out
//! the device whose identity is guessed.
//!
//! Two tables of recent failed authentications (unknown user, wrong token or password,
//! client id not the device's), each entry forgotten a `window` after its last failure
//! or the end of its block:
//!
//! - **(identity, address)**: an identity (the username, else the client id) that failed
//!   `identity_failures` times from one address is refused from *that address only*,
//!   without its credentials being checked (cause `backoff`), for `initial`, doubling
//!   with each further failure up to `max`. The same identity from any other address is
//!   checked as usual, so a device with the right token connects while someone hammers
//!   its id with wrong ones from elsewhere. A success resets the pair it succeeded from.
//! - **address**: an address that failed `address_failures` times, whatever the
//!   identities, is refused the same way. The threshold is high because many devices
//!   can share one address (NAT); a success does not reset it, or one valid account
//!   would let its holder guess others' tokens at full speed. IPv6 addresses count by
//!   their /64, which one host usually has whole.
//!
//! Both tables are bounded (`max_tracked` each): at the bound, forgotten entries are
//! dropped first, then the one whose failure is oldest.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::settings::ConfigError;

/// `[mqtt.auth_backoff]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthBackoffConfig {
    pub identity_failures: Option<u32>,
    pub address_failures: Option<u32>,
    pub window_s: Option<u64>,
    pub initial_s: Option<u64>,
    pub max_s: Option<u64>,
    pub max_tracked: Option<usize>,
}

/// Validated `[mqtt.auth_backoff]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthBackoffConfig {
    /// Failures of one identity from one address before that pair is backed off; 0 = off.
    pub identity_failures: u32,
    /// Failures from one address, any identity, before it is backed off; 0 = off.
    pub address_failures: u32,
    /// How long after its last failure (or the end of its block) an entry is forgotten.
    pub window: Duration,
    /// The first block; each further failure doubles it.
    pub initial: Duration,
    /// The longest block.
    pub max: Duration,
    /// Entries per table.
    pub max_tracked: usize,
}

impl Default for AuthBackoffConfig {
    fn default() -> AuthBackoffConfig {
        AuthBackoffConfig {
            identity_failures: 5,
            address_failures: 50,
            window: Duration::from_secs(60),
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_tracked: 10_000,
        }
    }
}

impl RawAuthBackoffConfig {
    pub(crate) fn validate(self) -> Result<AuthBackoffConfig, ConfigError> {
        let d = AuthBackoffConfig::default();
        let secs = |key: &str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err(ConfigError::new(
                format!("mqtt.auth_backoff.{key}"),
                "must be at least 1",
            )),
            Some(s) => Ok(Duration::from_secs(s)),
        };
        let config = AuthBackoffConfig {
            identity_failures: self.identity_failures.unwrap_or(d.identity_failures),
            address_failures: self.address_failures.unwrap_or(d.address_failures),
            window: secs("window_s", self.window_s, d.window)?,
            initial: secs("initial_s", self.initial_s, d.initial)?,
            max: secs("max_s", self.max_s, d.max)?,
            max_tracked: self.max_tracked.unwrap_or(d.max_tracked),
        };
        if config.max < config.initial {
            return Err(ConfigError::new(
                "mqtt.auth_backoff.max_s",
                "must be at least mqtt.auth_backoff.initial_s",
            ));
        }
        if config.max_tracked == 0 {
            return Err(ConfigError::new(
                "mqtt.auth_backoff.max_tracked",
                "must be at least 1",
            ));
        }
        Ok(config)
    }
}

/// Which table refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// This identity from this address.
    Identity,
    /// This address.
    Address,
}

/// The two tables.
pub(crate) struct AuthBackoff {
    config: AuthBackoffConfig,
    identities: Mutex<Table<(String, IpAddr)>>,
    addresses: Mutex<Table<IpAddr>>,
}

impl AuthBackoff {
    pub(crate) fn new(config: AuthBackoffConfig) -> AuthBackoff {
        AuthBackoff {
            config,
            identities: Mutex::new(Table::default()),
            addresses: Mutex::new(Table::default()),
        }
    }

    /// Whether an attempt of `identity` from `ip` is to be refused unchecked.
    pub(crate) fn check(
        &self,
        identity: Option<&str>,
        ip: IpAddr,
        now: Instant,
    ) -> Option<Blocked> {
        let ip = address_key(ip);
        if lock(&self.addresses).blocked(&ip, now) {
            return Some(Blocked::Address);
        }
        let identity = identity?;
        let pair = (identity.to_owned(), ip);
        lock(&self.identities)
            .blocked(&pair, now)
            .then_some(Blocked::Identity)
    }

    /// A failed authentication of `identity` from `ip`.
    pub(crate) fn failed(&self, identity: Option<&str>, ip: IpAddr, now: Instant) {
        let ip = address_key(ip);
        let c = &self.config;
        if c.address_failures > 0 {
            lock(&self.addresses).failed(ip, now, c, c.address_failures);
        }
        if let (Some(identity), true) = (identity, c.identity_failures > 0) {
            let pair = (identity.to_owned(), ip);
            lock(&self.identities).failed(pair, now, c, c.identity_failures);
        }
    }

    /// A successful authentication: the pair starts over.
    pub(crate) fn succeeded(&self, identity: Option<&str>, ip: IpAddr) {
        if let Some(identity) = identity {
            let pair = (identity.to_owned(), address_key(ip));
            lock(&self.identities).entries.remove(&pair);
        }
    }

    /// Entries currently blocking: (identity pairs, addresses).
    pub(crate) fn blocking(&self, now: Instant) -> (usize, usize) {
        (
            lock(&self.identities).blocking(now),
            lock(&self.addresses).blocking(now),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An IPv6 address counts by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

struct Table<K> {
    entries: HashMap<K, Entry>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            entries: HashMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Failures since the entry was last forgotten.
    failures: u32,
    blocked_until: Option<Instant>,
    last_failure: Instant,
    /// When it is forgotten: a window after its last failure or the end of its block.
    forget_at: Instant,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn blocked(&self, key: &K, now: Instant) -> bool {
        (self.entries.get(key))
            .and_then(|e| e.blocked_until)
            .is_some_and(|until| now < until)
    }

    fn failed(&mut self, key: K, now: Instant, c: &AuthBackoffConfig, threshold: u32) {
        if !self.entries.contains_key(&key) {
            self.make_room(now, c.max_tracked);
        }
        let entry = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            blocked_until: None,
            last_failure: now,
            forget_at: now,
        });
        if now >= entry.forget_at {
            entry.failures = 0;
            entry.blocked_until = None;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures >= threshold {
            let doublings = (entry.failures - threshold).min(31);
            let block = c.initial.saturating_mul(1 << doublings).min(c.max);
            entry.blocked_until = Some(now + block);
        }
        entry.forget_at = entry.blocked_until.unwrap_or(now).max(now) + c.window;
    }

    /// Drops forgotten entries, then the oldest failure, until one more fits.
    fn make_room(&mut self, now: Instant, max: usize) {
        if self.entries.len() < max {
            return;
        }
        self.entries.retain(|_, e| now < e.forget_at);
        while self.entries.len() >= max {
            let oldest = (self.entries.iter())
                .min_by_key(|(_, e)| e.last_failure)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.entries.remove(&k),
                None => break,
            };
        }
    }

    fn blocking(&self, now: Instant) -> usize {
        (self.entries.values())
            .filter(|e| e.blocked_until.is_some_and(|until| now < until))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthBackoffConfig {
        AuthBackoffConfig {
            identity_failures: 3,
            address_failures: 10,
            window: Duration::from_secs(60),
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
            max_tracked: 4,
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn an_identity_is_blocked_from_the_failing_address_only_and_doubles() {
        let b = AuthBackoff::new(AuthBackoffConfig {
            address_failures: 0,
            ..config()
        });
        let t = Instant::now();
        for _ in 0..2 {
            b.failed(Some("dev"), A, t);
        }
        assert_eq!(b.check(Some("dev"), A, t), None);
        b.failed(Some("dev"), A, t);
        assert_eq!(b.check(Some("dev"), A, t), Some(Blocked::Identity));
        assert_eq!(b.check(Some("dev"), B, t), None);
        assert_eq!(b.check(Some("other"), A, t), None);
        let after = |s| t + Duration::from_secs(s);
        assert_eq!(b.check(Some("dev"), A, after(1)), None);
        // Each further failure doubles the block, up to `max`.
        b.failed(Some("dev"), A, after(1));
        assert!(b.check(Some("dev"), A, after(2)).is_some());
        assert!(b.check(Some("dev"), A, after(3)).is_none());
        for _ in 0..5 {
            b.failed(Some("dev"), A, after(3));
        }
        assert!(b.check(Some("dev"), A, after(10)).is_some());
        assert!(b.check(Some("dev"), A, after(11)).is_none());
        // A success starts the pair over.
        b.succeeded(Some("dev"), A);
        b.failed(Some("dev"), A, after(11));
        assert!(b.check(Some("dev"), A, after(11)).is_none());
        // So does a quiet window.
        for _ in 0..3 {
            b.failed(Some("dev"), B, after(20));
        }
        b.failed(Some("dev"), B, after(100));
        assert!(b.check(Some("dev"), B, after(100)).is_none());
    }

    #[test]
    fn an_address_is_blocked_after_failures_with_any_identity() {
        let b = AuthBackoff::new(config());
        let t = Instant::now();
        for i in 0..10 {
            b.failed(Some(&format!("d{i}")), A, t);
        }
        assert_eq!(b.check(Some("fresh"), A, t), Some(Blocked::Address));
        assert_eq!(b.check(None, A, t), Some(Blocked::Address));
        assert_eq!(b.check(Some("fresh"), B, t), None);
        assert_eq!(b.blocking(t), (0, 1));
    }

    #[test]
    fn tables_are_bounded() {
        let b = AuthBackoff::new(config());
        let t = Instant::now();
        for i in 0..100u8 {
            let ip = IpAddr::from([10, 1, 0, i]);
            b.failed(Some("dev"), ip, t + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(lock(&b.identities).entries.len(), 4);
        assert_eq!(lock(&b.addresses).entries.len(), 4);
        // The newest stay.
        let newest = ("dev".to_owned(), IpAddr::from([10, 1, 0, 99]));
        assert!(lock(&b.identities).entries.contains_key(&newest));
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), A);
    }
}
