//! The recent refused connection attempts (`GET /api/v1/connections/refused`): a bounded
//! ring that a flood cannot churn.
//!
//! - Repeats collapse: an attempt with the same (peer address, client id, cause) as an
//!   entry still in the ring bumps that entry's count and time and moves it to the front,
//!   whatever the rate. A device retrying with a stale token every few seconds is one
//!   entry, not the whole ring.
//! - New entries are rate-limited: at most `per_second` per second enter; the rest are
//!   counted (`suppressed`) but not kept, so attempts from thousands of addresses cannot
//!   push out what an operator is looking at faster than that.
//! - At `capacity`, the least recently seen entry goes.
//!
//! Everything here is in memory and behind one short lock that is never held across
//! an `.await`; a restart starts empty.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::RefusedConnect;

/// Default bound of the ring.
pub(crate) const DEFAULT_CAPACITY: usize = 256;
/// Default number of new entries per second.
pub(crate) const DEFAULT_PER_SECOND: u32 = 20;

/// How the ring is bounded (not config keys: tests shrink them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLogConfig {
    /// Entries kept.
    pub capacity: usize,
    /// New entries admitted per second; repeats of a kept entry always collapse into it.
    pub per_second: u32,
}

impl Default for RefusalLogConfig {
    fn default() -> RefusalLogConfig {
        RefusalLogConfig {
            capacity: DEFAULT_CAPACITY,
            per_second: DEFAULT_PER_SECOND,
        }
    }
}

/// What became of one recorded attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// A new entry.
    New,
    /// Folded into an entry already kept.
    Repeat,
    /// Over the rate of new entries: counted only.
    Suppressed,
}

/// One page of the ring, newest first.
#[derive(Debug, Clone)]
pub struct RefusalPage {
    pub items: Vec<RefusedConnect>,
    /// Pass as `before` for the next page.
    pub next_cursor: Option<u64>,
    /// Attempts not kept because new entries came faster than the rate.
    pub suppressed: u64,
}

pub(crate) struct RefusalLog {
    config: RefusalLogConfig,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Oldest at the front; each with its sequence number (its cursor).
    entries: VecDeque<(u64, RefusedConnect)>,
    next_seq: u64,
    /// The current one-second window of the rate limit, and what it admitted.
    window_start: Option<Instant>,
    admitted: u32,
    suppressed: u64,
}

impl RefusalLog {
    pub(crate) fn new(config: RefusalLogConfig) -> RefusalLog {
        RefusalLog {
            config,
            inner: Mutex::new(Inner {
                entries: VecDeque::with_capacity(config.capacity.min(1024)),
                next_seq: 1,
                window_start: None,
                admitted: 0,
                suppressed: 0,
            }),
        }
    }

    /// Records one attempt (`entry.count` is ignored: it counts as one) seen at `now`.
    pub(crate) fn record(&self, entry: RefusedConnect, now: Instant) -> Recorded {
        if self.config.capacity == 0 {
            return Recorded::Suppressed;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let same = |(_, kept): &(u64, RefusedConnect)| {
            kept.cause == entry.cause
                && kept.client_id == entry.client_id
                && ip(kept) == entry.peer.ip()
        };
        if let Some(at) = inner.entries.iter().position(same) {
            let (_, mut kept) = inner.entries.remove(at).unwrap_or((0, entry.clone()));
            kept.count += 1;
            kept.at_ms = entry.at_ms;
            kept.peer = entry.peer;
            kept.username = entry.username;
            kept.protocol = entry.protocol.or(kept.protocol);
            kept.transport = entry.transport;
            inner.entries.push_back((seq, kept));
            return Recorded::Repeat;
        }
        if !inner.admit(now, self.config.per_second) {
            inner.suppressed += 1;
            return Recorded::Suppressed;
        }
        if inner.entries.len() >= self.config.capacity {
            inner.entries.pop_front();
        }
        let entry = RefusedConnect {
            count: 1,
            first_at_ms: entry.at_ms,
            ..entry
        };
        inner.entries.push_back((seq, entry));
        Recorded::New
    }

    /// Up to `limit` entries, newest first, older than the cursor `before` if given;
    /// only those whose client id or username is `identity` if given.
    pub(crate) fn page(
        &self,
        identity: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> RefusalPage {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let matches = |e: &RefusedConnect| {
            identity.is_none_or(|id| {
                e.client_id.as_deref() == Some(id) || e.username.as_deref() == Some(id)
            })
        };
        let mut chosen = (inner.entries.iter().rev())
            .filter(|(seq, e)| before.is_none_or(|b| *seq < b) && matches(e));
        let items: Vec<(u64, RefusedConnect)> = chosen.by_ref().take(limit).cloned().collect();
        let more = chosen.next().is_some();
        RefusalPage {
            next_cursor: if more {
                items.last().map(|(seq, _)| *seq)
            } else {
                None
            },
            items: items.into_iter().map(|(_, e)| e).collect(),
            suppressed: inner.suppressed,
        }
    }
}

impl Inner {
    /// Whether one more new entry fits this second.
    fn admit(&mut self, now: Instant, per_second: u32) -> bool {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= Duration::from_secs(1));
        if fresh {
            self.window_start = Some(now);
            self.admitted = 0;
        }
        if self.admitted >= per_second {
            return false;
        }
        self.admitted += 1;
        true
    }
}

fn ip(entry: &RefusedConnect) -> IpAddr {
    entry.peer.ip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Transport;
    use crate::stats::RefusalCause;

    fn attempt(ip: [u8; 4], port: u16, client_id: &str, cause: RefusalCause) -> RefusedConnect {
        RefusedConnect {
            at_ms: 1,
            first_at_ms: 1,
            peer: (ip, port).into(),
            client_id: Some(client_id.to_owned()),
            username: Some(client_id.to_owned()),
            protocol: Some("5"),
            transport: Transport::Tcp,
            cause,
            count: 1,
        }
    }

    #[test]
    fn repeats_collapse_whatever_the_port_and_move_to_the_front() {
        let log = RefusalLog::new(RefusalLogConfig::default());
        let t = Instant::now();
        let wrong = RefusalCause::WrongToken;
        assert_eq!(
            log.record(attempt([10, 0, 0, 1], 1, "a", wrong), t),
            Recorded::New
        );
        assert_eq!(
            log.record(attempt([10, 0, 0, 1], 2, "b", wrong), t),
            Recorded::New
        );
        for port in 3..10 {
            let r = log.record(attempt([10, 0, 0, 1], port, "a", wrong), t);
            assert_eq!(r, Recorded::Repeat);
        }
        // Another cause, or another address, is another entry.
        let backoff = attempt([10, 0, 0, 1], 1, "a", RefusalCause::Backoff);
        assert_eq!(log.record(backoff, t), Recorded::New);
        assert_eq!(
            log.record(attempt([10, 0, 0, 2], 1, "a", wrong), t),
            Recorded::New
        );
        let page = log.page(None, None, 10);
        let seen: Vec<_> = (page.items.iter())
            .map(|e| {
                (
                    e.client_id.as_deref().unwrap(),
                    e.peer.port(),
                    e.cause,
                    e.count,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("a", 1, wrong, 1),
                ("a", 1, RefusalCause::Backoff, 1),
                ("a", 9, wrong, 8),
                ("b", 2, wrong, 1),
            ]
        );
        assert_eq!(log.page(Some("b"), None, 10).items.len(), 1);
    }

    #[test]
    fn bounded_and_rate_limited() {
        let log = RefusalLog::new(RefusalLogConfig {
            capacity: 4,
            per_second: 3,
        });
        let t = Instant::now();
        let c = RefusalCause::UnknownDevice;
        let recorded: Vec<_> = (0..5u8)
            .map(|i| log.record(attempt([10, 0, 0, i], 1, "x", c), t))
            .collect();
        use Recorded::{New, Suppressed};
        assert_eq!(recorded, [New, New, New, Suppressed, Suppressed]);
        // A repeat still collapses past the rate.
        let r = log.record(attempt([10, 0, 0, 0], 1, "x", c), t);
        assert_eq!(r, Recorded::Repeat);
        // A second later, the ring takes new entries again, and drops the oldest.
        let later = t + Duration::from_secs(1);
        for i in 10..13u8 {
            assert_eq!(log.record(attempt([10, 0, 0, i], 1, "x", c), later), New);
        }
        let page = log.page(None, None, 100);
        let ips: Vec<_> = page.items.iter().map(|e| e.peer.ip().to_string()).collect();
        assert_eq!(ips, ["10.0.0.12", "10.0.0.11", "10.0.0.10", "10.0.0.0"]);
        assert_eq!(page.suppressed, 2);
        // Pages follow the cursor.
        let first = log.page(None, None, 3);
        assert_eq!(first.items.len(), 3);
        let rest = log.page(None, first.next_cursor, 3);
        assert_eq!(rest.items.len(), 1);
        assert_eq!(rest.items[0].peer.ip().to_string(), "10.0.0.0");
        assert_eq!(rest.next_cursor, None);
    }
}
