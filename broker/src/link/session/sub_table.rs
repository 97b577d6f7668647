//! A connection's session subscriptions by filter: a vector kept sorted by filter. A
//! device has two; a `BTreeMap` took a 700-byte node and a second copy of each filter
//! for them (issue 15: an idle device holds only what it needs).

use fleetmq_storage::SessionSubscription;

#[derive(Debug, Default, Clone)]
pub(crate) struct SubTable(Vec<SessionSubscription>);

impl SubTable {
    fn find(&self, filter: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|s| s.filter.as_str().cmp(filter))
    }

    pub(crate) fn contains_key(&self, filter: &str) -> bool {
        self.find(filter).is_ok()
    }

    /// Adds or replaces the subscription of `sub.filter`; the one it replaced.
    pub(crate) fn insert(&mut self, sub: SessionSubscription) -> Option<SessionSubscription> {
        match self.find(&sub.filter) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i], sub)),
            Err(i) => {
                self.0.insert(i, sub);
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, filter: &str) -> Option<SessionSubscription> {
        let removed = self.find(filter).ok().map(|i| self.0.remove(i));
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        removed
    }

    /// In filter order.
    pub(crate) fn values(&self) -> std::slice::Iter<'_, SessionSubscription> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(filter: &str, qos: u8) -> SessionSubscription {
        SessionSubscription {
            filter: filter.to_owned(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            id: None,
        }
    }

    #[test]
    fn behaves_as_a_map_by_filter_in_filter_order() {
        let mut t = SubTable::default();
        assert!(t.insert(sub("b/#", 1)).is_none());
        assert!(t.insert(sub("a", 0)).is_none());
        assert!(t.insert(sub("c/+", 2)).is_none());
        assert_eq!(t.insert(sub("a", 2)).map(|s| s.qos), Some(0));
        let order: Vec<(&str, u8)> = t.values().map(|s| (s.filter.as_str(), s.qos)).collect();
        assert_eq!(order, [("a", 2), ("b/#", 1), ("c/+", 2)]);
        assert!(t.contains_key("b/#") && !t.contains_key("b"));
        assert_eq!(t.remove("b/#").map(|s| s.qos), Some(1));
        assert!(t.remove("b/#").is_none());
        let order: Vec<&str> = t.values().map(|s| s.filter.as_str()).collect();
        assert_eq!(order, ["a", "c/+"]);
    }
}
