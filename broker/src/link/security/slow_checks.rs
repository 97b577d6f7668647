//! The gate in front of PBKDF2 (service-client passwords, device tokens stored before
//! keyed hashes): what a flood of wrong passwords can make the broker compute is bounded.
//!
//! - At most one check per core runs at a time (on the blocking pool).
//! - Each address has at most [`PER_PEER`] checks in the shared queue or running; its
//!   others wait behind them (at most [`PER_PEER_WAITING`], more are refused at once,
//!   `auth_busy`), so one peer cannot queue work ahead of everyone else, while a fleet
//!   behind one NAT address still gets through, two at a time.
//! - At most [`WAITING_PER_CORE`] checks per core wait for a turn, and none waits longer
//!   than `mqtt.connect_timeout_s`; past either the CONNECT is refused (`auth_busy`)
//!   without any hashing. A check whose connection is dropped while it waits never runs.
//! - An unknown username is answered after the time a check takes (an async sleep of the
//!   measured duration, no CPU), so timing does not tell which service clients exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetmq_storage::CredentialHash;
use tokio::sync::Semaphore;

/// Checks one address may have in the shared queue or running.
pub(crate) const PER_PEER: usize = 2;
/// Checks one address may have waiting for those.
pub(crate) const PER_PEER_WAITING: usize = 64;
/// Checks that may wait for a turn, per core.
const WAITING_PER_CORE: usize = 8;
/// A first guess of one check's duration (PBKDF2-HMAC-SHA256, 100,000 rounds), until
/// one was measured.
const FIRST_ESTIMATE: Duration = Duration::from_millis(20);

/// Why a check did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotChecked {
    /// Too many checks for this address, or waiting overall, or for too long.
    Busy,
    /// The blocking pool failed (shutdown).
    Unavailable,
}

pub(crate) struct SlowChecks {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
    /// Per address: its turns, and how many checks hold or wait for one.
    per_peer: Mutex<HashMap<IpAddr, (Arc<Semaphore>, usize)>>,
    /// Moving average of one check's duration, microseconds.
    estimate_us: AtomicU64,
}

impl SlowChecks {
    /// `cores` checks at a time; a check waits at most `max_wait` for its turn.
    pub(crate) fn new(cores: usize, max_wait: Duration) -> SlowChecks {
        let cores = cores.max(1);
        SlowChecks {
            running: Arc::new(Semaphore::new(cores)),
            waiting: AtomicUsize::new(0),
            max_waiting: cores * WAITING_PER_CORE,
            max_wait,
            per_peer: Mutex::new(HashMap::new()),
            estimate_us: AtomicU64::new(FIRST_ESTIMATE.as_micros() as u64),
        }
    }

    /// Whether `secret` matches `stored`, checked on the blocking pool when the gate
    /// lets it through.
    pub(crate) async fn verify(
        &self,
        peer: IpAddr,
        stored: CredentialHash,
        secret: &[u8],
    ) -> Result<bool, NotChecked> {
        let slot = PeerSlot::join(self, peer).ok_or(NotChecked::Busy)?;
        let _turn = match tokio::time::timeout(self.max_wait, slot.turn()).await {
            Ok(Some(turn)) => turn,
            Ok(None) => return Err(NotChecked::Unavailable),
            Err(_) => return Err(NotChecked::Busy),
        };
        let permit = {
            let _waiting = Waiting::enter(self).ok_or(NotChecked::Busy)?;
            let acquire = self.running.clone().acquire_owned();
            match tokio::time::timeout(self.max_wait, acquire).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(NotChecked::Unavailable),
                Err(_) => return Err(NotChecked::Busy),
            }
        };
        let secret = secret.to_vec();
        let (matched, took) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            let matched = stored.verify(&secret);
            (matched, started.elapsed())
        })
        .await
        .map_err(|_| NotChecked::Unavailable)?;
        self.learn(took);
        Ok(matched)
    }

    /// Waits as long as a check takes, without computing anything.
    pub(crate) async fn pause_like_a_check(&self) {
        tokio::time::sleep(self.estimate()).await;
    }

    /// The measured duration of one check.
    pub(crate) fn estimate(&self) -> Duration {
        Duration::from_micros(self.estimate_us.load(Relaxed))
    }

    fn learn(&self, took: Duration) {
        let took = took.as_micros().min(u128::from(u32::MAX)) as u64;
        let old = self.estimate_us.load(Relaxed);
        // A moving average over about eight checks.
        let new = old - old / 8 + took / 8;
        self.estimate_us.store(new.max(1), Relaxed);
    }
}

/// A check counted against its address (at most [`PER_PEER`] + [`PER_PEER_WAITING`]),
/// until dropped.
struct PeerSlot<'a> {
    gate: &'a SlowChecks,
    peer: IpAddr,
    turns: Arc<Semaphore>,
}

impl<'a> PeerSlot<'a> {
    fn join(gate: &'a SlowChecks, peer: IpAddr) -> Option<PeerSlot<'a>> {
        let mut map = gate.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let (turns, users) = map
            .entry(peer)
            .or_insert_with(|| (Arc::new(Semaphore::new(PER_PEER)), 0));
        if *users >= PER_PEER + PER_PEER_WAITING {
            return None;
        }
        *users += 1;
        Some(PeerSlot {
            gate,
            peer,
            turns: turns.clone(),
        })
    }

    /// One of the address's [`PER_PEER`] turns.
    async fn turn(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.turns.clone().acquire_owned().await.ok()
    }
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.gate.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, users)) = map.get_mut(&self.peer) {
            *users -= 1;
            if *users == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Counts a check among those waiting for a turn while it lives.
struct Waiting<'a>(&'a SlowChecks);

impl<'a> Waiting<'a> {
    fn enter(gate: &'a SlowChecks) -> Option<Waiting<'a>> {
        let before = gate.waiting.fetch_add(1, Relaxed);
        if before >= gate.max_waiting {
            gate.waiting.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Waiting(gate))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(secret: &[u8]) -> CredentialHash {
        CredentialHash::new(secret)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_address_gets_its_turns_and_a_bounded_queue_and_others_are_not_held_up() {
        let gate = Arc::new(SlowChecks::new(1, Duration::from_secs(10)));
        let stored = hash(b"right");
        let attacker: IpAddr = [10, 0, 0, 1].into();
        let mut floods = Vec::new();
        for _ in 0..PER_PEER + PER_PEER_WAITING + 4 {
            let (gate, stored) = (gate.clone(), stored.clone());
            floods.push(tokio::spawn(async move {
                gate.verify(attacker, stored, b"wrong").await
            }));
        }
        let mut results = Vec::new();
        for f in floods {
            results.push(f.await.unwrap());
        }
        let busy = results
            .iter()
            .filter(|r| **r == Err(NotChecked::Busy))
            .count();
        assert!(busy >= 4, "one address's queue is bounded: {results:?}");
        let checked = results.iter().filter(|r| **r == Ok(false)).count();
        assert!(checked >= PER_PEER, "{results:?}");
        let other: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(gate.verify(other, stored, b"right").await, Ok(true));
        assert!(gate.per_peer.lock().unwrap().is_empty(), "slots given back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_that_waits_too_long_is_refused_without_hashing() {
        let gate = Arc::new(SlowChecks::new(1, Duration::from_millis(1)));
        // The only turn is taken.
        let held = gate.running.clone().acquire_owned().await.unwrap();
        let r = gate.verify([10, 0, 0, 3].into(), hash(b"x"), b"x").await;
        assert_eq!(r, Err(NotChecked::Busy));
        drop(held);
        assert_eq!(gate.waiting.load(Relaxed), 0);
        let r = gate.verify([10, 0, 0, 3].into(), hash(b"x"), b"x").await;
        assert_eq!(r, Ok(true));
        assert!(gate.estimate() > Duration::ZERO);
    }
}
