//! What one connection has done, for `GET /api/v1/clients/{client_id}`: four counters
//! bumped on paths that already run (reads, writes, PUBLISH in and out), drops by cause
//! in a table allocated at the first drop, and the snapshot the connection builds when
//! asked through its control queue (`Control::Snapshot`). An idle connection carries
//! five words for all of it.

use std::collections::BTreeMap;

use crate::client::{ClientCounters, ClientDetail, ClientInfo, SubscriptionInfo};
use crate::link::connection::Connection;
use crate::link::session::store::NEVER;
use crate::stats::DropCause;

/// MQTT's PUBLISH packet type.
const PUBLISH: u8 = 3;

/// Per-connection counters.
#[derive(Debug, Default)]
pub(crate) struct ConnCounters {
    messages_in: u64,
    messages_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Per [`DropCause`] (by `cause as usize`); none until the first drop.
    drops: Option<Box<[u32; DropCause::ALL.len()]>>,
}

impl ConnCounters {
    pub(crate) fn read(&mut self, n: usize) {
        self.bytes_in += n as u64;
    }

    pub(crate) fn written(&mut self, n: usize) {
        self.bytes_out += n as u64;
    }

    pub(crate) fn packet_in(&mut self, packet_type: u8) {
        if packet_type == PUBLISH {
            self.messages_in += 1;
        }
    }

    pub(crate) fn packet_out(&mut self, packet_type: u8) {
        if packet_type == PUBLISH {
            self.messages_out += 1;
        }
    }

    pub(crate) fn dropped(&mut self, cause: DropCause) {
        let drops = self.drops.get_or_insert_with(Default::default);
        let n = &mut drops[cause as usize];
        *n = n.saturating_add(1);
    }

    fn dropped_by_cause(&self) -> BTreeMap<&'static str, u64> {
        let Some(drops) = &self.drops else {
            return BTreeMap::new();
        };
        DropCause::ALL
            .iter()
            .zip(drops.iter())
            .filter(|(_, &n)| n > 0)
            .map(|(cause, &n)| (cause.name(), u64::from(n)))
            .collect()
    }
}

/// The parts of a `$share/{group}/{filter}` filter: its group.
fn share_group(filter: &str) -> Option<String> {
    let rest = filter.strip_prefix("$share/")?;
    rest.split_once('/').map(|(group, _)| group.to_owned())
}

impl Connection {
    /// Counts a drop of this connection's, in the broker's counters and its own.
    pub(crate) fn dropped(&mut self, cause: DropCause) {
        self.core.stats.dropped(cause);
        self.counters.dropped(cause);
    }

    /// Counts a packet read from the client, in the broker's counters and its own.
    pub(crate) fn packet_in(&mut self, packet_type: u8) {
        self.core.stats.packet_in(packet_type);
        self.counters.packet_in(packet_type);
    }

    /// The connection as the admin API shows it.
    pub(crate) fn snapshot(&self, info: ClientInfo) -> ClientDetail {
        let subscriptions = self
            .sess
            .subs
            .values()
            .map(|s| SubscriptionInfo {
                filter: s.filter.clone(),
                qos: s.qos,
                no_local: s.no_local,
                retain_as_published: s.retain_as_published,
                retain_handling: s.retain_handling,
                subscription_id: s.id,
                share_group: share_group(&s.filter),
            })
            .collect();
        let c = &self.counters;
        let counters = ClientCounters {
            messages_in: c.messages_in,
            messages_out: c.messages_out,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            dropped_by_cause: c.dropped_by_cause(),
            inflight_out: self.queue.inflight_len(),
            inflight_in: self.inbound_qos2.ids().len(),
            queued_out: self.queue.pending_len(),
        };
        let start = &self.sess.start;
        // 0: the session ends with the connection; `None`: it never expires.
        let expiry = match (start.persistent, start.expiry_s) {
            (false, _) => Some(0),
            (true, NEVER) => None,
            (true, s) => Some(s),
        };
        ClientDetail {
            info,
            keepalive_s: Some(self.s.keep_alive),
            clean_start: Some(start.clean_start),
            session_persistent: Some(start.persistent),
            session_expiry_s: expiry,
            subscriptions,
            counters: Some(counters),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_publishes_bytes_and_drops_by_cause() {
        let mut c = ConnCounters::default();
        c.packet_in(3);
        c.packet_in(12);
        c.packet_out(3);
        c.packet_out(3);
        c.read(10);
        c.written(7);
        assert!(c.dropped_by_cause().is_empty());
        c.dropped(DropCause::AclPublish);
        c.dropped(DropCause::AclPublish);
        c.dropped(DropCause::SlowConsumer);
        assert_eq!((c.messages_in, c.messages_out), (1, 2));
        assert_eq!((c.bytes_in, c.bytes_out), (10, 7));
        let drops = c.dropped_by_cause();
        assert_eq!(drops.get("acl_publish"), Some(&2));
        assert_eq!(drops.get("slow_consumer"), Some(&1));
        assert_eq!(drops.len(), 2);
    }

    #[test]
    fn share_groups() {
        assert_eq!(share_group("$share/g1/a/b").as_deref(), Some("g1"));
        assert_eq!(share_group("a/b"), None);
        assert_eq!(share_group("$share/g"), None);
    }
}
