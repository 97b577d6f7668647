//! `$SYS` topics and `$` topic matching (MQTT 3.1.1 / 5 §4.7.2), over TCP and WebSocket,
//! 3.1.1 and 5. Also runs against an external broker (Mosquitto publishes `$SYS` to
//! anonymous clients; its default interval is 10 s, so those runs take longer).

use crate::common;

use std::time::Duration;

use common::conf::*;
use fleetmq_storage::{AclAction, AclRule};

fn rule(topic: &str, allow: bool) -> AclRule {
    AclRule {
        action: AclAction::All,
        topic: topic.into(),
        allow,
    }
}

/// A fleetmq whose anonymous clients may read `$SYS`, refreshed every 200 ms.
async fn sys_target() -> Target {
    Target::with(|c| {
        c.anonymous_rules = vec![
            rule("device/#", false),
            rule("$SYS/#", true),
            rule("#", true),
        ];
        c.sys_interval = Some(Duration::from_millis(200));
    })
    .await
}

const TOPICS: [&str; 5] = [
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/uptime",
    "$SYS/broker/version",
];

/// The `$SYS` topics arrive for a `$SYS/#` subscription, and are refreshed periodically.
async fn sys_topics_published(via: Via, ver: Ver) {
    let t = sys_target().await;
    let mut c = t.connect(via, ver, &unique("sys")).await;
    let codes = c.subscribe("$SYS/broker/#", 0).await;
    assert!(codes[0] < 0x80, "{codes:?}");
    let wait = if t.external() { 12_000 } else { 1_000 };
    let got = c.msgs_within(Duration::from_millis(wait)).await;
    for topic in TOPICS {
        let n = got.iter().filter(|m| m.topic == topic).count();
        assert!(
            n >= 1,
            "{topic} missing from {:?}",
            got.iter().map(|m| &m.topic).collect::<Vec<_>>()
        );
    }
    if !t.external() {
        let version = got.iter().find(|m| m.topic == TOPICS[4]).expect("version");
        assert!(String::from_utf8_lossy(&version.payload).starts_with("fleetmq "));
        let uptimes = got.iter().filter(|m| m.topic == TOPICS[3]).count();
        assert!(uptimes >= 2, "refreshed every interval: {uptimes}");
    }
}
matrix!(sys_topics_are_published_periodically, sys_topics_published);

/// [MQTT-4.7.2-1]: topics starting with `$` do not match filters starting with `#` or `+`.
async fn dollar_topics_hidden_from_wildcards(via: Via, ver: Ver) {
    let t = sys_target().await;
    let mut c = t.connect(via, ver, &unique("wild")).await;
    c.subscribe("#", 0).await;
    c.subscribe("+/broker/#", 0).await;
    let wait = if t.external() { 11_000 } else { 700 };
    let got = c.msgs_within(Duration::from_millis(wait)).await;
    assert!(
        got.iter().all(|m| !m.topic.starts_with('$')),
        "{:?}",
        got.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
}
matrix!(
    dollar_topics_do_not_match_leading_wildcards_mqtt_4_7_2_1,
    dollar_topics_hidden_from_wildcards
);

/// SPEC §3: `$SYS` follows the ACL: the default anonymous rules deny it (fleetmq only).
async fn sys_denied_by_default_rules(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("needs fleetmq's anonymous ACL rules") {
        return;
    }
    let mut c = t.connect(via, ver, &unique("anon")).await;
    let codes = c.subscribe("$SYS/#", 0).await;
    assert_eq!(codes, vec![if ver == Ver::V5 { 0x87 } else { 0x80 }]);
}
matrix!(
    sys_denied_to_anonymous_by_default,
    sys_denied_by_default_rules
);

/// Devices never read `$SYS` (fleetmq only).
async fn sys_denied_to_devices(via: Via, ver: Ver) {
    let t = sys_target().await;
    if t.skip_external("provisions a device through fleetmq's store") {
        return;
    }
    let b = t.broker.as_ref().expect("fleetmq");
    b.add_device("sysdev", "tok", false).await;
    let mut c = t.open(via, ver).await;
    let mut conn = Conn::new("sysdev");
    conn.login = Some(("sysdev".into(), "tok".into()));
    assert_eq!(c.connect(conn).await.code, 0);
    let codes = c.subscribe("$SYS/#", 0).await;
    assert!(codes[0] >= 0x80, "{codes:?}");
}
matrix!(sys_denied_to_devices, sys_denied_to_devices);

/// Service clients get `$SYS` by their rules (fleetmq only).
async fn sys_for_service_clients(via: Via, ver: Ver) {
    let t = sys_target().await;
    if t.skip_external("provisions a service client through fleetmq's store") {
        return;
    }
    let b = t.broker.as_ref().expect("fleetmq");
    b.add_service("ops", "pw", vec![rule("$SYS/broker/uptime", true)])
        .await;
    let mut c = t.open(via, ver).await;
    let mut conn = Conn::new(&unique("ops"));
    conn.login = Some(("ops".into(), "pw".into()));
    assert_eq!(c.connect(conn).await.code, 0);
    assert!(c.subscribe("$SYS/broker/uptime", 0).await[0] < 0x80);
    assert!(c.subscribe("$SYS/broker/version", 0).await[0] >= 0x80);
    let got = c.msgs_within(Duration::from_millis(500)).await;
    assert!(!got.is_empty());
    assert!(got.iter().all(|m| m.topic == "$SYS/broker/uptime"));
}
matrix!(
    sys_for_service_clients_by_their_rules,
    sys_for_service_clients
);

/// `mqtt.sys_interval_s = 0` disables the periodic updates (fleetmq only).
async fn sys_interval_zero(via: Via, ver: Ver) {
    let t = Target::with(|c| {
        c.anonymous_rules = vec![rule("$SYS/#", true), rule("#", true)];
        c.sys_interval = None;
    })
    .await;
    if t.skip_external("needs mqtt.sys_interval_s = 0") {
        return;
    }
    let mut c = t.connect(via, ver, &unique("off")).await;
    c.subscribe("$SYS/broker/uptime", 0).await;
    let got = c.msgs_within(Duration::from_millis(600)).await;
    assert!(
        got.len() <= 1,
        "only the answer to the subscription: {got:?}"
    );
}
matrix!(sys_interval_zero_disables_updates, sys_interval_zero);
