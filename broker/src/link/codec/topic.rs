//! MQTT topic names and filters: validity, shared subscriptions and matching.
//!
//! Pure string functions, shared by the ACL and the link layer. They follow MQTT 3.1.1
//! §4.7 / MQTT 5 §4.7-§4.8, and never panic on any input.

/// Longest topic name or filter MQTT can carry, in bytes (a two-byte length prefix).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The first level that marks an MQTT 5 shared subscription.
const SHARE_PREFIX: &str = "$share";

/// Whether `topic` is a valid topic name to PUBLISH to: non-empty, at most
/// [`MAX_TOPIC_LEN`] bytes, no wildcard (`+`, `#`) and no NUL [MQTT-4.7.3-1, -2, 1.5.3-2].
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_TOPIC_LEN && !topic.contains(['+', '#', '\0'])
}

/// Whether `filter` is a valid topic filter to SUBSCRIBE with: non-empty, at most
/// [`MAX_TOPIC_LEN`] bytes, no NUL, `+` only as a whole level, `#` only as the whole
/// last level [MQTT-4.7.1-1, -2, -3].
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        let ok = match level {
            "#" => is_last,
            "+" => true,
            _ => !level.contains(['+', '#']),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `filter` asks for a shared subscription (first level `$share`), well formed
/// or not. A filter for which this is true but [`split_shared`] is `None` is malformed.
pub fn is_shared(filter: &str) -> bool {
    filter.split('/').next() == Some(SHARE_PREFIX)
}

/// Splits `$share/{group}/{filter}` into `(group, filter)`.
///
/// `None` when `filter` is not a shared subscription, or is a malformed one: the group
/// must be non-empty without `/`, `+` or `#`, and the inner filter must be valid
/// (MQTT 5 §4.8.2).
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?.strip_prefix('/')?;
    let (group, inner) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || !valid_filter(inner) {
        return None;
    }
    Some((group, inner))
}

/// Whether topic name `topic` matches topic filter `filter`, per MQTT §4.7.
///
/// `+` matches exactly one level, `#` any number of levels including the parent
/// (`a/#` matches `a`), and a topic starting with `$` never matches a filter whose
/// first level is `+` or `#` [MQTT-4.7.2-1]. Both arguments are expected to be valid
/// (see [`valid_filter`], [`valid_topic_name`]); on invalid ones the answer is
/// unspecified but the function still returns.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && matches!(filter.split('/').next(), Some("+" | "#")) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic name could match both filters (`a/+` and `+/b`: `a/b`). It may say
/// yes for a pair only `$` topics could match both of; never no for a pair that overlaps.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (Some(x), Some(y)) if x == y || x == "+" || y == "+" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topic_names() {
        for ok in [
            "a",
            "a/b",
            "/",
            "a//b",
            "/a",
            "a/",
            "$SYS/x",
            "device/d1/telemetry",
            " ",
        ] {
            assert!(valid_topic_name(ok), "{ok:?}");
        }
        for bad in ["", "a/+", "+", "#", "a/#", "a+b", "a#", "a\0b"] {
            assert!(!valid_topic_name(bad), "{bad:?}");
        }
        assert!(valid_topic_name(&"a".repeat(MAX_TOPIC_LEN)));
        assert!(!valid_topic_name(&"a".repeat(MAX_TOPIC_LEN + 1)));
    }

    #[test]
    fn filters() {
        let ok = [
            "a",
            "#",
            "+",
            "a/#",
            "a/+",
            "+/+",
            "+/#",
            "/#",
            "a/+/b",
            "a//b",
            "/",
            "$SYS/#",
            "$share/g/a",
        ];
        for f in ok {
            assert!(valid_filter(f), "{f:?}");
        }
        let bad = [
            "", "a#", "a/#/b", "#/a", "a+", "a/b+", "+a", "a/##", "a/++", "a\0", "##",
        ];
        for f in bad {
            assert!(!valid_filter(f), "{f:?}");
        }
        assert!(valid_filter(&"a".repeat(MAX_TOPIC_LEN)));
        assert!(!valid_filter(&"a".repeat(MAX_TOPIC_LEN + 1)));
    }

    #[test]
    fn shared_subscriptions() {
        let ok = [
            ("$share/g/a/b", ("g", "a/b")),
            ("$share/g/#", ("g", "#")),
            (
                "$share/grp-1/device/+/telemetry",
                ("grp-1", "device/+/telemetry"),
            ),
            ("$share/g//a", ("g", "/a")),
        ];
        for (f, want) in ok {
            assert_eq!(split_shared(f), Some(want), "{f:?}");
            assert!(is_shared(f));
        }
        let malformed = [
            "$share",
            "$share/",
            "$share/g",
            "$share/g/",
            "$share//a",
            "$share/+/a",
            "$share/#/a",
            "$share/g+/a",
            "$share/g/a/#/b",
            "$share/g/a+",
        ];
        for f in malformed {
            assert_eq!(split_shared(f), None, "{f:?}");
            assert!(is_shared(f), "{f:?}");
        }
        for f in ["a/b", "$sharex/g/a", "x/$share/g/a", "$SHARE/g/a"] {
            assert_eq!(split_shared(f), None, "{f:?}");
            assert!(!is_shared(f), "{f:?}");
        }
    }

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a/+", "a/b", true),
            ("a/+", "a/", true),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("+/+", "/b", true),
            ("+", "/b", false),
            ("/+", "/b", true),
            ("a/#", "a", true),
            ("a/#", "a/", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/#", "b/a", false),
            ("#", "a", true),
            ("#", "/", true),
            ("#", "a/b/c", true),
            ("+/b/#", "a/b", true),
            ("+/b/#", "a/c", false),
            ("device/+/command", "device/d1/command", true),
            ("device/+/command", "device/d1/config", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
        ];
        for &(filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter:?} vs {topic:?}");
        }
    }

    #[test]
    fn dollar_topics_hide_from_leading_wildcards() {
        let cases: &[(&str, &str, bool)] = &[
            ("#", "$SYS/broker/uptime", false),
            ("+/broker/uptime", "$SYS/broker/uptime", false),
            ("+/#", "$SYS", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/+/uptime", "$SYS/broker/uptime", true),
            ("a/+", "a/$b", true),
            ("a/#", "a/$b/c", true),
            ("#", "$", false),
            ("$", "$", true),
        ];
        for &(filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter:?} vs {topic:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(a in "\\PC{0,24}", b in "\\PC{0,24}") {
            let _ = (valid_topic_name(&a), valid_filter(&a), split_shared(&a), is_shared(&a));
            let _ = (matches(&a, &b), matches(&b, &a));
        }

        #[test]
        fn valid_topic_matches_itself_and_hash(topic in "[a-z$/]{1,12}") {
            prop_assert!(matches(&topic, &topic));
            if !topic.starts_with('$') {
                prop_assert!(matches("#", &topic));
            }
        }

        #[test]
        fn matching_agrees_with_a_level_by_level_model(
            filter in prop::collection::vec(prop_oneof!["[ab]", Just("+".to_owned())], 1..4),
            hash in any::<bool>(),
            topic in prop::collection::vec("[ab]{0,1}", 1..5),
        ) {
            let mut f = filter.clone();
            if hash { f.push("#".to_owned()); }
            let (f, t) = (f.join("/"), topic.join("/"));
            let level_ok = |(fl, tl): (&String, &String)| fl == "+" || fl == tl;
            let prefix_ok = filter.iter().zip(&topic).all(level_ok);
            let want = if hash {
                prefix_ok && topic.len() >= filter.len()
            } else {
                prefix_ok && topic.len() == filter.len()
            };
            prop_assert_eq!(matches(&f, &t), want, "{} vs {}", f, t);
        }

        /// Two filters overlap exactly when one of the topics the generator can build
        /// (every level `a`, `b` or empty, up to five levels) matches both.
        #[test]
        fn overlap_agrees_with_matching_every_small_topic(
            a in "(([ab+]|)/){0,3}([ab+#]|)",
            b in "(([ab+]|)/){0,3}([ab+#]|)",
        ) {
            prop_assume!(valid_filter(&a) && valid_filter(&b));
            const LEVELS: [&str; 4] = ["a", "b", "c", ""];
            let mut topics: Vec<String> = LEVELS.map(String::from).to_vec();
            let mut deepest = topics.clone();
            for _ in 1..5 {
                deepest = deepest
                    .iter()
                    .flat_map(|t| LEVELS.map(|l| format!("{t}/{l}")))
                    .collect();
                topics.extend(deepest.iter().cloned());
            }
            let both = topics.iter().any(|t| matches(&a, t) && matches(&b, t));
            prop_assert_eq!(filters_overlap(&a, &b), both, "{} vs {}", a, b);
        }
    }

    #[test]
    fn overlapping_filters() {
        for (a, b) in [
            ("a/+", "+/b"),
            ("a/#", "a"),
            ("#", "x/y"),
            ("a/b", "a/b"),
            ("+", "a"),
        ] {
            assert!(filters_overlap(a, b) && filters_overlap(b, a), "{a} {b}");
        }
        for (a, b) in [("a/+", "b/+"), ("a", "a/b"), ("a/+", "a"), ("a/b/c", "a/b")] {
            assert!(!filters_overlap(a, b) && !filters_overlap(b, a), "{a} {b}");
        }
    }
}
