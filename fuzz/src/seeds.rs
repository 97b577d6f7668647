//! The seed corpus in `fuzz/corpus/<target>/`: a few real inputs per target, made here
//! from the MQTT spec's wire format, the real `seal`, and the store's real encoders.
//!
//! `FLEETMQ_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml` (re)writes the
//! seeds; every run, with or without it, passes each file in the corpus through its
//! target's check, so a seed that stops passing (or a crash file dropped in the corpus)
//! fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleetmq_broker::fuzz::{seal, seal_v2, CountedNonce};
use fleetmq_storage::fuzz as store;
use fleetmq_storage::{
    AclAction, AclRule, CredentialHash, DeviceCredential, DeviceKey, DeviceRecord,
    MessageProperties, QueuedMessage, RetainedMessage, ServiceClientRecord, SessionRecord,
    SessionSubscription, TokenHash,
};

type Seeds = Vec<(&'static str, Vec<u8>)>;

/// A target: its name, its check, its seeds.
type Target = (&'static str, fn(&[u8]), fn() -> Seeds);

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

#[test]
fn seeds_pass_their_checks() {
    let targets: [Target; 5] = [
        ("framing", crate::framing::check, framing),
        ("envelope", crate::envelope::check, envelope),
        ("device_json", crate::device_json::check, device_json),
        (
            "storage_records",
            crate::storage_records::check,
            storage_records,
        ),
        ("teltonika", crate::teltonika::check, teltonika),
    ];
    let write = std::env::var_os("FLEETMQ_WRITE_SEEDS").is_some();
    for (target, check, seeds) in targets {
        let dir = corpus(target);
        for (name, bytes) in seeds() {
            check(&bytes);
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("seed-{name}")), &bytes).unwrap();
            }
        }
        let files = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
        for file in files {
            check(&std::fs::read(file.unwrap().path()).unwrap());
        }
    }
}

// ---- framing --------------------------------------------------------------------

/// A frame: the first byte, the remaining length, the body.
fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1];
    let mut n = body.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string.
fn s(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn v4_connect() -> Vec<u8> {
    // Username, password, clean session; keep alive 60 s.
    let head = cat(&[&s("MQTT"), &[4, 0xc2, 0, 60]]);
    frame(
        0x10,
        &cat(&[&head, &s("dev-1"), &s("dev-1"), &s("token-abc")]),
    )
}

fn v5_connect() -> Vec<u8> {
    // Session expiry 3600 s, receive maximum 20, topic alias maximum 10.
    let props = [0x11, 0, 0, 0x0e, 0x10, 0x21, 0, 20, 0x22, 0, 10];
    let head = cat(&[&s("MQTT"), &[5, 0xc2, 0, 60, props.len() as u8], &props]);
    frame(
        0x10,
        &cat(&[&head, &s("dev-1"), &s("dev-1"), &s("token-abc")]),
    )
}

const TELEMETRY: &[u8] = br#"{"ts":"2024-03-01T11:59:30Z","temp":21.5,"hum":40}"#;

fn v4_publish(qos: u8, pkid: u16) -> Vec<u8> {
    let id = if qos > 0 {
        pkid.to_be_bytes().to_vec()
    } else {
        Vec::new()
    };
    let body = cat(&[&s("device/dev-1/telemetry"), &id, TELEMETRY]);
    frame(0x30 | (qos << 1), &body)
}

fn v5_publish() -> Vec<u8> {
    // Payload format 1, expiry 60 s, content type, response topic, correlation data,
    // a user property, topic alias 1.
    let props = cat(&[
        &[0x01, 1, 0x02, 0, 0, 0, 60, 0x03],
        &s("application/json"),
        &[0x08],
        &s("device/dev-1/response"),
        &[0x09],
        &s("c-1"),
        &[0x26],
        &s("site"),
        &s("lab"),
        &[0x23, 0, 1],
    ]);
    let body = cat(&[
        &s("device/dev-1/telemetry"),
        &7u16.to_be_bytes(),
        &[props.len() as u8],
        &props,
        TELEMETRY,
    ]);
    frame(0x32, &body)
}

fn framing() -> Seeds {
    let v4_subscribe = frame(0x82, &cat(&[&[0, 2], &s("device/dev-1/command"), &[1]]));
    let v4_unsubscribe = frame(0xa2, &cat(&[&[0, 3], &s("device/dev-1/command")]));
    // Subscription identifier 5; options: QoS 1, no local.
    let v5_subscribe = frame(
        0x82,
        &cat(&[&[0, 2, 2, 0x0b, 5], &s("device/+/status"), &[0x05]]),
    );
    let acks = cat(&[
        &frame(0x40, &[0, 1]),
        &frame(0x50, &[0, 2]),
        &frame(0x62, &[0, 2]),
        &frame(0x70, &[0, 2]),
        &frame(0xc0, &[]),
    ]);
    vec![
        // Selector 0: the connection's first bytes, CONNECT first.
        (
            "v4-session",
            cat(&[
                &[0],
                &v4_connect(),
                &v4_subscribe,
                &v4_publish(1, 1),
                &v4_publish(0, 0),
                &acks,
                &v4_unsubscribe,
                &frame(0xe0, &[]),
            ]),
        ),
        (
            "v5-session",
            cat(&[
                &[0],
                &v5_connect(),
                &v5_subscribe,
                &v5_publish(),
                &acks,
                &frame(0xe0, &[0x04]),
            ]),
        ),
        // Selector 1 and 2: after a 3.1.1 or v5 CONNECT.
        ("v4-publish-qos2", cat(&[&[1], &v4_publish(2, 513), &acks])),
        ("v5-publish-props", cat(&[&[2], &v5_publish()])),
        (
            "v5-disconnect-props",
            cat(&[&[2], &frame(0xe0, &[0x00, 0x05, 0x11, 0, 0, 0, 0])]),
        ),
        // Selector 4 (max packet 1 KiB): a server-only CONNACK, refused by the guard.
        (
            "v4-connack-refused",
            cat(&[&[4 | 1], &frame(0x20, &[0, 0])]),
        ),
    ]
}

// ---- envelope -------------------------------------------------------------------

fn envelope() -> Seeds {
    let sealed = |generation: u8, topic: &str, plaintext: &[u8]| {
        let key = crate::envelope::key_for(generation).unwrap();
        let nonce = [7, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 42];
        let env = seal(&key, generation, nonce, topic, plaintext);
        cat(&[&[topic.len() as u8], topic.as_bytes(), &env])
    };
    vec![
        ("telemetry", sealed(1, "device/dev-1/telemetry", TELEMETRY)),
        (
            "command-gen2",
            sealed(
                2,
                "device/dev-1/command",
                br#"{"type":"RELOAD","commandId":"c-1","params":{}}"#,
            ),
        ),
        ("empty-payload", sealed(200, "device/dev-1/status", b"")),
        ("telemetry-v2", {
            let key = crate::envelope::key_for(1).unwrap();
            let nonce = CountedNonce {
                epoch: 3,
                counter: 42,
            };
            let topic = "device/dev-1/telemetry";
            let env = seal_v2(&key, 1, nonce, topic, TELEMETRY);
            cat(&[&[topic.len() as u8], topic.as_bytes(), &env])
        }),
        (
            "unknown-generation",
            sealed(1, "a", b"x")[..].to_vec().tap(|v| v[3] = 9),
        ),
    ]
}

/// `tap` for a quick in-place edit of a seed.
trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for Vec<u8> {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

// ---- device JSON ----------------------------------------------------------------

fn device_json() -> Seeds {
    vec![
        ("telemetry-rfc3339", TELEMETRY.to_vec()),
        (
            "telemetry-ms-nested",
            br#"{"ts":1709294390000,"cpu":37.5,"mem":612,"disk":{"free":3.5e9,"used":1024},"tags":["a","b"],"ok":true,"note":null}"#.to_vec(),
        ),
        (
            "telemetry-escapes",
            br#" {"name":"caf\u00e9 \"A\" \ud83d\ude00","ts":"2024-03-01T13:59:00+02:00","temp":-0.5e1} "#.to_vec(),
        ),
        (
            "response-ok",
            br#"{"commandId":"c-1","success":true,"result":{"applied":true,"version":3}}"#.to_vec(),
        ),
        ("response-error", br#"{"success":false,"error":"busy"}"#.to_vec()),
        (
            "status",
            br#"{"state":"online","version":"1.4.2","ip":"10.0.0.7","configVersion":3,"uptime":86400}"#.to_vec(),
        ),
        ("event", br#"{"type":"door_open","door":2,"ts":1709294399000}"#.to_vec()),
    ]
}

// ---- storage records ------------------------------------------------------------

/// The input for record `kind` stored under `key`: kind, key length, key, value.
fn record(kind: u8, key: &str, value: &[u8]) -> Vec<u8> {
    cat(&[&[kind, key.len() as u8], key.as_bytes(), value])
}

/// The input for telemetry row `kind` (8: point, 9: block).
fn row(kind: u8, device: &str, ts: u64, id: u64, cut: u8, value: &[u8]) -> Vec<u8> {
    let head = cat(&[&ts.to_be_bytes(), &id.to_be_bytes(), &[cut]]);
    record(kind, device, &cat(&[&head, value]))
}

fn credential() -> CredentialHash {
    CredentialHash {
        iterations: 600_000,
        salt: [0x5a; 16],
        hash: [0xc3; 32],
    }
}

fn properties() -> MessageProperties {
    MessageProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("app/replies".into()),
        correlation_data: Some(b"c-1".to_vec()),
        user_properties: vec![("site".into(), "lab".into())],
        subscription_ids: Vec::new(),
    }
}

fn storage_records() -> Seeds {
    let device = DeviceRecord {
        id: "dev-1".parse().unwrap(),
        plugin: "json".into(),
        labels: BTreeMap::from([("site".into(), "lab".into())]),
        encrypted: true,
        credential: DeviceCredential::Legacy(credential()),
        keys: vec![
            DeviceKey {
                generation: 1,
                key: [0x11; 32],
                created_at_ms: 1_709_200_000_000,
                superseded_at_ms: Some(1_709_290_000_000),
            },
            DeviceKey {
                generation: 2,
                key: [0x22; 32],
                created_at_ms: 1_709_290_000_000,
                superseded_at_ms: None,
            },
        ],
        created_at_ms: 1_709_200_000_000,
    };
    let keyed = DeviceRecord {
        credential: DeviceCredential::Keyed(TokenHash { tag: [0x7e; 32] }),
        ..device.clone()
    };
    let client = ServiceClientRecord {
        name: "dashboard".into(),
        credential: credential(),
        rules: vec![
            AclRule {
                action: AclAction::Subscribe,
                topic: "device/+/telemetry".into(),
                allow: true,
            },
            AclRule {
                action: AclAction::All,
                topic: "#".into(),
                allow: false,
            },
        ],
        created_at_ms: 1_709_200_000_000,
    };
    let retained = RetainedMessage {
        topic: "device/dev-1/status".into(),
        payload: br#"{"state":"online"}"#.to_vec(),
        qos: 1,
        stored_at_ms: 1_709_294_000_000,
        expires_at_ms: Some(1_709_297_600_000),
        properties: properties(),
    };
    let session = SessionRecord {
        key: "c:dashboard".into(),
        client_id: "dashboard".into(),
        subscriptions: vec![SessionSubscription {
            filter: "device/+/telemetry".into(),
            qos: 1,
            no_local: false,
            retain_as_published: true,
            retain_handling: 1,
            id: Some(5),
        }],
        expiry_s: 3600,
        disconnected_at_ms: Some(1_709_294_000_000),
        inbound_qos2: vec![7],
        outbound_pubrels: vec![9],
    };
    let queued = QueuedMessage {
        topic: "device/dev-1/telemetry".into(),
        payload: TELEMETRY.to_vec(),
        qos: 2,
        dup: true,
        retain: false,
        queued_at_ms: 1_709_294_000_000,
        expires_at_ms: None,
        properties: MessageProperties {
            subscription_ids: vec![5],
            ..properties()
        },
        pkid: Some(12),
    };
    let new_command = fleetmq_storage::commands::NewCommandRecord {
        command_id: "c-1".into(),
        device_id: "dev-1".parse().unwrap(),
        kind: "RELOAD".into(),
        params_json: r#"{"force":true}"#.into(),
        metadata_json: Some(r#"{"by":"ops"}"#.into()),
        idempotency_key: Some("k-1".into()),
        timeout_ms: 30_000,
        max_retries: 2,
        ttl_ms: 86_400_000,
        created_at_ms: 1_709_294_000_000,
    };
    let queued_command = store::new_command(new_command.clone(), 41);
    let mut done = store::new_command(new_command, 42);
    done.send(1_709_294_001_000, 1_709_294_031_000).unwrap();
    done.complete(1_709_294_002_000, Some(r#"{"applied":true}"#.into()))
        .unwrap();
    let summary = store::SummaryView {
        points: 3,
        latest: vec![("temp".into(), 1_709_294_390_000, 40, "21.5".into())],
        recent: vec![(0x1234, 1_709_294_390_000, 41, TELEMETRY.to_vec())],
    };
    // A point of the format before blocks: postcard's `StoredPoint::V1` (variant 0, the
    // count, each key and JSON text length-prefixed), which nothing writes any more.
    let point = cat(&[
        &[0, 2, 3],
        b"hum",
        &[2],
        b"40",
        &[4],
        b"temp",
        &[4],
        b"21.5",
    ]);
    let ts = 1_709_294_390_500;
    let v1_points =
        [(ts - 400, 10), (ts - 400, 11), (ts, 12)].map(|(ts_ms, seq)| store::BlockPoint {
            ts_ms,
            seq,
            values: Some(vec![("temp".into(), "21.5".into())]),
            object: None,
        });
    let v2_points = [(ts - 300, 20), (ts, 21)].map(|(ts_ms, seq)| store::BlockPoint {
        ts_ms,
        seq,
        values: None,
        object: Some(TELEMETRY.to_vec()),
    });
    let enc = |r: Result<Vec<u8>, fleetmq_storage::StoreError>| r.unwrap();
    vec![
        (
            "device",
            record(0, "dev-1", &enc(store::encode_device(&device))),
        ),
        (
            "device-keyed",
            record(0, "dev-1", &enc(store::encode_device(&keyed))),
        ),
        (
            "service-client",
            record(1, "dashboard", &enc(store::encode_service_client(&client))),
        ),
        (
            "retained",
            record(
                2,
                "device/dev-1/status",
                &enc(store::encode_retained(&retained)),
            ),
        ),
        (
            "admin-key",
            record(3, "", &enc(store::encode_credential(&credential()))),
        ),
        (
            "session",
            record(4, "c:dashboard", &enc(store::encode_session(&session))),
        ),
        (
            "queued",
            record(
                5,
                "c:dashboard",
                &enc(store::encode_queued("c:dashboard", &queued)),
            ),
        ),
        (
            "command-queued",
            record(6, "c-1", &enc(store::encode_command(&queued_command))),
        ),
        (
            "command-completed",
            record(6, "c-1", &enc(store::encode_command(&done))),
        ),
        (
            "summary",
            record(7, "dev-1", &enc(store::encode_summary(&summary))),
        ),
        ("point", row(8, "dev-1", ts, 40, 0, &point)),
        (
            "block-v1",
            row(
                9,
                "dev-1",
                ts,
                10,
                1,
                &enc(store::encode_block(ts, 10, &v1_points)),
            ),
        ),
        (
            "block-v2",
            row(
                9,
                "dev-1",
                ts,
                20,
                1,
                &enc(store::encode_block(ts, 20, &v2_points)),
            ),
        ),
    ]
}

// ---- teltonika ------------------------------------------------------------------

/// Bytes from a hex string.
fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Teltonika's published examples (https://wiki.teltonika-gps.com/view/Codec), as in
/// `device-plugins/src/teltonika/tests/golden.rs`: the login, Codec 8 (three), 8
/// Extended (and a beacon packet with a variable-length element), 16, and Codec 12.
fn teltonika() -> Seeds {
    let login = unhex("000F333536333037303432343431303133");
    let codec8 = unhex("000000000000003608010000016B40D8EA30010000000000000000000000000000000105021503010101425E0F01F10000601A014E0000000000000000010000C7CF");
    let codec8_2 = unhex("000000000000002808010000016B40D9AD80010000000000000000000000000000000103021503010101425E100000010000F22A");
    let codec8_3 = unhex("000000000000004308020000016B40D57B480100000000000000000000000000000001010101000000000000016B40D5C198010000000000000000000000000000000101010101000000020000252C");
    let codec8e = unhex("000000000000004A8E010000016B412CEE000100000000000000000000000000000000010005000100010100010011001D00010010015E2C880002000B000000003544C87A000E000000001DD7E06A00000100002994");
    let beacon = unhex("000000000000005A8E010000016B69B0C9510000000000000000000000000000000001810001000000000000000000010181002D11216B817F8A274D4FBDB62D33E1842F8DF8014D022BBF21A579723675064DC396A7C3520129F61900000000BF0100003E5D");
    let codec16 = unhex("000000000000005F10020000016BDBC7833000000000000000000000000000000000000B05040200010000030002000B00270042563A00000000016BDBC7871800000000000000000000000000000000000B05040200010000030002000B00260042563A00000200005FB3");
    let getinfo = unhex("000000000000000F0C010500000007676574696E666F0100004312");
    let response = unhex("00000000000000900C010600000088494E493A323031392F372F323220373A3232205254433A323031392F372F323220373A3533205253543A32204552523A312053523A302042523A302043463A302046473A3020464C3A302054553A302F302055543A3020534D533A30204E4F4750533A303A3330204750533A31205341543A302052533A332052463A36352053463A31204D443A30010000C78F");
    // The data of a frame, for the odd (framed) mode: codec id to second count.
    let data = |frame: &[u8]| frame[8..frame.len() - 4].to_vec();
    vec![
        ("login-codec8", cat(&[&[0], &login, &codec8])),
        ("codec8-two-frames", cat(&[&[0], &codec8_2, &codec8_3])),
        ("login-codec8e", cat(&[&[0], &login, &codec8e])),
        ("codec16", cat(&[&[0], &codec16])),
        (
            "codec12-getinfo-response",
            cat(&[&[0], &getinfo, &response]),
        ),
        ("data-codec8", cat(&[&[1], &data(&codec8)])),
        ("data-codec8e-beacon", cat(&[&[1], &data(&beacon)])),
        ("data-codec16", cat(&[&[1], &data(&codec16)])),
        ("data-codec12-response", cat(&[&[1], &data(&response)])),
    ]
}

/// The seeds are what they claim: every frame decodes, every envelope (but the one
/// with an unknown generation) opens, every payload and record decodes.
#[test]
fn seeds_are_accepted() {
    use fleetmq_broker::fuzz::{decode, open, peek, Version};
    use fleetmq_device_plugins::{DevicePlugin, JsonPlugin};

    for (name, input) in framing() {
        let mut buf = bytes::BytesMut::from(&input[1..]);
        let mut version =
            [Version::V4, Version::V4, Version::V5, Version::V4][usize::from(input[0] & 3)];
        let mut decoded = 0;
        while let Ok(Some(frame)) = peek(&buf, 1 << 20) {
            if frame.packet_type() == 1 {
                version = fleetmq_broker::fuzz::connect_version(&buf, frame.header_len()).unwrap();
            }
            let raw = buf.split_to(frame.len());
            if decode(version, frame, raw, 1 << 20).is_err() {
                break;
            }
            decoded += 1;
        }
        if name.ends_with("refused") {
            assert_eq!(decoded, 0, "{name}");
        } else {
            assert!(
                buf.is_empty() && decoded > 0,
                "{name}: {decoded} frames decoded"
            );
        }
    }
    for (name, input) in envelope() {
        let topic = std::str::from_utf8(&input[1..1 + usize::from(input[0])]).unwrap();
        let opened = open(crate::envelope::key_for, topic, &input[1 + topic.len()..]);
        assert_eq!(
            opened.is_ok(),
            name != "unknown-generation",
            "{name}: {opened:?}"
        );
    }
    for (name, payload) in device_json() {
        let ok = match name.split('-').next().unwrap() {
            "telemetry" => JsonPlugin
                .decode_telemetry(&payload, 1_709_294_400_000)
                .is_ok(),
            "response" => JsonPlugin.decode_response(&payload).is_ok(),
            "status" => JsonPlugin.decode_status(&payload).is_ok(),
            _ => JsonPlugin.decode_event(&payload).is_ok(),
        };
        assert!(ok, "{name}");
    }
    for (name, input) in storage_records() {
        let key_len = usize::from(input[1]);
        let key = std::str::from_utf8(&input[2..2 + key_len]).unwrap();
        let value = &input[2 + key_len..];
        let row = |v: &[u8]| {
            let ts = u64::from_be_bytes(v[..8].try_into().unwrap());
            let id = u64::from_be_bytes(v[8..16].try_into().unwrap());
            (ts, id, v[17..].to_vec())
        };
        let ok = match input[0] {
            0 => store::decode_device(key, value).is_ok(),
            1 => store::decode_service_client(key, value).is_ok(),
            2 => store::decode_retained(key, value).is_ok(),
            3 => store::decode_credential(value).is_ok(),
            4 => store::decode_session(key, value).is_ok(),
            5 => store::decode_queued(key, value).is_ok(),
            6 => store::decode_command(key, value).is_ok(),
            7 => store::decode_summary(key, value).is_ok(),
            8 => {
                let (ts, seq, v) = row(value);
                store::decode_point(key, ts, seq, &v).is_ok()
            }
            _ => {
                let (ts, id, v) = row(value);
                store::decode_block(key, ts, id, &v).is_ok()
            }
        };
        assert!(ok, "{name}");
    }
    for (name, input) in teltonika() {
        use fleetmq_device_plugins::teltonika::{decode_login, FrameDecoder};
        let mut bytes = match input[0] % 2 {
            0 => input[1..].to_vec(),
            _ => crate::teltonika::framed(&input[1..]),
        };
        if let Ok(Some((_, used))) = decode_login(&bytes) {
            bytes.drain(..used);
        }
        let mut frames = 0;
        while let Ok(Some((_, used))) = FrameDecoder::new().decode(&bytes) {
            bytes.drain(..used);
            frames += 1;
        }
        assert!(frames > 0 && bytes.is_empty(), "{name}: {frames} frames");
    }
}
