//! Unit tests of `sim/`, kept out of it: the `fleet` benchmark and the `tests/` binary
//! include `sim/` too, and would otherwise compile (or run) these a second time.

mod wire {
    use fleetmq_device_plugins::teltonika::{
        encode_avl, encode_command, encode_response, records_ack, AvlPacket, Codec,
    };

    use crate::sim::wire::*;

    /// Teltonika's published Codec 12 `getinfo` command.
    const GETINFO: [u8; 27] = [
        0, 0, 0, 0, 0, 0, 0, 0x0F, 0x0C, 0x01, 0x05, 0, 0, 0, 0x07, b'g', b'e', b't', b'i', b'n',
        b'f', b'o', 0x01, 0, 0, 0x43, 0x12,
    ];

    fn feed(stream: &mut ServerStream, bytes: &[u8]) {
        stream.buffer().extend_from_slice(bytes);
    }

    fn drain(stream: &mut ServerStream) -> Vec<Inbound> {
        let mut out = Vec::new();
        while let Some(item) = stream.next_item().expect("valid stream") {
            out.push(item);
        }
        out
    }

    #[test]
    fn acks_and_commands_interleave_in_one_read() {
        let mut s = ServerStream::default();
        let mut bytes = records_ack(1).to_vec();
        bytes.extend_from_slice(&GETINFO);
        bytes.extend_from_slice(&records_ack(255));
        bytes.extend_from_slice(&encode_command("getver").unwrap());
        feed(&mut s, &bytes);
        assert_eq!(
            drain(&mut s),
            [
                Inbound::Ack(1),
                Inbound::Command("getinfo".into()),
                Inbound::Ack(255),
                Inbound::Command("getver".into()),
            ]
        );
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn a_command_before_the_awaited_ack_split_byte_by_byte() {
        let mut bytes = GETINFO.to_vec();
        bytes.extend_from_slice(&records_ack(10));
        let mut s = ServerStream::default();
        let mut got = Vec::new();
        for b in bytes {
            feed(&mut s, &[b]);
            got.extend(drain(&mut s));
        }
        assert_eq!(got, [Inbound::Command("getinfo".into()), Inbound::Ack(10)]);
    }

    #[test]
    fn an_ack_of_three_zero_bytes_and_a_count_is_not_a_preamble() {
        // `00 00 00 01` shares three bytes with a preamble; it is an ack once 4 are in.
        let mut s = ServerStream::default();
        feed(&mut s, &[0, 0, 0]);
        assert_eq!(s.next_item().unwrap(), None);
        feed(&mut s, &[1]);
        assert_eq!(s.next_item().unwrap(), Some(Inbound::Ack(1)));
    }

    #[test]
    fn a_bad_crc_is_skipped_and_reading_goes_on() {
        let mut bad = GETINFO.to_vec();
        *bad.last_mut().unwrap() ^= 0xFF;
        bad.extend_from_slice(&records_ack(3));
        let mut s = ServerStream::default();
        feed(&mut s, &bad);
        let e = s.next_item().unwrap_err();
        assert!(e.recoverable(), "{e}");
        assert_eq!(s.next_item().unwrap(), Some(Inbound::Ack(3)));
    }

    #[test]
    fn frames_a_server_does_not_send_are_refused() {
        let mut s = ServerStream::default();
        feed(&mut s, &encode_response(b"INI:1").unwrap());
        assert!(matches!(s.next_item(), Err(WireError::Unexpected(_))));
        let avl = AvlPacket {
            codec: Codec::Codec8Ext,
            records: Vec::new(),
        };
        feed(&mut s, &encode_avl(&avl).unwrap());
        assert!(matches!(s.next_item(), Err(WireError::Unexpected(_))));
        // A preamble with a length no frame has: the stream is lost.
        feed(&mut s, &[0, 0, 0, 0, 0, 0, 0, 1]);
        let e = s.next_item().unwrap_err();
        assert!(!e.recoverable(), "{e}");
    }
}

mod records {
    use fleetmq_device_plugins::teltonika::{telemetry_json, Frame, FrameDecoder};

    use fleetmq_device_plugins::teltonika::{AvlPacket, Codec, IoValue};

    use crate::sim::records::*;

    fn decode(bytes: &[u8]) -> AvlPacket {
        match FrameDecoder::new().decode(bytes) {
            Ok(Some((Frame::Avl(p), used))) if used == bytes.len() => p,
            other => panic!("not one AVL packet: {other:?}"),
        }
    }

    #[test]
    fn a_packet_decodes_to_its_records_with_an_nx_element() {
        let mut r = Records::new(7, 1_700_000_000_000);
        let p = decode(&r.packet(5, 1_700_000_010_000, 100));
        assert_eq!(p.codec, Codec::Codec8Ext);
        assert_eq!(p.records.len(), 5);
        let ts: Vec<u64> = p.records.iter().map(|r| r.timestamp_ms).collect();
        assert_eq!(
            ts,
            [9_600, 9_700, 9_800, 9_900, 10_000].map(|t| 1_700_000_000_000 + t)
        );
        let vin = p.records[0]
            .io
            .iter()
            .find(|e| e.id == avl_id::VIN)
            .unwrap();
        assert_eq!(vin.value, IoValue::Bytes(b"WVWZZZ1JZ3W000007".to_vec()));
        let json = String::from_utf8(telemetry_json(&p.records[4])).unwrap();
        // The NX element as lowercase hex of its bytes (SPEC §10).
        let vin_hex = r#""io_256":"5756575a5a5a314a5a3357303030303037""#;
        assert!(json.contains(vin_hex), "{json}");
    }

    #[test]
    fn timestamps_never_repeat_even_when_packets_come_fast() {
        let mut r = Records::new(0, 1_000);
        let a = decode(&r.packet(3, 2_000, 10));
        let b = decode(&r.packet(3, 2_000, 10));
        let last_a = a.records.last().unwrap().timestamp_ms;
        assert!(b.records[0].timestamp_ms > last_a);
    }

    #[test]
    fn the_vehicle_moves_along_its_circle_at_its_speed() {
        let route = Route::for_index(3);
        let (a, b) = (route.at(0), route.at(10_000));
        assert_ne!((a.latitude, a.longitude), (b.latitude, b.longitude));
        // Every point is on the circle (within rounding to 10^-7 degrees).
        for t in [0, 12_345, 600_000] {
            let g = route.at(t);
            let north = (f64::from(g.latitude) / 1e7 - route.center.0) * METRES_PER_DEGREE;
            let east = (f64::from(g.longitude) / 1e7 - route.center.1)
                * METRES_PER_DEGREE
                * route.center.0.to_radians().cos();
            assert!((north.hypot(east) - route.radius_m).abs() < 0.1);
        }
        // Starting due east of the centre, counter-clockwise is heading north.
        let east_start = Route {
            phase: 0.0,
            ..route
        };
        assert_eq!(east_start.at(0).angle, 0);
        assert_eq!(u32::from(a.speed), route.speed_kmh as u32);
        assert!((route.distance_m(3_600_000) - route.speed_kmh * 1e3).abs() < 1e-6);
    }
}

mod answers {
    use fleetmq_device_plugins::teltonika::Gps;

    use crate::sim::answers::*;

    fn state() -> State<'static> {
        State {
            imei: "356307042441013",
            uptime_s: 42,
            gps: Gps {
                longitude: 252_797_000,
                latitude: 546_872_000,
                altitude: 112,
                angle: 90,
                satellites: 11,
                speed: 45,
            },
            records_acked: 7,
        }
    }

    #[test]
    fn each_known_command_answers_in_its_real_shape() {
        let s = state();
        assert!(answer("getinfo", &s).starts_with("INI:"));
        assert!(answer(" getinfo\r\n", &s).contains("REC:7"));
        let ver = answer("getver", &s);
        assert!(ver.starts_with("Ver:03.28.07"), "{ver}");
        assert!(ver.contains("IMEI:356307042441013"));
        assert_eq!(
            answer("getgps", &s),
            "GPS:1 Sat:11 Lat:54.687200 Long:25.279700 Alt:112 Speed:45 Dir:90"
        );
        assert!(answer("GETSTATUS", &s).starts_with("Data Link:"));
    }

    #[test]
    fn anything_else_is_echoed_as_done() {
        let s = state();
        assert_eq!(answer("setdigout 1", &s), "setdigout 1 OK");
        assert_eq!(answer("  ", &s), "empty command");
    }
}

mod stats {
    use std::time::Duration;

    use crate::sim::stats::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for us in (0..5_000u64).chain([1 << 20, (1 << 20) + 1, u64::MAX]) {
            let b = Histogram::bucket(us);
            assert!(b >= last || us > 5_000, "bucket of {us} went back");
            assert!(
                Histogram::upper(b) >= us || b == BUCKETS - 1,
                "{us} above its bucket"
            );
            last = b;
        }
        for i in SUB..BUCKETS - 1 {
            assert_eq!(Histogram::bucket(Histogram::upper(i)), i);
            assert_eq!(Histogram::bucket(Histogram::upper(i) + 1), i + 1);
        }
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_the_samples() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
        for us in 1..=1_000u64 {
            h.record(Duration::from_micros(us * 10));
        }
        assert_eq!(h.count(), 1_000);
        for (q, exact) in [(0.5, 5_000.0), (0.99, 9_900.0), (1.0, 10_000.0)] {
            let got = h.quantile(q).as_micros() as f64;
            assert!(
                got >= exact && got <= exact * 1.04,
                "q{q}: {got} vs {exact}"
            );
        }
        h.reset();
        assert_eq!(h.count(), 0);
    }
}
