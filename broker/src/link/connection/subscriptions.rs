//! The connection's own view of its subscriptions: what the router cannot answer (does
//! this filter exist, for UNSUBACK 0x11; which options was it made with, for No Local;
//! which of them a message matches, to send one copy of it for overlapping ones) and
//! what the router cannot serve at all (`$SYS` filters, delivered by the link).

use std::collections::HashMap;

use crate::link::codec::topic;

/// Options of one subscription that egress needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubOptions {
    pub(crate) qos: u8,
    pub(crate) no_local: bool,
    /// Its Subscription Identifier (MQTT 5).
    pub(crate) id: Option<usize>,
}

/// The one copy of a message that matches several plain subscriptions of a connection
/// [MQTT-3.3.4-2, -4]: the router delivers one per matching filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlap {
    /// The highest QoS among the matching subscriptions.
    pub(crate) qos: u8,
    /// Every matching subscription's identifier, ascending.
    pub(crate) ids: Vec<usize>,
    /// How many copies the router delivers (one per matching filter).
    pub(crate) copies: usize,
}

/// Filters this connection subscribed to (as written, `$share/...` included).
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    routed: HashMap<String, SubOptions>,
    /// `$SYS/...` filters, served by the link from [`crate::link::sys`].
    sys: crate::link::lazy::Lazy<HashMap<String, u8>>,
    /// The session was resumed: the router may hold subscriptions this link never saw.
    inherited: bool,
    /// Per plain filter: the offset, in the router's log of that filter, of the last
    /// message delivered on it (see [`Subscriptions::skipped`]).
    log_offsets: crate::link::lazy::Lazy<HashMap<String, u64>>,
    /// How many pairs of plain routed filters some topic could match both of: while 0,
    /// no message needs [`Subscriptions::overlap`]'s look at every filter.
    overlapping_pairs: usize,
}

/// Whether a filter is served by the link's `$SYS` publisher instead of the router.
pub(crate) fn is_sys(filter: &str) -> bool {
    filter == "$SYS" || filter.starts_with("$SYS/")
}

impl Subscriptions {
    /// Frees the `$SYS` and log-offset maps while they are empty.
    pub(crate) fn settle(&mut self) {
        self.sys.settle();
        self.log_offsets.settle();
    }

    pub(crate) fn new(session_present: bool) -> Subscriptions {
        Subscriptions {
            inherited: session_present,
            ..Subscriptions::default()
        }
    }

    /// Records a subscription; whether it replaced an existing one (for a resumed
    /// session: possibly existing, so `true` too).
    pub(crate) fn add(&mut self, filter: &str, options: SubOptions) -> bool {
        // A new subscription reads the router's log from its end.
        self.log_offsets.remove(filter);
        if is_sys(filter) {
            return self.sys.insert(filter.to_owned(), options.qos).is_some();
        }
        let replaced = self.routed.insert(filter.to_owned(), options).is_some();
        if !replaced {
            self.overlapping_pairs += self.overlapping_with(filter);
        }
        replaced || self.inherited
    }

    /// How many other plain routed filters overlap `filter` (itself plain and routed).
    fn overlapping_with(&self, filter: &str) -> usize {
        if topic::is_shared(filter) {
            return 0;
        }
        self.routed
            .keys()
            .filter(|f| f.as_str() != filter && !topic::is_shared(f))
            .filter(|f| topic::filters_overlap(f, filter))
            .count()
    }

    /// Removes a filter; whether a subscription existed (unknown for a resumed session,
    /// which then counts as existing).
    pub(crate) fn remove(&mut self, filter: &str) -> bool {
        self.log_offsets.remove(filter);
        let routed = self.routed.contains_key(filter);
        if routed {
            self.overlapping_pairs -= self.overlapping_with(filter);
            self.routed.remove(filter);
        }
        let known = routed || self.sys.remove(filter).is_some();
        known || (self.inherited && !is_sys(filter))
    }

    /// The one copy to send of a message on `topic_name` that several plain
    /// subscriptions match; `None` when at most one does (the router's copy is the one),
    /// or when a shared one does too (its copy is the group's, so every copy goes out
    /// as the router made it, which MQTT allows [MQTT-3.3.4-2]). With `own`, the
    /// connection published it, and No Local subscriptions do not count [MQTT-3.8.3-3]
    /// (though the router delivers on them too).
    pub(crate) fn overlap(&self, topic_name: &str, own: bool) -> Option<Overlap> {
        if self.overlapping_pairs == 0 {
            return None;
        }
        let mut copies = 0;
        let mut qos = None;
        let mut ids = Vec::new();
        for (filter, options) in &self.routed {
            if let Some((_, inner)) = topic::split_shared(filter) {
                if topic::matches(inner, topic_name) {
                    return None;
                }
                continue;
            }
            if !topic::matches(filter, topic_name) {
                continue;
            }
            copies += 1;
            if own && options.no_local {
                continue;
            }
            qos = qos.max(Some(options.qos));
            ids.extend(options.id);
        }
        ids.sort_unstable();
        let qos = qos.filter(|_| copies > 1)?;
        Some(Overlap { qos, ids, copies })
    }

    /// The copies the router would make of a message on `topic_name` for this
    /// connection's subscriptions, each as (QoS, identifiers ascending): one for all the
    /// plain ones it matches (at the highest of their QoS [MQTT-3.3.4-2, -4]) and one per
    /// matching `$share/` subscription, whose group has only this connection (MQTT 5
    /// §4.8.2: a shared subscription's copy comes besides the plain one). Empty when
    /// none matches. Only for devices, which never receive what they publish, so No
    /// Local does not come into it.
    pub(crate) fn copies_for(&self, topic_name: &str) -> Vec<(u8, Vec<usize>)> {
        let mut plain: Option<(u8, Vec<usize>)> = None;
        let mut copies = Vec::new();
        for (filter, options) in &self.routed {
            match topic::split_shared(filter) {
                Some((_, inner)) if topic::matches(inner, topic_name) => {
                    copies.push((options.qos, options.id.into_iter().collect()));
                }
                None if topic::matches(filter, topic_name) => {
                    let (qos, ids) = plain.get_or_insert((0, Vec::new()));
                    *qos = (*qos).max(options.qos);
                    ids.extend(options.id);
                }
                _ => {}
            }
        }
        if let Some((qos, mut ids)) = plain {
            ids.sort_unstable();
            ids.dedup();
            copies.insert(0, (qos, ids));
        }
        copies
    }

    /// Whether a message this connection published on `topic` must not come back to it:
    /// every subscription of ours that matches it asked for No Local [MQTT-3.8.3-3].
    pub(crate) fn no_local_blocks(&self, topic_name: &str) -> bool {
        let mut matching = self
            .routed
            .iter()
            .filter(|(f, _)| {
                let inner = topic::split_shared(f).map_or(f.as_str(), |(_, inner)| inner);
                topic::matches(inner, topic_name)
            })
            .peekable();
        matching.peek().is_some() && matching.all(|(_, o)| o.no_local)
    }

    /// Filters the router delivers QoS 1/2 messages on (what a congested connection
    /// holds publishers back for).
    pub(crate) fn qos_filters(&self) -> Vec<String> {
        self.routed
            .iter()
            .filter(|(_, o)| o.qos > 0)
            .map(|(f, _)| f.clone())
            .collect()
    }

    /// How many messages the router skipped before this one, which it delivered from
    /// offset `offset` of a filter's log: rumqttd moves a reader that fell behind its
    /// bounded per-filter log to the head without a word (`segments/mod.rs` `readv`), so
    /// the only trace of the loss is a step of more than one between the offsets of
    /// consecutive deliveries on that filter. A message is attributed to a filter only
    /// when exactly one plain (not shared) subscription matches its topic and no shared
    /// one does (shared groups see gaps by design); others are not checked.
    pub(crate) fn skipped(&mut self, topic_name: &str, offset: u64) -> u64 {
        let mut matching = self.routed.keys().filter(|f| match topic::split_shared(f) {
            Some((_, inner)) => topic::matches(inner, topic_name),
            None => topic::matches(f, topic_name),
        });
        let (Some(filter), None) = (matching.next(), matching.next()) else {
            return 0;
        };
        if topic::is_shared(filter) {
            return 0;
        }
        match self.log_offsets.get_mut(filter.as_str()) {
            Some(last) => {
                let gap = offset.saturating_sub(*last).saturating_sub(1);
                *last = (*last).max(offset);
                gap
            }
            None => {
                self.log_offsets.insert(filter.clone(), offset);
                0
            }
        }
    }

    /// `$SYS` filters and their QoS.
    pub(crate) fn sys_filters(&self) -> impl Iterator<Item = &str> + '_ {
        self.sys.keys().map(String::as_str)
    }

    pub(crate) fn has_sys(&self) -> bool {
        !self.sys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q0: SubOptions = SubOptions {
        qos: 0,
        no_local: false,
        id: None,
    };
    const NL: SubOptions = SubOptions {
        qos: 0,
        no_local: true,
        id: None,
    };

    fn with(qos: u8, id: usize) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            id: Some(id),
        }
    }

    #[test]
    fn overlap_merges_every_matching_plain_subscription() {
        let mut s = Subscriptions::new(false);
        s.add("a/+", with(0, 1));
        s.add("b/#", with(2, 9));
        assert_eq!(s.overlap("a/x", false), None, "disjoint filters: no look");
        s.add("a/#", with(2, 3));
        s.add("+/x", Q0);
        let want = Overlap {
            qos: 2,
            ids: vec![1, 3],
            copies: 3,
        };
        assert_eq!(s.overlap("a/x", false), Some(want));
        assert_eq!(s.overlap("a/y/z", false), None, "one filter matches");
        // No Local subscriptions still get the router's copy, but do not count.
        s.add("a/x", NL);
        let own = s.overlap("a/x", true).expect("overlap");
        assert_eq!((own.qos, own.copies), (2, 4));
        s.remove("a/#");
        s.remove("+/x");
        let own = s.overlap("a/x", true).expect("overlap");
        assert_eq!((own.qos, own.ids, own.copies), (0, vec![1], 2));
        // A shared subscription's copy is its group's: every copy goes out.
        s.add("$share/g/a/x", Q0);
        assert_eq!(s.overlap("a/x", false), None);
        s.remove("$share/g/a/x");
        s.remove("a/x");
        assert_eq!(s.overlapping_pairs, 0);
        assert_eq!(s.overlap("a/x", false), None);
    }

    #[test]
    fn replacing_a_subscription_keeps_the_overlap_count() {
        let mut s = Subscriptions::new(false);
        s.add("a/#", Q0);
        s.add("a/b", Q0);
        s.add("a/b", with(1, 5));
        assert_eq!(s.overlapping_pairs, 1);
        assert_eq!(s.overlap("a/b", false).map(|o| o.qos), Some(1));
        assert!(!s.remove("zzz"));
        s.remove("a/b");
        assert_eq!(s.overlapping_pairs, 0);
    }

    #[test]
    fn skipped_counts_steps_of_a_sole_plain_filter() {
        let mut s = Subscriptions::new(false);
        s.add("a/+", Q0);
        assert_eq!(s.skipped("a/x", 10), 0, "the first delivery sets the start");
        assert_eq!(s.skipped("a/y", 11), 0);
        assert_eq!(s.skipped("a/x", 15), 3);
        assert_eq!(s.skipped("a/x", 16), 0);
        // Re-subscribing starts from the log's end again.
        s.add("a/+", Q0);
        assert_eq!(s.skipped("a/x", 40), 0);
        assert_eq!(s.skipped("a/x", 41), 0);
        // Overlapping or shared subscriptions are not attributed.
        s.add("a/#", Q0);
        assert_eq!(s.skipped("a/x", 90), 0);
        let mut shared = Subscriptions::new(false);
        shared.add("$share/g/b/+", Q0);
        assert_eq!(shared.skipped("b/x", 1), 0);
        assert_eq!(shared.skipped("b/x", 9), 0);
    }

    #[test]
    fn remove_reports_whether_the_filter_existed() {
        let mut s = Subscriptions::new(false);
        s.add("a/+", Q0);
        s.add("$SYS/#", Q0);
        assert!(s.remove("a/+"));
        assert!(!s.remove("a/+"));
        assert!(s.remove("$SYS/#"));
        assert!(!s.has_sys());
        let mut resumed = Subscriptions::new(true);
        assert!(resumed.remove("x"));
    }

    #[test]
    fn no_local_needs_every_matching_subscription_to_ask_for_it() {
        let mut s = Subscriptions::new(false);
        s.add("a/b", NL);
        assert!(s.no_local_blocks("a/b"));
        assert!(!s.no_local_blocks("a/c"));
        s.add("a/#", Q0);
        assert!(!s.no_local_blocks("a/b"));
    }
}
