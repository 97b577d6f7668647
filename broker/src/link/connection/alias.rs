//! Inbound MQTT 5 topic aliases (§3.3.2.3.4), resolved per connection before the ACL
//! sees the topic. The router never sees an alias (its own alias handling is keyed by
//! filter and is not used).

use std::collections::HashMap;

/// Why an alias cannot be used; the connection ends with DISCONNECT 0x94 (or 0x82).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AliasError {
    /// 0, or above the Topic Alias Maximum we announced [MQTT-3.3.2-8, -9].
    OutOfRange(u16),
    /// An empty topic with an alias that was never set [MQTT-3.3.4-?].
    Unknown(u16),
    /// An empty topic without an alias.
    EmptyTopic,
}

/// A connection's alias table (at most `max` entries).
#[derive(Debug)]
pub(crate) struct InboundAliases {
    max: u16,
    map: crate::link::lazy::Lazy<HashMap<u16, String>>,
}

impl InboundAliases {
    /// Frees the map while it is empty.
    pub(crate) fn settle(&mut self) {
        self.map.settle();
    }

    pub(crate) fn new(max: u16) -> InboundAliases {
        InboundAliases {
            max,
            map: Default::default(),
        }
    }

    /// The topic a PUBLISH is for: `topic` itself (remembered under `alias` if given), or
    /// the topic `alias` stands for when `topic` is empty.
    pub(crate) fn resolve(
        &mut self,
        topic: &str,
        alias: Option<u16>,
    ) -> Result<String, AliasError> {
        let Some(alias) = alias else {
            if topic.is_empty() {
                return Err(AliasError::EmptyTopic);
            }
            return Ok(topic.to_owned());
        };
        if alias == 0 || alias > self.max {
            return Err(AliasError::OutOfRange(alias));
        }
        if topic.is_empty() {
            return self
                .map
                .get(&alias)
                .cloned()
                .ok_or(AliasError::Unknown(alias));
        }
        self.map.insert(alias, topic.to_owned());
        Ok(topic.to_owned())
    }

    /// The topic a PUBLISH would resolve to, without remembering anything.
    pub(crate) fn peek<'a>(&'a self, topic: &'a str, alias: Option<u16>) -> Option<&'a str> {
        if !topic.is_empty() {
            return Some(topic);
        }
        self.map.get(&alias?).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_use_replace_and_refuse() {
        let mut a = InboundAliases::new(2);
        assert_eq!(a.resolve("t/1", Some(1)).as_deref(), Ok("t/1"));
        assert_eq!(a.resolve("", Some(1)).as_deref(), Ok("t/1"));
        assert_eq!(a.resolve("t/2", Some(1)).as_deref(), Ok("t/2"));
        assert_eq!(a.resolve("", Some(1)).as_deref(), Ok("t/2"));
        assert_eq!(a.resolve("", Some(2)), Err(AliasError::Unknown(2)));
        assert_eq!(a.resolve("x", Some(3)), Err(AliasError::OutOfRange(3)));
        assert_eq!(a.resolve("x", Some(0)), Err(AliasError::OutOfRange(0)));
        assert_eq!(a.resolve("", None), Err(AliasError::EmptyTopic));
        let mut none = InboundAliases::new(0);
        assert_eq!(none.resolve("x", Some(1)), Err(AliasError::OutOfRange(1)));
    }
}
