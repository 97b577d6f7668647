//! SPEC §10 against the real binary: a tracker's records acknowledged by `fleetmq serve`
//! are in the store after SIGKILL and a restart, at their own timestamps, and a command
//! queued through the admin API while the broker was down reaches the tracker after it.

use crate::support;

use fleetmq_device_plugins::teltonika::{
    self as tk, AvlPacket, AvlRecord, Codec, Frame, FrameDecoder, Gps, IoElement, IoValue,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Server, WAIT};

const IMEI: &str = "352093081452251";

async fn login(server: &Server) -> TcpStream {
    let addr = server.teltonika.expect("a Teltonika listener");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&tk::encode_login(&IMEI.parse().unwrap()))
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    tokio::time::timeout(WAIT, s.read_exact(&mut answer))
        .await
        .expect("login answered")
        .unwrap();
    assert_eq!(answer, [1], "{}", server.log());
    s
}

fn packet(ts_ms: u64, n: u64) -> Vec<u8> {
    let record = AvlRecord {
        timestamp_ms: ts_ms,
        priority: 0,
        gps: Gps {
            longitude: 252_654_563,
            latitude: 549_012_345,
            altitude: 100,
            angle: 180,
            satellites: 8,
            speed: 40,
        },
        event_io: 0,
        generation_type: None,
        io: vec![IoElement {
            id: 16,
            value: IoValue::U32(n as u32),
        }],
    };
    let packet = AvlPacket {
        codec: Codec::Codec8Ext,
        records: vec![record],
    };
    tk::encode_avl(&packet).unwrap()
}

#[tokio::test]
async fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with_trackers(dir.path()).await;
    let (status, body) = server
        .api(
            "POST",
            "/api/v1/devices",
            Some(json!({"id": IMEI, "plugin": "teltonika"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut tracker = login(&server).await;
    let start = fleetmq_storage::now_ms() - 60_000;
    for n in 0..50u64 {
        tracker
            .write_all(&packet(start + n * 1000, n))
            .await
            .unwrap();
        let mut ack = [0u8; 4];
        tokio::time::timeout(WAIT, tracker.read_exact(&mut ack))
            .await
            .expect("acknowledged")
            .unwrap();
        assert_eq!(u32::from_be_bytes(ack), 1);
    }
    server.kill9().await;
    drop(tracker);
    // A command queued while the tracker is away waits for it across the restart.
    server.start_again().await;
    let (status, queued) = server
        .api(
            "POST",
            &format!("/api/v1/devices/{IMEI}/commands"),
            Some(json!({"type": "getgps"})),
        )
        .await;
    assert_eq!(
        (status, &queued["status"]),
        (202, &json!("queued")),
        "{queued}"
    );
    let path = format!("/api/v1/devices/{IMEI}/telemetry?limit=1000");
    let (status, page) = server.api("GET", &path, None).await;
    assert_eq!(status, 200);
    let mut stamps: Vec<u64> = (page["items"].as_array().unwrap().iter())
        .map(|p| p["ts_ms"].as_u64().unwrap())
        .collect();
    stamps.sort_unstable();
    let want: Vec<u64> = (0..50).map(|n| start + n * 1000).collect();
    assert_eq!(stamps, want, "every acknowledged record, at its own time");
    let mut tracker = login(&server).await;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(WAIT, tracker.read(&mut buf))
        .await
        .expect("the queued command")
        .unwrap();
    let Ok(Some((Frame::Codec12(msg), _))) = FrameDecoder::new().decode(&buf[..n]) else {
        panic!("not a Codec 12 command: {:02x?}", &buf[..n]);
    };
    assert_eq!(msg.text, b"getgps");
}
