//! Who may publish, subscribe to and receive what (SPEC §3).
//!
//! Three checks per [`Principal`]: [`may_publish`](Principal::may_publish) on every
//! PUBLISH it sends, [`may_subscribe`](Principal::may_subscribe) on every SUBSCRIBE
//! filter ("as written", as Mosquitto does), and [`may_read`](Principal::may_read) on
//! every message at delivery, so a wide subscription never leaks a topic the client may
//! not read. Every check validates its input and denies anything malformed.

use std::borrow::Cow;
use std::sync::Arc;

use fleetmq_storage::{AclAction, AclRule, DeviceId};

use crate::link::codec::topic;

/// The topics a device may publish to, below `device/{id}/`.
const DEVICE_PUBLISH: [&str; 4] = ["response", "status", "telemetry", "events"];
/// The topics a device may receive, below `device/{id}/`.
const DEVICE_READ: [&str; 2] = ["command", "config"];

/// An authenticated MQTT client, as the ACL sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A provisioned device: the fixed device ACL of SPEC §3 applies.
    Device(DeviceId),
    /// A service client: exactly its rules; `%u` is its name, `%c` the client id it
    /// connected with (service clients may use any client id).
    Service {
        /// The service client's name (its MQTT username).
        name: String,
        /// The MQTT client id of this connection; `%c` in rules.
        client_id: String,
        /// Its ACL rules, first match wins, default deny.
        rules: Arc<[AclRule]>,
    },
    /// An anonymous client (only when `security.allow_anonymous` is on).
    Anonymous {
        /// The MQTT client id it connected with; `%c` in rules. It has no `%u`.
        client_id: String,
        /// `security.anonymous_rules`, first match wins, default deny.
        rules: Arc<[AclRule]>,
    },
}

/// Which question a rule-based check asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Publish,
    Subscribe,
}

impl Op {
    fn covered_by(self, action: AclAction) -> bool {
        matches!(
            (self, action),
            (_, AclAction::All)
                | (Op::Publish, AclAction::Publish)
                | (Op::Subscribe, AclAction::Subscribe)
        )
    }
}

impl Principal {
    /// Whether this client may PUBLISH to topic name `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        if !topic::valid_topic_name(topic) {
            return false;
        }
        match self {
            Principal::Device(id) => device_topic_is(id, topic, &DEVICE_PUBLISH),
            _ => self.first_rule_allows(Op::Publish, |rule| topic::matches(rule, topic)),
        }
    }

    /// Whether this client may SUBSCRIBE with `filter` (a `$share/{group}/` prefix is
    /// stripped and the filter inside checked; a malformed share is denied).
    ///
    /// Rule-based clients are checked "as written": the subscription's own `+` and `#`
    /// are literal characters for the rule filters, so rule `device/+/telemetry` permits
    /// `device/+/telemetry` and `device/a/telemetry` but not `device/#`.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let Some(filter) = unshare(filter).filter(|f| topic::valid_filter(f)) else {
            return false;
        };
        match self {
            Principal::Device(id) => device_may_subscribe(id, filter),
            _ => self.first_rule_allows(Op::Subscribe, |rule| topic::matches(rule, filter)),
        }
    }

    /// Whether a message on topic name `topic` may be delivered to this client.
    pub fn may_read(&self, topic: &str) -> bool {
        if !topic::valid_topic_name(topic) {
            return false;
        }
        match self {
            Principal::Device(id) => device_topic_is(id, topic, &DEVICE_READ),
            _ => self.first_rule_allows(Op::Subscribe, |rule| topic::matches(rule, topic)),
        }
    }

    /// The `allow` of the first rule covering `op` whose (substituted) filter satisfies
    /// `hit`; `false` when none does. Devices have no rules and get `false`.
    fn first_rule_allows(&self, op: Op, hit: impl Fn(&str) -> bool) -> bool {
        let (rules, client_id, username) = match self {
            Principal::Device(_) => return false,
            Principal::Service {
                name,
                client_id,
                rules,
            } => (rules, client_id.as_str(), Some(name.as_str())),
            Principal::Anonymous { client_id, rules } => (rules, client_id.as_str(), None),
        };
        rules
            .iter()
            .filter(|rule| op.covered_by(rule.action))
            .find(|rule| {
                substitute(&rule.topic, client_id, username)
                    .is_some_and(|filter| topic::valid_filter(&filter) && hit(&filter))
            })
            .is_some_and(|rule| rule.allow)
    }
}

/// The filter inside a `$share/{group}/{filter}`, the filter itself when it is not
/// shared, `None` for a malformed share.
fn unshare(filter: &str) -> Option<&str> {
    if topic::is_shared(filter) {
        topic::split_shared(filter).map(|(_, inner)| inner)
    } else {
        Some(filter)
    }
}

/// Whether `topic` is exactly `device/{id}/{leaf}` for one of `leaves`.
fn device_topic_is(id: &DeviceId, topic: &str, leaves: &[&str]) -> bool {
    let mut levels = topic.split('/');
    levels.next() == Some("device")
        && levels.next() == Some(id.as_str())
        && levels.next().is_some_and(|leaf| leaves.contains(&leaf))
        && levels.next().is_none()
}

/// SPEC §3: a (valid, unshared) device filter must start literally with
/// `device/{own id}` and be able to match the device's `command` or `config` topic
/// (e.g. `device/{id}/#`, `device/{id}/+`, `device/{id}/command`). Delivery is still
/// checked by `may_read`.
fn device_may_subscribe(id: &DeviceId, filter: &str) -> bool {
    let mut levels = filter.split('/');
    if levels.next() != Some("device") || levels.next() != Some(id.as_str()) {
        return false;
    }
    DEVICE_READ
        .iter()
        .any(|leaf| topic::matches(filter, &format!("device/{}/{leaf}", id.as_str())))
}

/// `rule` with `%c` and `%u` replaced, in one pass (a value is never re-scanned, so a
/// client id `%u` stays literal). Any other `%` is kept as written.
///
/// `None` (the rule does not match) when a placeholder has no value (`%u` for an
/// anonymous client) or a value that could widen the rule: one containing `+`, `#` or
/// `/`, or starting with `$` (which would turn `%c/#` into `$SYS/#`).
fn substitute<'a>(rule: &'a str, client_id: &str, username: Option<&str>) -> Option<Cow<'a, str>> {
    if !rule.contains("%c") && !rule.contains("%u") {
        return Some(Cow::Borrowed(rule));
    }
    let mut out = String::with_capacity(rule.len() + client_id.len());
    let mut rest = rule;
    while let Some((before, after)) = rest.split_once('%') {
        out.push_str(before);
        let value = match after.as_bytes().first() {
            Some(b'c') => Some(client_id),
            Some(b'u') => username,
            _ => {
                out.push('%');
                rest = after;
                continue;
            }
        };
        out.push_str(value.filter(|v| is_safe_substitution(v))?);
        // The placeholder letter is one ASCII byte, so this is a char boundary.
        rest = after.get(1..).unwrap_or_default();
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

fn is_safe_substitution(value: &str) -> bool {
    !value.contains(['+', '#', '/']) && !value.starts_with('$')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn device(id: &str) -> Principal {
        Principal::Device(id.parse().expect("valid device id"))
    }

    fn rule(action: AclAction, topic: &str, allow: bool) -> AclRule {
        AclRule {
            action,
            topic: topic.to_owned(),
            allow,
        }
    }

    fn service(name: &str, rules: Vec<AclRule>) -> Principal {
        Principal::Service {
            name: name.to_owned(),
            client_id: name.to_owned(),
            rules: rules.into(),
        }
    }

    fn anonymous(client_id: &str, rules: Vec<AclRule>) -> Principal {
        Principal::Anonymous {
            client_id: client_id.to_owned(),
            rules: rules.into(),
        }
    }

    /// SPEC §3's default `security.anonymous_rules`.
    fn default_anonymous_rules() -> Vec<AclRule> {
        vec![
            rule(AclAction::All, "device/#", false),
            rule(AclAction::All, "$SYS/#", false),
            rule(AclAction::All, "#", true),
        ]
    }

    #[test]
    fn device_publish() {
        let d = device("d1");
        let cases: &[(&str, bool)] = &[
            ("device/d1/response", true),
            ("device/d1/status", true),
            ("device/d1/telemetry", true),
            ("device/d1/events", true),
            ("device/d1/command", false),
            ("device/d1/config", false),
            ("device/d1/telemetry/x", false),
            ("device/d1/", false),
            ("device/d1", false),
            ("device/d2/telemetry", false),
            ("device/d1/+", false),
            ("device/+/telemetry", false),
            ("device/d1/#", false),
            ("device//telemetry", false),
            ("/device/d1/telemetry", false),
            ("Device/d1/telemetry", false),
            ("other/d1/telemetry", false),
            ("$SYS/x", false),
            ("", false),
        ];
        for &(topic, want) in cases {
            assert_eq!(d.may_publish(topic), want, "{topic:?}");
        }
    }

    #[test]
    fn device_subscribe() {
        let d = device("d1");
        let cases: &[(&str, bool)] = &[
            ("device/d1/command", true),
            ("device/d1/config", true),
            ("device/d1/+", true),
            ("device/d1/#", true),
            ("$share/g/device/d1/command", true),
            ("$share/g/device/d1/#", true),
            ("device/d1/telemetry", false),
            ("device/d1/command/x", false),
            ("device/d1/+/x", false),
            ("device/d1", false),
            ("device/d2/command", false),
            ("device/+/command", false),
            ("device/#", false),
            ("device/+/#", false),
            ("+/d1/command", false),
            ("#", false),
            ("+/+/+", false),
            ("device/d1/#/x", false),
            ("device/d1/comm+", false),
            ("$share/g/device/d2/command", false),
            ("$share//device/d1/command", false),
            ("$share/g", false),
            ("$SYS/#", false),
            ("", false),
        ];
        for &(filter, want) in cases {
            assert_eq!(d.may_subscribe(filter), want, "{filter:?}");
        }
    }

    #[test]
    fn device_read() {
        let d = device("d1");
        let cases: &[(&str, bool)] = &[
            ("device/d1/command", true),
            ("device/d1/config", true),
            ("device/d1/telemetry", false),
            ("device/d1/status", false),
            ("device/d1/command/x", false),
            ("device/d2/command", false),
            ("device/d2/config", false),
            ("device/d10/command", false),
            ("device/d/command", false),
            ("device/+/command", false),
            ("device/d1/+", false),
            ("$SYS/broker", false),
            ("", false),
        ];
        for &(topic, want) in cases {
            assert_eq!(d.may_read(topic), want, "{topic:?}");
        }
    }

    #[test]
    fn service_publish_first_match_wins_default_deny() {
        let s = service(
            "backend",
            vec![
                rule(AclAction::Publish, "device/blocked/command", false),
                rule(AclAction::Publish, "device/+/command", true),
                rule(AclAction::Subscribe, "app/#", true),
                rule(AclAction::All, "shared/#", true),
                rule(AclAction::All, "shared/secret", false),
            ],
        );
        let cases: &[(&str, bool)] = &[
            ("device/d1/command", true),
            ("device/blocked/command", false),
            ("device/d1/config", false),
            ("app/x", false),
            ("shared/x", true),
            ("shared", true),
            ("shared/secret", true),
            ("unrelated", false),
            ("device/+/command", false),
        ];
        for &(topic, want) in cases {
            assert_eq!(s.may_publish(topic), want, "{topic:?}");
        }
    }

    #[test]
    fn service_subscribe_as_written() {
        let s = service(
            "backend",
            vec![
                rule(AclAction::Subscribe, "device/+/telemetry", true),
                rule(AclAction::All, "app/#", true),
                rule(AclAction::Publish, "pubonly/#", true),
                rule(AclAction::Subscribe, "$SYS/broker/#", true),
            ],
        );
        let cases: &[(&str, bool)] = &[
            ("device/+/telemetry", true),
            ("device/a/telemetry", true),
            ("$share/g/device/+/telemetry", true),
            ("device/#", false),
            ("device/+/#", false),
            ("device/+/+", false),
            ("device/a/status", false),
            ("#", false),
            ("app/#", true),
            ("app/+/x", true),
            ("app", true),
            ("pubonly/x", false),
            ("$SYS/broker/load", true),
            ("$SYS/#", false),
            ("$share/g/app/#", true),
            ("$share/+/app/#", false),
            ("app/#/x", false),
        ];
        for &(filter, want) in cases {
            assert_eq!(s.may_subscribe(filter), want, "{filter:?}");
        }
    }

    #[test]
    fn service_read_per_topic() {
        let s = service(
            "backend",
            vec![
                rule(AclAction::Subscribe, "device/secret/#", false),
                rule(AclAction::Subscribe, "device/+/telemetry", true),
                rule(AclAction::Publish, "pub/#", true),
                rule(AclAction::All, "#", false),
            ],
        );
        let cases: &[(&str, bool)] = &[
            ("device/a/telemetry", true),
            ("device/secret/telemetry", false),
            ("device/a/status", false),
            ("pub/x", false),
            ("$SYS/x", false),
        ];
        for &(topic, want) in cases {
            assert_eq!(s.may_read(topic), want, "{topic:?}");
        }
    }

    #[test]
    fn substitution() {
        let rules = vec![
            rule(AclAction::All, "clients/%c/#", true),
            rule(AclAction::All, "users/%u/inbox", true),
            rule(AclAction::All, "pair/%c-%u", true),
        ];
        let s = service("svc", rules.clone());
        assert!(s.may_publish("clients/svc/x"));
        assert!(s.may_subscribe("clients/svc/#"));
        assert!(s.may_read("users/svc/inbox"));
        assert!(s.may_publish("pair/svc-svc"));
        assert!(!s.may_publish("clients/other/x"));
        assert!(!s.may_subscribe("clients/+/x"));
        assert!(!s.may_publish("clients/%c/x"));

        let literal = service("%u", vec![rule(AclAction::All, "x/%c/%z/100%", true)]);
        assert!(literal.may_publish("x/%u/%z/100%"));
        assert!(!literal.may_publish("x/svc/%z/100%"));

        let a = anonymous("cli", rules.clone());
        assert!(a.may_publish("clients/cli/x"));
        assert!(!a.may_publish("users/cli/inbox"), "anonymous has no %u");
        assert!(!a.may_publish("users//inbox"));
        assert!(!a.may_publish("pair/cli-"));
    }

    #[test]
    fn substitution_never_widens() {
        let rules = vec![
            rule(AclAction::All, "clients/%c/#", true),
            rule(AclAction::All, "%c/#", true),
        ];
        for id in ["+", "#", "a/b", "a+", "x#", "$SYS", "/"] {
            let a = anonymous(id, rules.clone());
            for topic in [
                "clients/other/x",
                "clients/a/b/x",
                "other/x",
                "$SYS/x",
                "a/b/x",
            ] {
                assert!(!a.may_publish(topic), "id {id:?} topic {topic:?}");
                assert!(!a.may_read(topic), "id {id:?} topic {topic:?}");
            }
            assert!(!a.may_subscribe("clients/+/#"), "id {id:?}");
            assert!(!a.may_subscribe("#"), "id {id:?}");
        }
        let s = service("a/+", rules);
        assert!(!s.may_publish("clients/a/x/y"));
    }

    #[test]
    fn anonymous_defaults() {
        let a = anonymous("conformance", default_anonymous_rules());
        let publish: &[(&str, bool)] = &[
            ("test/topic", true),
            ("device/d1/command", false),
            ("device/d1/telemetry", false),
            ("device", false),
            ("$SYS/broker/uptime", false),
            ("devices/x", true),
            ("/device/x", true),
        ];
        for &(topic, want) in publish {
            assert_eq!(a.may_publish(topic), want, "publish {topic:?}");
            assert_eq!(a.may_read(topic), want, "read {topic:?}");
        }
        let subscribe: &[(&str, bool)] = &[
            ("#", true),
            ("+/+", true),
            ("test/#", true),
            ("$share/g/#", true),
            ("device/#", false),
            ("device/+/command", false),
            ("device", false),
            ("$SYS/#", false),
            ("$share/g/device/#", false),
            ("$share/g/$SYS/#", false),
        ];
        for &(filter, want) in subscribe {
            assert_eq!(a.may_subscribe(filter), want, "subscribe {filter:?}");
        }
    }

    #[test]
    fn dollar_topics_follow_mqtt_4_7_2_1_in_rules() {
        let s = service(
            "svc",
            vec![
                rule(AclAction::All, "#", true),
                rule(AclAction::All, "+/x", true),
            ],
        );
        assert!(!s.may_publish("$SYS/x"));
        assert!(!s.may_read("$SYS/x"));
        assert!(!s.may_subscribe("$SYS/#"));
        assert!(s.may_publish("a/x"));
        let sys = service("svc", vec![rule(AclAction::All, "$SYS/#", true)]);
        assert!(sys.may_publish("$SYS/x"));
        assert!(sys.may_subscribe("$SYS/+"));
    }

    #[test]
    fn empty_rules_and_bad_rules_deny() {
        let none = service("svc", Vec::new());
        assert!(!none.may_publish("a") && !none.may_subscribe("a") && !none.may_read("a"));
        let bad = service(
            "svc",
            vec![
                rule(AclAction::All, "a/#/b", true),
                rule(AclAction::All, "", true),
            ],
        );
        assert!(!bad.may_publish("a/x/b") && !bad.may_read("a") && !bad.may_subscribe("a/#/b"));
    }

    fn device_id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9_.:-]{0,8}"
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,40}", id in "\\PC{0,8}") {
            let rules = vec![rule(AclAction::All, "%c/%u/#", true), rule(AclAction::All, &s, true)];
            for p in [device("d1"), service(&id, rules.clone()), anonymous(&id, rules)] {
                let _ = (p.may_publish(&s), p.may_subscribe(&s), p.may_read(&s));
            }
        }

        #[test]
        fn device_never_reads_or_writes_another_devices_topics(
            own in device_id(),
            other in device_id(),
            leaf in "(command|config|response|status|telemetry|events|[a-z+#]{0,3})",
        ) {
            prop_assume!(own != other);
            let d = device(&own);
            let topic = format!("device/{other}/{leaf}");
            prop_assert!(!d.may_read(&topic));
            prop_assert!(!d.may_publish(&topic));
        }

        #[test]
        fn device_reads_only_its_command_and_config(
            own in device_id(),
            topic in "[a-z0-9/+#$]{0,24}",
        ) {
            let d = device(&own);
            let readable = [format!("device/{own}/command"), format!("device/{own}/config")];
            prop_assert_eq!(d.may_read(&topic), readable.contains(&topic));
        }

        #[test]
        fn device_subscription_never_matches_another_device(
            own in device_id(),
            other in device_id(),
            head in 0usize..6,
            tail in prop::collection::vec("(command|config|telemetry|\\+|#|x)", 0..3),
        ) {
            prop_assume!(own != other);
            let heads = [
                format!("device/{own}"),
                format!("$share/g/device/{own}"),
                "device/+".to_owned(),
                format!("+/{own}"),
                "#".to_owned(),
                "device".to_owned(),
            ];
            let mut levels = vec![heads[head].clone()];
            levels.extend(tail);
            let filter = levels.join("/");
            let d = device(&own);
            if d.may_subscribe(&filter) {
                let inner = unshare(&filter).unwrap_or_default();
                let mut levels = inner.split('/');
                let own_tree =
                    levels.next() == Some("device") && levels.next() == Some(own.as_str());
                prop_assert!(own_tree, "{} is outside the own tree", filter);
                for leaf in DEVICE_READ.iter().chain(&DEVICE_PUBLISH) {
                    let topic = format!("device/{other}/{leaf}");
                    let leaks = topic::matches(inner, &topic);
                    prop_assert!(!leaks, "{} matches {}", filter, topic);
                }
            }
        }
    }
}
