//! The parked sessions' topic filters, indexed by level (a small trie), so that a
//! publish looks only at the sessions with a filter that can match its topic: the cost
//! grows with the topic's levels and the number of matching filters, not with the
//! number of parked sessions.
//!
//! Shared subscriptions (`$share/...`) are never indexed: a parked session gets no
//! queued copy for them.

use std::collections::{HashMap, HashSet};

/// Topic filter levels → the keys of the parked sessions holding that filter.
#[derive(Default)]
pub(crate) struct FilterIndex {
    root: Node,
}

#[derive(Default)]
struct Node {
    /// Literal next levels.
    children: HashMap<String, Node>,
    /// The `+` next level.
    plus: Option<Box<Node>>,
    /// Sessions whose filter ends at this node.
    here: HashSet<String>,
    /// Sessions whose filter ends with `#` right below this node (which also matches
    /// this node's own level [MQTT-4.7.1-2]).
    hash: HashSet<String>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.here.is_empty()
            && self.hash.is_empty()
    }
}

impl FilterIndex {
    /// Adds `filter` (a valid, non-shared filter) for session `key`.
    pub(crate) fn insert(&mut self, filter: &str, key: &str) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = match level {
                "#" => {
                    node.hash.insert(key.to_owned());
                    return;
                }
                "+" => node.plus.get_or_insert_with(Box::default),
                literal => node.children.entry(literal.to_owned()).or_default(),
            };
        }
        node.here.insert(key.to_owned());
    }

    /// Removes `filter` of session `key`, pruning nodes left empty.
    pub(crate) fn remove(&mut self, filter: &str, key: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        remove_at(&mut self.root, &levels, key);
    }

    /// The sessions with a filter that matches `topic` (a valid topic name), each once.
    pub(crate) fn matching(&self, topic: &str) -> HashSet<&str> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = HashSet::new();
        // A topic starting with `$` is not matched by a first level `+` or `#`
        // [MQTT-4.7.2-1].
        let wildcards = !topic.starts_with('$');
        collect(&self.root, &levels, wildcards, &mut out);
        out
    }
}

fn remove_at(node: &mut Node, levels: &[&str], key: &str) {
    let Some((level, rest)) = levels.split_first() else {
        node.here.remove(key);
        return;
    };
    match *level {
        "#" => {
            node.hash.remove(key);
        }
        "+" => {
            if let Some(plus) = node.plus.as_mut() {
                remove_at(plus, rest, key);
                if plus.is_empty() {
                    node.plus = None;
                }
            }
        }
        literal => {
            if let Some(child) = node.children.get_mut(literal) {
                remove_at(child, rest, key);
                if child.is_empty() {
                    node.children.remove(literal);
                }
            }
        }
    }
}

fn collect<'a>(node: &'a Node, levels: &[&str], wildcards: bool, out: &mut HashSet<&'a str>) {
    if wildcards {
        out.extend(node.hash.iter().map(String::as_str));
    }
    let Some((level, rest)) = levels.split_first() else {
        out.extend(node.here.iter().map(String::as_str));
        return;
    };
    if let Some(child) = node.children.get(*level) {
        collect(child, rest, true, out);
    }
    if let (true, Some(plus)) = (wildcards, node.plus.as_deref()) {
        collect(plus, rest, true, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::codec::topic;
    use proptest::prelude::*;

    #[test]
    fn matches_like_topic_matches() {
        let mut idx = FilterIndex::default();
        for (f, k) in [
            ("a/b", "exact"),
            ("a/+", "plus"),
            ("a/#", "hash"),
            ("#", "all"),
            ("+/b", "first-plus"),
            ("$SYS/#", "sys"),
        ] {
            idx.insert(f, k);
        }
        fn got(idx: &FilterIndex, t: &str) -> Vec<String> {
            let mut v: Vec<String> = idx.matching(t).into_iter().map(str::to_owned).collect();
            v.sort_unstable();
            v
        }
        assert_eq!(
            got(&idx, "a/b"),
            ["all", "exact", "first-plus", "hash", "plus"]
        );
        assert_eq!(got(&idx, "a"), ["all", "hash"]);
        assert_eq!(got(&idx, "a/b/c"), ["all", "hash"]);
        assert_eq!(got(&idx, "x/b"), ["all", "first-plus"]);
        assert_eq!(got(&idx, "$SYS/x"), ["sys"]);
        idx.remove("a/#", "hash");
        idx.remove("#", "all");
        assert!(got(&idx, "a/b/c").is_empty());
        for (f, k) in [("a/b", "exact"), ("a/+", "plus"), ("+/b", "first-plus")] {
            idx.remove(f, k);
        }
        idx.remove("$SYS/#", "sys");
        assert!(idx.root.is_empty(), "emptied nodes are pruned");
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just(String::new()),
            Just("$s".to_owned()),
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        let lvl = prop_oneof![level(), Just("+".to_owned())];
        (proptest::collection::vec(lvl, 1..4), any::<bool>()).prop_map(|(mut v, hash)| {
            if hash {
                v.push("#".to_owned());
            }
            v.join("/")
        })
    }

    proptest! {
        /// The index finds exactly the filters `topic::matches` accepts.
        #[test]
        fn agrees_with_matches(
            filters in proptest::collection::vec(filter(), 0..12),
            topic_levels in proptest::collection::vec(level(), 1..5),
        ) {
            let topic_name = topic_levels.join("/");
            let mut idx = FilterIndex::default();
            for (i, f) in filters.iter().enumerate() {
                idx.insert(f, &i.to_string());
            }
            let mut want: Vec<String> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| topic::matches(f, &topic_name))
                .map(|(i, _)| i.to_string())
                .collect();
            want.sort();
            let mut got: Vec<String> =
                idx.matching(&topic_name).into_iter().map(str::to_owned).collect();
            got.sort();
            prop_assert_eq!(got, want);
        }
    }
}
