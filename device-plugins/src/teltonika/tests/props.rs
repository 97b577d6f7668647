//! Property tests: generated packets of all three codecs round trip through the encoder
//! and the decoder; every strict prefix of a frame asks for more; a changed byte is
//! refused; arbitrary bytes (raw, or framed with a right CRC so they reach the record
//! decoder) never panic, and what they decode to encodes back.

use proptest::collection::vec;
use proptest::prelude::*;

use crate::teltonika::*;

fn arb_codec() -> impl Strategy<Value = Codec> {
    prop_oneof![
        Just(Codec::Codec8),
        Just(Codec::Codec8Ext),
        Just(Codec::Codec16)
    ]
}

fn arb_id(codec: Codec) -> BoxedStrategy<u16> {
    match codec {
        Codec::Codec8 => (0..=255u16).boxed(),
        _ => any::<u16>().boxed(),
    }
}

fn arb_value(codec: Codec) -> BoxedStrategy<IoValue> {
    let fixed = prop_oneof![
        any::<u8>().prop_map(IoValue::U8),
        any::<u16>().prop_map(IoValue::U16),
        any::<u32>().prop_map(IoValue::U32),
        any::<u64>().prop_map(IoValue::U64),
    ];
    match codec {
        Codec::Codec8Ext => prop_oneof![
            4 => fixed,
            1 => vec(any::<u8>(), 0..40).prop_map(IoValue::Bytes),
        ]
        .boxed(),
        _ => fixed.boxed(),
    }
}

fn arb_gps() -> impl Strategy<Value = Gps> {
    (
        any::<i32>(),
        any::<i32>(),
        any::<i16>(),
        any::<u16>(),
        any::<u8>(),
        any::<u16>(),
    )
        .prop_map(
            |(longitude, latitude, altitude, angle, satellites, speed)| Gps {
                longitude,
                latitude,
                altitude,
                angle,
                satellites,
                speed,
            },
        )
}

fn arb_record(codec: Codec) -> impl Strategy<Value = AvlRecord> {
    let generation = match codec {
        Codec::Codec16 => any::<u8>().prop_map(Some).boxed(),
        _ => Just(None).boxed(),
    };
    let element = (arb_id(codec), arb_value(codec)).prop_map(|(id, value)| IoElement { id, value });
    (
        any::<u64>(),
        any::<u8>(),
        arb_gps(),
        arb_id(codec),
        generation,
        vec(element, 0..12),
    )
        .prop_map(
            |(timestamp_ms, priority, gps, event_io, generation_type, mut io)| {
                // The wire groups elements by width; the decoder returns them so.
                io.sort_by_key(|e| e.value.group());
                AvlRecord {
                    timestamp_ms,
                    priority,
                    gps,
                    event_io,
                    generation_type,
                    io,
                }
            },
        )
}

fn arb_packet() -> impl Strategy<Value = AvlPacket> {
    arb_codec().prop_flat_map(|codec| {
        vec(arb_record(codec), 0..5).prop_map(move |records| AvlPacket { codec, records })
    })
}

/// Any frame: AVL data, a command or a response.
fn arb_frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => arb_packet().prop_map(|p| encode_avl(&p).expect("encodable")),
        1 => "[ -~]{0,64}".prop_map(|t| encode_command(&t).expect("ASCII")),
        1 => vec(any::<u8>(), 0..64).prop_map(|t| encode_response(&t).expect("short")),
    ]
}

/// Decodes; whatever decodes must encode back to a frame that decodes to the same.
fn decode_and_reencode(bytes: &[u8]) {
    let d = FrameDecoder::new();
    let Ok(Some((frame, used))) = d.decode(bytes) else {
        return;
    };
    assert!(used <= bytes.len());
    let again = match &frame {
        Frame::Avl(p) => {
            for r in &p.records {
                let _ = record_telemetry(r);
                let json: serde_json::Value =
                    serde_json::from_slice(&telemetry_json(r)).expect("JSON");
                assert!(json.is_object());
            }
            match encode_avl(p) {
                Ok(bytes) => bytes,
                // More IO elements than the (unenforced) total count can say.
                Err(EncodeError::TooManyElements { count, max, .. })
                    if p.records.iter().any(|r| r.io.len() == count && count > max) =>
                {
                    return
                }
                Err(e) => panic!("{p:?} decodes, not encodes: {e}"),
            }
        }
        Frame::Codec12(m) => match m.kind {
            Codec12Kind::Command => encode_command(&m.text_lossy()).unwrap_or_default(),
            Codec12Kind::Response => encode_response(&m.text).expect("fits"),
        },
    };
    if again.is_empty() {
        return; // A non-ASCII command text, which we do not write ourselves.
    }
    // Only the IO total count, which is not enforced, may differ: same length.
    assert_eq!(again.len(), used);
    assert_eq!(d.decode(&again), Ok(Some((frame, used))));
}

/// `data` framed with the right length and CRC.
fn framed(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0];
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(data);
    out.extend(u32::from(crc16(data)).to_be_bytes());
    out
}

proptest! {
    #[test]
    fn avl_packets_round_trip(packet in arb_packet()) {
        let bytes = encode_avl(&packet).expect("encodable");
        let decoded = FrameDecoder::new().decode(&bytes);
        prop_assert_eq!(decoded, Ok(Some((Frame::Avl(packet.clone()), bytes.len()))));
        // Re-encoding gives the very bytes.
        prop_assert_eq!(encode_avl(&packet).unwrap(), bytes);
    }

    #[test]
    fn codec12_messages_round_trip(text in "[\\x00-\\x7f]{0,200}", response in vec(any::<u8>(), 0..200)) {
        let d = FrameDecoder::new();
        let cmd = encode_command(&text).unwrap();
        let expected = Codec12Message { kind: Codec12Kind::Command, text: text.clone().into_bytes() };
        prop_assert_eq!(d.decode(&cmd), Ok(Some((Frame::Codec12(expected), cmd.len()))));
        let resp = encode_response(&response).unwrap();
        let expected = Codec12Message { kind: Codec12Kind::Response, text: response };
        prop_assert_eq!(d.decode(&resp), Ok(Some((Frame::Codec12(expected), resp.len()))));
    }

    #[test]
    fn every_strict_prefix_asks_for_more(bytes in arb_frame_bytes()) {
        let d = FrameDecoder::new();
        for end in 0..bytes.len() {
            prop_assert_eq!(d.decode(&bytes[..end]), Ok(None), "prefix of {} bytes", end);
        }
        prop_assert!(matches!(d.decode(&bytes), Ok(Some((_, n))) if n == bytes.len()));
    }

    #[test]
    fn a_changed_byte_is_refused(bytes in arb_frame_bytes(), at in any::<prop::sample::Index>(), flip in 1..=255u8) {
        let d = FrameDecoder::new();
        let at = at.index(bytes.len());
        let mut bad = bytes.clone();
        bad[at] ^= flip;
        let result = d.decode(&bad);
        match at {
            0..=3 => prop_assert_eq!(result, Err(FrameError::BadPreamble { at, byte: bad[at] })),
            // A changed length moves the frame's end: never the same frame again.
            4..=7 => prop_assert!(!matches!(result, Ok(Some((_, n))) if n == bytes.len())),
            // CRC-16 catches every error burst of 16 bits or fewer.
            _ => prop_assert!(
                matches!(result, Err(FrameError::Invalid { problem: PacketError::CrcMismatch { .. }, frame_len }) if frame_len == bytes.len()),
                "{:?}", result
            ),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode_login(&bytes);
        decode_and_reencode(&bytes);
        // With a valid-looking header, so the decoder reads further.
        let mut headed = vec![0, 0, 0, 0];
        headed.extend(&bytes);
        decode_and_reencode(&headed);
    }

    #[test]
    fn arbitrary_framed_data_never_panics(
        codec in prop_oneof![Just(0x08u8), Just(0x8E), Just(0x10), Just(0x0C), any::<u8>()],
        count in 0..4u8,
        body in vec(any::<u8>(), 0..400),
    ) {
        let mut data = vec![codec, count];
        data.extend(&body);
        data.push(count);
        decode_and_reencode(&framed(&data));
    }

    #[test]
    fn logins_round_trip_and_prefixes_wait(digits in "[0-9]{15}") {
        let imei: Imei = digits.parse().unwrap();
        let bytes = encode_login(&imei);
        prop_assert_eq!(decode_login(&bytes), Ok(Some((imei, LOGIN_LEN))));
        for end in 0..bytes.len() {
            prop_assert_eq!(decode_login(&bytes[..end]), Ok(None));
        }
    }

    #[test]
    fn telemetry_forms_agree(record in arb_codec().prop_flat_map(arb_record)) {
        let values = telemetry_values(&record);
        let t = record_telemetry(&record);
        prop_assert_eq!(t.ts_ms, record.timestamp_ms);
        prop_assert_eq!(t.values.len(), values.len());
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&telemetry_json(&record)).expect("a JSON object");
        prop_assert_eq!(json.get("ts").and_then(|v| v.as_u64()), Some(record.timestamp_ms));
        prop_assert_eq!(json.len(), values.len() + 1);
        for (key, value) in &values {
            prop_assert_eq!(Some(value), json.get(key));
            prop_assert_eq!(&t.value(key), &Some(value.clone()));
        }
        let lat = json["lat"].as_f64().unwrap();
        prop_assert!((lat * 1e7 - f64::from(record.gps.latitude)).abs() < 1e-3);
    }
}
