//! Teltonika trackers over TCP (SPEC §10), end to end: real sockets carrying the
//! protocol's bytes (the published examples, and packets built with the codec), a real
//! broker and redb file, commands through the engine the admin API uses, and an MQTT
//! service client reading what trackers publish.

use crate::common;

use std::time::Duration;

use common::*;
use fleetmq_broker::fleet::commands::{CommandStatus, CommandView, NewCommand};
use fleetmq_broker::fleet::telemetry::TelemetryQuery;
use fleetmq_broker::BrokerConfig;
use fleetmq_device_plugins::teltonika::{
    self as tk, AvlPacket, AvlRecord, Codec, Codec12Kind, Frame, FrameDecoder, Gps, IoElement,
    IoValue,
};
use fleetmq_storage::{now_ms, DeviceId, DeviceRecord};
use regex::Regex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(400);
const IMEI: &str = "356307042441013";

/// Codec 8, one record, from Teltonika's "Codec" page (first example).
const GOLDEN_CODEC8: &str = "000000000000003608010000016B40D8EA30010000000000000000000000000000000105021503010101425E0F01F10000601A014E0000000000000000010000C7CF";
/// Codec 12 `getinfo`, from the same page.
const GETINFO: &str = "000000000000000F0C010500000007676574696E666F0100004312";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn config() -> BrokerConfig {
    let mut c = BrokerConfig::for_tests();
    c.teltonika.listen = Some("127.0.0.1:0".parse().unwrap());
    c.teltonika.responses = vec![
        ("getinfo".into(), Regex::new("^INI:").unwrap()),
        ("getver".into(), Regex::new("^Ver:").unwrap()),
    ];
    c
}

/// A tracker's side of the socket.
struct Tracker {
    s: TcpStream,
}

impl Tracker {
    /// Connects and logs in; the broker's one-byte answer.
    async fn login(b: &TestBroker, imei: &str) -> (Tracker, u8) {
        let mut s = TcpStream::connect(b.teltonika.expect("listener"))
            .await
            .unwrap();
        let imei = imei.parse().expect("an IMEI");
        s.write_all(&tk::encode_login(&imei)).await.unwrap();
        let mut answer = [0u8; 1];
        tokio::time::timeout(WAIT, s.read_exact(&mut answer))
            .await
            .expect("login answered")
            .expect("answer byte");
        (Tracker { s }, answer[0])
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next record-count acknowledgement.
    async fn ack(&mut self) -> u32 {
        let mut ack = [0u8; 4];
        tokio::time::timeout(WAIT, self.s.read_exact(&mut ack))
            .await
            .expect("acknowledged in time")
            .expect("ack bytes");
        u32::from_be_bytes(ack)
    }

    /// Whether the broker writes nothing for a while (and keeps the socket open).
    async fn silent(&mut self) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(QUIET, self.s.read(&mut byte))
            .await
            .is_err()
    }

    async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(WAIT, self.s.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// The next Codec 12 command, as its bytes and its text.
    async fn command(&mut self) -> (Vec<u8>, String) {
        let mut frame = vec![0u8; 8];
        tokio::time::timeout(WAIT, self.s.read_exact(&mut frame))
            .await
            .expect("a command in time")
            .unwrap();
        let len = u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; len + 4];
        self.s.read_exact(&mut rest).await.unwrap();
        frame.extend(rest);
        let Ok(Some((Frame::Codec12(msg), _))) = FrameDecoder::new().decode(&frame) else {
            panic!("not a Codec 12 frame: {frame:02x?}");
        };
        assert_eq!(msg.kind, Codec12Kind::Command);
        let text = msg.text_lossy().into_owned();
        (frame, text)
    }

    async fn answer(&mut self, text: &str) {
        let frame = tk::encode_response(text.as_bytes()).unwrap();
        self.send(&frame).await;
    }
}

fn record(ts_ms: u64, lat: i32, io: Vec<IoElement>) -> AvlRecord {
    AvlRecord {
        timestamp_ms: ts_ms,
        priority: 1,
        gps: Gps {
            longitude: 252_654_563,
            latitude: lat,
            altitude: 117,
            angle: 90,
            satellites: 9,
            speed: 54,
        },
        event_io: 0,
        generation_type: None,
        io,
    }
}

fn packet(codec: Codec, records: Vec<AvlRecord>) -> Vec<u8> {
    let records = if codec == Codec::Codec16 {
        records
            .into_iter()
            .map(|r| AvlRecord {
                generation_type: Some(1),
                ..r
            })
            .collect()
    } else {
        records
    };
    tk::encode_avl(&AvlPacket { codec, records }).expect("encodable")
}

fn io(id: u16, value: IoValue) -> IoElement {
    IoElement { id, value }
}

async fn points(b: &TestBroker, imei: &str) -> Vec<(u64, serde_json::Map<String, Value>)> {
    let id: DeviceId = imei.parse().unwrap();
    let page = b
        .handle
        .telemetry()
        .query(&id, TelemetryQuery::default())
        .await
        .expect("query");
    let mut got: Vec<_> = page
        .items
        .into_iter()
        .map(|p| (p.ts_ms, p.values))
        .collect();
    got.sort_by_key(|(ts, _)| *ts);
    got
}

#[tokio::test]
async fn login_is_answered_by_what_the_imei_is() {
    let b = TestBroker::with_config(config()).await;
    let (mut unknown, answer) = Tracker::login(&b, IMEI).await;
    assert_eq!(answer, 0, "no device with this IMEI");
    assert!(unknown.closed().await);
    b.add_device("356307042441014", "token", false).await;
    let (mut json_device, answer) = Tracker::login(&b, "356307042441014").await;
    assert_eq!(answer, 0, "a json device is not a tracker");
    assert!(json_device.closed().await);
    b.add_tracker(IMEI).await;
    let (_tracker, answer) = Tracker::login(&b, IMEI).await;
    assert_eq!(answer, 1);
    // A login whose length is not an IMEI's.
    let mut s = TcpStream::connect(b.teltonika.unwrap()).await.unwrap();
    s.write_all(&[0, 3, b'1', b'2', b'3']).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut reply))
        .await
        .expect("answered and closed")
        .unwrap();
    assert_eq!(reply, [0]);
    let stats = b.handle.stats().teltonika;
    assert_eq!(stats.logins_refused, 3, "{stats:?}");
}

/// A tracker keeps no MQTT state: its detail is what the live table knows, at once.
#[tokio::test]
async fn a_tracker_is_described_without_mqtt_state() {
    let b = TestBroker::with_config(config()).await;
    b.add_tracker(IMEI).await;
    let (_t, answer) = Tracker::login(&b, IMEI).await;
    assert_eq!(answer, 1);
    let started = std::time::Instant::now();
    let detail = b.handle.client(IMEI).await.expect("connected");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "not a timeout"
    );
    assert_eq!(detail.info.protocol, "teltonika");
    assert!(detail.subscriptions.is_empty());
    assert!(detail.counters.is_none() && detail.keepalive_s.is_none());
    b.stop().await;
}

#[tokio::test]
async fn records_are_stored_then_acknowledged_then_published() {
    let b = TestBroker::with_config(config()).await;
    b.add_tracker(IMEI).await;
    b.add_service("backend", "pw", allow_all()).await;
    let (sub, mut el) = connect_v4(&b, Via::Tcp, "backend", Some(("backend", "pw")))
        .await
        .unwrap();
    sub.subscribe("device/+/telemetry", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let _ = publishes_v4(&mut el, Duration::from_millis(200)).await;
    let (mut t, answer) = Tracker::login(&b, IMEI).await;
    assert_eq!(answer, 1);
    assert!(b
        .handle
        .clients()
        .iter()
        .any(|c| c.client_id == IMEI && c.protocol == "teltonika"));
    let now = now_ms() - 10_000;
    // 8E, two records, split across three writes.
    let first = packet(
        Codec::Codec8Ext,
        vec![
            record(
                now,
                549_012_345,
                vec![
                    io(239, IoValue::U8(1)),
                    io(385, IoValue::Bytes(vec![0xab, 0x01])),
                ],
            ),
            record(now + 1000, -549_012_345, vec![io(66, IoValue::U16(12_345))]),
        ],
    );
    for part in first.chunks(first.len() / 3 + 1) {
        t.send(part).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(t.ack().await, 2);
    // Codec 8 and Codec 16 in one write.
    let mut both = packet(
        Codec::Codec8,
        vec![record(now + 2000, 1, vec![io(1, IoValue::U32(7))])],
    );
    both.extend(packet(
        Codec::Codec16,
        vec![record(now + 3000, 2, vec![io(300, IoValue::U64(9))])],
    ));
    t.send(&both).await;
    assert_eq!((t.ack().await, t.ack().await), (1, 1));
    let stored = points(&b, IMEI).await;
    let stamps: Vec<u64> = stored.iter().map(|(ts, _)| *ts).collect();
    assert_eq!(
        stamps,
        [now, now + 1000, now + 2000, now + 3000],
        "each at its record's time"
    );
    let v = &stored[0].1;
    assert_eq!(
        (v["lat"].as_f64(), v["lon"].as_f64()),
        (Some(54.9012345), Some(25.2654563))
    );
    assert_eq!(
        (&v["io_239"], &v["io_385"], &v["speed"]),
        (&json!(1), &json!("ab01"), &json!(54))
    );
    assert_eq!(stored[1].1["lat"].as_f64(), Some(-54.9012345));
    assert_eq!(stored[3].1["io_300"], json!(9));
    let got = publishes_v4(&mut el, Duration::from_millis(800)).await;
    let topic = format!("device/{IMEI}/telemetry");
    let published: Vec<u64> = (got.iter())
        .filter(|(t, _)| *t == topic)
        .map(|(_, p)| {
            serde_json::from_slice::<Value>(p).unwrap()["ts"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(published, stamps, "the same points for MQTT subscribers");
    let id: DeviceId = IMEI.parse().unwrap();
    assert!(b.handle.is_device_online(&id));
    drop(t);
    eventually("the tracker to be offline", || async {
        (!b.handle.is_device_online(&id)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_published_example_is_read_field_by_field() {
    let b = TestBroker::with_config(config()).await;
    b.add_tracker(IMEI).await;
    let (mut t, _) = Tracker::login(&b, IMEI).await;
    t.send(&hex(GOLDEN_CODEC8)).await;
    assert_eq!(t.ack().await, 1);
    let stored = points(&b, IMEI).await;
    assert_eq!(stored.len(), 1);
    let (ts, v) = &stored[0];
    assert_eq!(*ts, 0x16B40D8EA30);
    assert_eq!(v["priority"], json!(1));
    assert_eq!(v["io_21"], json!(3));
    assert_eq!(v["io_1"], json!(1));
    assert_eq!(v["io_66"], json!(0x5E0F));
    assert_eq!(v["io_241"], json!(0x601A));
    assert_eq!(v["io_78"], json!(0));
}

#[tokio::test]
async fn bad_packets_get_no_answer_and_three_in_a_row_close() {
    let b = TestBroker::with_config(config()).await;
    b.add_tracker(IMEI).await;
    let mut bad = packet(Codec::Codec8, vec![record(now_ms(), 1, Vec::new())]);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let (mut t, _) = Tracker::login(&b, IMEI).await;
    t.send(&bad).await;
    assert!(t.silent().await, "a wrong CRC is not acknowledged");
    // A good packet after a bad one is acknowledged; the count starts again.
    t.send(&packet(
        Codec::Codec8,
        vec![record(now_ms(), 2, Vec::new())],
    ))
    .await;
    assert_eq!(t.ack().await, 1);
    for _ in 0..3 {
        t.send(&bad).await;
    }
    assert!(t.closed().await, "closed after three bad packets in a row");
    assert_eq!(
        points(&b, IMEI).await.len(),
        1,
        "nothing of the bad ones stored"
    );
    assert_eq!(b.handle.stats().teltonika.bad_packets, 4);
    // Half a packet, then gone: nothing stored, and the tracker logs in again.
    let (mut t, _) = Tracker::login(&b, IMEI).await;
    let good = packet(Codec::Codec8, vec![record(now_ms(), 3, Vec::new())]);
    t.send(&good[..good.len() / 2]).await;
    drop(t);
    let (mut t, answer) = Tracker::login(&b, IMEI).await;
    assert_eq!(answer, 1);
    t.send(&good).await;
    assert_eq!(t.ack().await, 1);
    assert_eq!(points(&b, IMEI).await.len(), 2);
    // Bytes that cannot start a frame end the connection at once.
    t.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(t.closed().await);
}

async fn create(b: &TestBroker, tracker: &DeviceRecord, body: Value) -> CommandView {
    let req: NewCommand = serde_json::from_value(body).unwrap();
    let created = b
        .handle
        .commands()
        .create(tracker, req, None)
        .await
        .unwrap();
    created.record
}

async fn wait_completed(b: &TestBroker, id: &str) -> CommandView {
    let view = b.handle.commands().wait_terminal(id, WAIT).await.unwrap();
    assert_eq!(view.status, CommandStatus::Completed, "{view:?}");
    view
}

fn response(view: &CommandView) -> Value {
    let raw = view.result.as_ref().expect("a result");
    serde_json::from_str::<Value>(raw.get()).unwrap()["response"].clone()
}

#[tokio::test]
async fn commands_reach_trackers_and_answers_complete_them_by_pattern() {
    let b = TestBroker::with_config(config()).await;
    let tracker = b.add_tracker(IMEI).await;
    // Queued while the tracker is away, written when it logs in.
    let queued = create(
        &b,
        &tracker,
        json!({"type": "getinfo", "metadata": {"job": 7}}),
    )
    .await;
    assert_eq!(queued.status, CommandStatus::Queued);
    let (mut t, _) = Tracker::login(&b, IMEI).await;
    let (bytes, text) = t.command().await;
    assert_eq!(
        (bytes, text.as_str()),
        (hex(GETINFO), "getinfo"),
        "the published bytes"
    );
    t.answer("INI:2019/7/22 7:22 RTC:2019/7/22 7:53 RST:2 ERR:1")
        .await;
    let done = wait_completed(&b, &queued.command_id).await;
    assert_eq!(
        response(&done),
        json!("INI:2019/7/22 7:22 RTC:2019/7/22 7:53 RST:2 ERR:1")
    );
    assert_eq!(
        done.metadata.as_ref().map(|m| m.get()),
        Some(r#"{"job":7}"#)
    );
    // Two at once, answered out of order: matched by pattern, not by age.
    let ver = create(&b, &tracker, json!({"type": "getver"})).await;
    let info = create(&b, &tracker, json!({"type": "getinfo"})).await;
    let digout = create(
        &b,
        &tracker,
        json!({"type": "digout", "params": {"text": "setdigout 1"}}),
    )
    .await;
    let mut texts = Vec::new();
    for _ in 0..3 {
        texts.push(t.command().await.1);
    }
    assert_eq!(texts, ["getver", "getinfo", "setdigout 1"]);
    t.answer("INI:again").await;
    assert_eq!(
        response(&wait_completed(&b, &info.command_id).await),
        json!("INI:again")
    );
    // No pattern for this answer: the oldest command still sent.
    t.answer("DOUT1:1").await;
    assert_eq!(
        response(&wait_completed(&b, &ver.command_id).await),
        json!("DOUT1:1")
    );
    t.answer("Ver:03.25.14").await;
    let last = wait_completed(&b, &digout.command_id).await;
    assert_eq!(response(&last), json!("Ver:03.25.14"), "the only one left");
    assert_eq!(b.handle.stats().teltonika.responses, 4);
}

/// Presence and command events of a tracker, as webhooks and SSE see them: online with
/// protocol `teltonika`, a second login taking the first over without an offline in
/// between, a completed command's event carrying its metadata, offline at the end.
#[tokio::test]
async fn presence_and_command_events_are_a_devices() {
    let b = TestBroker::with_config(config()).await;
    let tracker = b.add_tracker(IMEI).await;
    let mut rx = b.handle.events().subscribe();
    let is = |kind: &'static str| {
        move |e: &fleetmq_broker::fleet::events::FleetEvent| {
            e.kind == kind && e.device_id.as_deref() == Some(IMEI)
        }
    };
    let (mut first, _) = Tracker::login(&b, IMEI).await;
    let online = next_event(&mut rx, is("device.online")).await;
    assert_eq!(online.data_value()["protocol"], "teltonika");
    assert_eq!(online.data_value()["transport"], "tcp");
    let (mut second, answer) = Tracker::login(&b, IMEI).await;
    assert_eq!(answer, 1);
    assert!(first.closed().await, "taken over");
    let cmd = create(
        &b,
        &tracker,
        json!({"type": "getinfo", "metadata": {"order": "A-1"}}),
    )
    .await;
    assert_eq!(second.command().await.1, "getinfo");
    second.answer("INI:ok").await;
    let done = next_event(&mut rx, is("command.completed")).await;
    assert_eq!(done.data_value()["command_id"], json!(cmd.command_id));
    assert_eq!(done.data_value()["metadata"], json!({"order": "A-1"}));
    drop(second);
    next_event(&mut rx, is("device.offline")).await;
    let clients = b.handle.clients();
    assert!(clients.iter().all(|c| c.client_id != IMEI), "{clients:?}");
}

/// The listener's limits: `teltonika.allow_from`, `mqtt.max_connections` shared with
/// MQTT clients, and `teltonika.idle_timeout_s`.
#[tokio::test]
async fn trackers_share_the_brokers_limits() {
    let mut c = config();
    c.teltonika.allow_from = vec!["10.0.0.0/8".parse().unwrap()];
    let b = TestBroker::with_config(c).await;
    b.add_tracker(IMEI).await;
    let mut s = TcpStream::connect(b.teltonika.unwrap()).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, s.read(&mut byte))
        .await
        .expect("closed");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "127.0.0.1 is not in allow_from"
    );
    assert_eq!(b.handle.stats().teltonika.logins_refused, 1);

    let mut c = config();
    c.max_connections = 1;
    c.teltonika.idle_timeout = Duration::from_millis(500);
    let b = TestBroker::with_config(c).await;
    b.add_tracker(IMEI).await;
    b.add_device("dev-1", "tok", false).await;
    let (mqtt, el) = connect_v4(&b, Via::Tcp, "dev-1", Some(("dev-1", "tok")))
        .await
        .unwrap();
    let driver = drive_v4(el);
    let (mut t, answer) = Tracker::login(&b, IMEI).await;
    assert_eq!(answer, 0, "the one connection slot is taken");
    assert!(t.closed().await);
    driver.abort();
    let _ = driver.await;
    drop(mqtt);
    let (mut t, answer) = eventually("a free slot", || async {
        let (t, answer) = Tracker::login(&b, IMEI).await;
        (answer == 1).then_some((t, answer))
    })
    .await;
    assert_eq!(answer, 1);
    let silent_since = tokio::time::Instant::now();
    assert!(t.closed().await, "closed when idle");
    assert!(silent_since.elapsed() >= Duration::from_millis(400));
}
