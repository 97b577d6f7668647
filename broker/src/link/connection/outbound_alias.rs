//! Outbound MQTT 5 topic aliases (§3.3.2.3.4): when a client's CONNECT carries a Topic
//! Alias Maximum, the PUBLISHes the link writes it name a repeated topic by alias.
//!
//! Aliases are given first come, first served (as Mosquitto does): the first PUBLISH of a
//! topic carries the topic and a new alias, later ones an empty topic and that alias.
//! Once every alias is taken, other topics go in full; an alias is never pointed at
//! another topic, so a client never sees a mapping change under it, and a fleet device
//! (a handful of topics for its whole connection) has all of its own aliased. Aliases
//! belong to one network connection [MQTT-3.3.2-7]: each connection starts with an empty
//! table, and a re-sent PUBLISH (DUP, after a reconnect) always names its topic in full.

use std::collections::HashMap;

/// Aliases used towards one client at most, whatever its Topic Alias Maximum: each one
/// keeps its topic in memory for the life of the connection.
const MAX_ALIASES: u16 = 1024;

/// How one PUBLISH names its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopicRef {
    /// The topic, no alias.
    Full,
    /// The topic and a new alias for it.
    Set(u16),
    /// An empty topic and the topic's alias.
    Alias(u16),
}

impl TopicRef {
    /// The Topic Alias property to send, if any.
    pub(crate) fn alias(self) -> Option<u16> {
        match self {
            TopicRef::Full => None,
            TopicRef::Set(a) | TopicRef::Alias(a) => Some(a),
        }
    }

    /// The topic name to write: empty when the alias stands for it.
    pub(crate) fn topic(self, topic: &str) -> &[u8] {
        match self {
            TopicRef::Alias(_) => b"",
            TopicRef::Full | TopicRef::Set(_) => topic.as_bytes(),
        }
    }
}

/// One connection's aliases towards its client.
#[derive(Debug)]
pub(crate) struct OutboundAliases {
    max: u16,
    by_topic: crate::link::lazy::Lazy<HashMap<String, u16>>,
}

impl OutboundAliases {
    /// Frees the map while it is empty.
    pub(crate) fn settle(&mut self) {
        self.by_topic.settle();
    }

    /// For a client that accepts aliases up to `client_max` (0: none, and 3.1.1 clients).
    pub(crate) fn new(client_max: u16) -> OutboundAliases {
        OutboundAliases {
            max: client_max.min(MAX_ALIASES),
            by_topic: Default::default(),
        }
    }

    /// How the next PUBLISH of `topic` names it; a re-send (`dup`) always in full.
    pub(crate) fn choose(&self, topic: &str, dup: bool) -> TopicRef {
        if dup || self.max == 0 {
            return TopicRef::Full;
        }
        if let Some(&alias) = self.by_topic.get(topic) {
            return TopicRef::Alias(alias);
        }
        match u16::try_from(self.by_topic.len()) {
            Ok(n) if n < self.max => TopicRef::Set(n + 1),
            _ => TopicRef::Full,
        }
    }

    /// A PUBLISH naming `topic` as `how` was written: a new alias stands for it from now.
    pub(crate) fn written(&mut self, topic: &str, how: TopicRef) {
        if let TopicRef::Set(alias) = how {
            self.by_topic.insert(topic.to_owned(), alias);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_come_first_served_and_never_reassigned() {
        let mut a = OutboundAliases::new(2);
        assert_eq!(a.choose("t/1", false), TopicRef::Set(1));
        // Not written (e.g. over the client's Maximum Packet Size): nothing is taken.
        assert_eq!(a.choose("t/1", false), TopicRef::Set(1));
        a.written("t/1", TopicRef::Set(1));
        assert_eq!(a.choose("t/1", false), TopicRef::Alias(1));
        a.written("t/1", TopicRef::Alias(1));
        let t2 = a.choose("t/2", false);
        a.written("t/2", t2);
        assert_eq!(t2, TopicRef::Set(2));
        // Every alias taken: a third topic goes in full, the first two keep theirs.
        assert_eq!(a.choose("t/3", false), TopicRef::Full);
        a.written("t/3", TopicRef::Full);
        assert_eq!(a.choose("t/3", false), TopicRef::Full);
        assert_eq!(a.choose("t/2", false), TopicRef::Alias(2));
        // A re-send names its topic in full.
        assert_eq!(a.choose("t/1", true), TopicRef::Full);
        assert_eq!(TopicRef::Alias(1).topic("t/1"), b"");
        assert_eq!(TopicRef::Set(1).topic("t/1"), b"t/1");
    }

    #[test]
    fn no_aliases_without_a_topic_alias_maximum() {
        let a = OutboundAliases::new(0);
        assert_eq!(a.choose("t", false), TopicRef::Full);
        assert_eq!(OutboundAliases::new(u16::MAX).max, MAX_ALIASES);
    }
}
