//! Persistence against the real binary: retained messages, persistent sessions with
//! queued QoS 1 messages, and inbound QoS 2 state survive `fleetmq serve` being stopped
//! with SIGTERM and started again, and survive SIGKILL for everything acknowledged.

use crate::support;

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::raw::{self, ack, parse_publish, Delivery};
use support::{Server, WAIT};

const QUIET: Duration = Duration::from_millis(500);

async fn connect(s: &Server, id: &str, clean: bool) -> (AsyncClient, EventLoop, bool) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", s.mqtt.port());
    opts.set_clean_session(clean);
    opts.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = AsyncClient::new(opts, 100);
    let present = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(a)) = el.poll().await.expect("connect") {
                return a.session_present;
            }
        }
    })
    .await
    .expect("CONNACK");
    (c, el, present)
}

async fn hang_up(c: AsyncClient, mut el: EventLoop) {
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(QUIET, async { while el.poll().await.is_ok() {} }).await;
}

async fn wait_for<T>(el: &mut EventLoop, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(p) = el.poll().await.expect("connected") {
                if let Some(t) = pick(&p) {
                    return t;
                }
            }
        }
    })
    .await
    .expect("packet in time")
}

/// Publishes QoS 1 messages, each acknowledged by the broker.
async fn publish_acked(s: &Server, topic: &str, retain: bool, payloads: &[&str]) {
    let (c, mut el, _) = connect(s, "publisher", true).await;
    for p in payloads {
        c.publish(topic, QoS::AtLeastOnce, retain, p.as_bytes().to_vec())
            .await
            .unwrap();
        wait_for(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    }
    hang_up(c, el).await;
}

/// Collects PUBLISH payloads until `n` arrived, then checks nothing else follows.
async fn receive(el: &mut EventLoop, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        got.push(
            wait_for(el, |p| match p {
                Packet::Publish(p) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
                _ => None,
            })
            .await,
        );
    }
    let _ = tokio::time::timeout(QUIET, async {
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
    })
    .await;
    got
}

// ---- a raw 3.1.1 publisher for inbound QoS 2 ----------------------------------------

async fn publish_qos2(s: &mut TcpStream, topic: &str, pkid: u16, payload: &str, dup: bool) {
    raw::publish(s, topic, 2, pkid, payload, dup).await;
    assert_eq!(raw::read_packet(s).await, ack(0x50, pkid), "PUBREC");
}

/// After a restart the QoS 2 publisher resends (DUP=1) and releases; the resend is not
/// delivered again and the PUBREL is completed.
async fn finish_qos2(s: &Server, pkid: u16, payload: &str) {
    let (mut raw, present) = raw::connect(s, "q2-publisher", false).await;
    assert!(present, "QoS 2 publisher's session survived");
    publish_qos2(&mut raw, "r/q2", pkid, payload, true).await;
    let [hi, lo] = pkid.to_be_bytes();
    raw.write_all(&[0x62, 2, hi, lo]).await.unwrap();
    assert_eq!(
        raw::read_packet(&mut raw).await,
        [0x70, 2, hi, lo],
        "PUBCOMP"
    );
}

#[tokio::test]
async fn sessions_retained_and_qos2_survive_sigterm_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_anonymous(dir.path()).await;

    // A persistent subscriber goes away; messages for it are acknowledged meanwhile.
    let (c, mut el, _) = connect(&server, "r-sub", false).await;
    c.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    wait_for(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    hang_up(c, el).await;
    publish_acked(&server, "r/ret", true, &["kept"]).await;
    publish_acked(&server, "r/q", false, &["m1", "m2"]).await;
    let (mut raw, _) = raw::connect(&server, "q2-publisher", false).await;
    publish_qos2(&mut raw, "r/q2", 9, "x9", false).await;
    drop(raw);

    server.restart().await;

    let (c, mut el, present) = connect(&server, "r-sub", false).await;
    assert!(present, "persistent session survived SIGTERM");
    assert_eq!(receive(&mut el, 4).await, ["kept", "m1", "m2", "x9"]);
    finish_qos2(&server, 9, "x9").await;
    assert!(
        receive(&mut el, 0).await.is_empty(),
        "QoS 2 resend not delivered twice"
    );
    c.subscribe("r/ret", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        receive(&mut el, 1).await,
        ["kept"],
        "retained survived SIGTERM"
    );
    hang_up(c, el).await;

    // Everything acknowledged before SIGKILL survives it.
    publish_acked(&server, "r/q", false, &["k1", "k2"]).await;
    let (mut raw, _) = raw::connect(&server, "q2-publisher", false).await;
    publish_qos2(&mut raw, "r/q2", 10, "x10", false).await;
    drop(raw);
    server.kill9().await;
    server.start_again().await;

    let (c, mut el, present) = connect(&server, "r-sub", false).await;
    assert!(present, "persistent session survived SIGKILL");
    assert_eq!(receive(&mut el, 3).await, ["k1", "k2", "x10"]);
    finish_qos2(&server, 10, "x10").await;
    assert!(
        receive(&mut el, 0).await.is_empty(),
        "QoS 2 resend not delivered twice"
    );
    c.subscribe("r/ret", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        receive(&mut el, 1).await,
        ["kept"],
        "retained survived SIGKILL"
    );
}

// ---- a raw 3.1.1 persistent subscriber with messages in flight ----------------------

/// A QoS 2 publish, released and completed by its publisher.
async fn publish_released(s: &Server, topic: &str, payload: &str) {
    let (mut raw, _) = raw::connect(s, "f-publisher", false).await;
    publish_qos2(&mut raw, topic, 1, payload, false).await;
    raw.write_all(&[0x62, 2, 0, 1]).await.unwrap();
    assert_eq!(raw::read_packet(&mut raw).await, [0x70, 2, 0, 1], "PUBCOMP");
    raw::disconnect(raw).await;
}

/// A persistent subscriber has two QoS 1 messages unacknowledged and a QoS 2 exchange
/// released but not completed. Returns its connection, the packet ids the QoS 1 messages
/// were sent on, in order, and the QoS 2 one.
async fn messages_in_flight(s: &Server, id: &str, prefix: &str) -> (TcpStream, Vec<u16>, u16) {
    let (mut sub, _) = raw::connect(s, id, false).await;
    raw::subscribe(&mut sub, &format!("{prefix}/#"), 2).await;
    publish_acked(s, &format!("{prefix}/q1"), false, &["a", "b"]).await;
    publish_released(s, &format!("{prefix}/q2"), "c").await;
    let mut q1 = Vec::new();
    let mut q2 = None;
    for _ in 0..3 {
        let Delivery {
            dup,
            qos,
            pkid,
            payload,
        } = parse_publish(&raw::read_packet(&mut sub).await);
        assert!(!dup);
        match (qos, payload.as_str()) {
            (1, "a" | "b") => q1.push((payload, pkid)),
            (2, "c") => q2 = Some(pkid),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        q1.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let q2 = q2.expect("QoS 2 message");
    let [hi, lo] = q2.to_be_bytes();
    sub.write_all(&[0x50, 2, hi, lo]).await.unwrap();
    assert_eq!(
        raw::read_packet(&mut sub).await,
        [0x62, 2, hi, lo],
        "PUBREL"
    );
    // No PUBACKs, no PUBCOMP.
    (sub, q1.into_iter().map(|(_, pkid)| pkid).collect(), q2)
}

/// [MQTT-4.4.0-1] after a restart: the PUBREL comes first on the QoS 2 exchange's id,
/// then the QoS 1 messages with DUP=1 on their original ids, then a message queued
/// while away (DUP=0) on an id none of them holds.
async fn resume_in_flight(s: &Server, id: &str, prefix: &str, q1: &[u16], q2: u16) {
    publish_acked(s, &format!("{prefix}/q1"), false, &["d"]).await;
    let (mut sub, present) = raw::connect(s, id, false).await;
    assert!(present, "session survived");
    let [hi, lo] = q2.to_be_bytes();
    assert_eq!(
        raw::read_packet(&mut sub).await,
        [0x62, 2, hi, lo],
        "PUBREL again"
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(parse_publish(&raw::read_packet(&mut sub).await));
    }
    let redelivered = |pkid, payload: &str| Delivery {
        dup: true,
        qos: 1,
        pkid,
        payload: payload.to_owned(),
    };
    assert_eq!(got[..2], [redelivered(q1[0], "a"), redelivered(q1[1], "b")]);
    let fresh = got[2].pkid;
    assert_eq!(
        (got[2].dup, got[2].qos, got[2].payload.as_str()),
        (false, 1, "d")
    );
    assert!(fresh != q2 && !q1.contains(&fresh), "fresh id {fresh}");
    for d in &got {
        sub.write_all(&ack(0x40, d.pkid)).await.unwrap();
    }
    sub.write_all(&[0x70, 2, hi, lo]).await.unwrap();
    raw::quiet(&mut sub).await;
    raw::disconnect(sub).await;
    // Completed: nothing is owed any more.
    let (mut sub, present) = raw::connect(s, id, false).await;
    assert!(present);
    raw::quiet(&mut sub).await;
    raw::disconnect(sub).await;
}

#[tokio::test]
async fn inflight_ids_and_pubrels_survive_sigterm_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_anonymous(dir.path()).await;

    // The client leaves, then the broker stops.
    let (sub, q1, q2) = messages_in_flight(&server, "f-sub-left", "f/left").await;
    raw::disconnect(sub).await;
    server.restart().await;
    resume_in_flight(&server, "f-sub-left", "f/left", &q1, q2).await;

    // The broker stops while the client is connected: shutdown parks the session.
    let (sub, q1, q2) = messages_in_flight(&server, "f-sub-term", "f/term").await;
    assert_eq!(server.stop().await, Some(0), "{}", server.log());
    drop(sub);
    server.start_again().await;
    resume_in_flight(&server, "f-sub-term", "f/term", &q1, q2).await;

    // kill -9 after the client left: its departure was committed before the broker
    // closed the connection.
    let (sub, q1, q2) = messages_in_flight(&server, "f-sub-kill", "f/kill").await;
    raw::disconnect(sub).await;
    server.kill9().await;
    server.start_again().await;
    resume_in_flight(&server, "f-sub-kill", "f/kill", &q1, q2).await;
}

/// Issue 18: a data file cut in half stopped the broker with a panic inside redb. Now
/// `serve` exits non-zero with an error that names the file and says what to do, and
/// nothing else (no panic report, even with `RUST_BACKTRACE` set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    for i in 0..300 {
        let (status, body) = server
            .api(
                "POST",
                "/api/v1/devices",
                Some(serde_json::json!({"id": format!("cut-{i}")})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(server.stop().await, Some(0));
    let file = server.data.join("fleetmq.redb");
    let len = std::fs::metadata(&file).expect("data file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(len / 2))
        .expect("cut the file");
    let out = support::fleetmq()
        .args(["serve", "--mqtt-tcp", "127.0.0.1:0", "--mqtt-ws", ""])
        .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data)
        .env("RUST_BACKTRACE", "1")
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("exits")
        .expect("ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("damaged"), "{stderr}");
    // Only our error: redb's panic report (and a backtrace) would read like a crash.
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}
