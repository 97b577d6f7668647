//! The Teltonika codec (`fleetmq_device_plugins::teltonika`): the IMEI login, the frame
//! decoder over a stream as a tracker connection drives it, AVL records of Codec 8, 8
//! Extended and 16, Codec 12 messages, and records as telemetry.
//!
//! Input: a mode byte, then
//! - mode even: a byte stream from a tracker: a login (if the bytes start with one) and
//!   frames, read one after another, skipping a bad whole frame as a connection does;
//! - mode odd: the data of one frame (codec id to second count), which the check frames
//!   with its length and a right CRC, so the search reaches the record decoders instead
//!   of spending itself on the CRC.
//!
//! Invariants: a login takes 17 bytes, encodes back to them, and every shorter prefix
//! asks for more; a frame lies within the buffer, every shorter prefix asks for more,
//! and it encodes to a frame of the same length that decodes to the same value (a
//! response or command to the very same bytes), unless a record holds more IO elements
//! than its codec's total count can say (the decoder does not enforce that count); a bad whole frame names its length;
//! each record's telemetry is a JSON object with `ts` and the same values as the point
//! for the store.

use fleetmq_device_plugins::teltonika::{
    crc16, decode_login, encode_avl, encode_command, encode_login, encode_response,
    record_telemetry, telemetry_json, telemetry_values, AvlRecord, Codec12Kind, EncodeError, Frame,
    FrameDecoder, FrameError, LOGIN_LEN,
};
use serde_json::{Map, Value};

/// Runs one input; panics when an invariant fails.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        stream(rest);
    } else {
        frames(&framed(rest));
    }
}

/// `data` framed with its length and the right CRC.
pub(crate) fn framed(data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut out = vec![0, 0, 0, 0];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&u32::from(crc16(data)).to_be_bytes());
    out
}

/// A tracker's bytes: a login if there is one, then frames.
fn stream(bytes: &[u8]) {
    let rest = match decode_login(bytes) {
        Ok(Some((imei, used))) => {
            assert_eq!(used, LOGIN_LEN);
            assert_eq!(encode_login(&imei)[..], bytes[..used], "login re-encodes");
            for end in 0..used {
                assert_eq!(decode_login(&bytes[..end]), Ok(None), "login prefix {end}");
            }
            &bytes[used..]
        }
        Ok(None) | Err(_) => bytes,
    };
    frames(rest);
}

/// Frames one after another, as a connection reads them.
fn frames(mut buf: &[u8]) {
    let decoder = FrameDecoder::new();
    loop {
        match decoder.decode(buf) {
            Ok(None) => return,
            Ok(Some((frame, used))) => {
                assert!(used > 0 && used <= buf.len(), "frame of {used} bytes");
                assert_eq!(decoder.decode(&buf[..used - 1]), Ok(None), "strict prefix");
                round_trip(&decoder, &frame, &buf[..used]);
                buf = &buf[used..];
            }
            Err(e @ FrameError::Invalid { frame_len, .. }) => {
                assert_eq!(e.skip_len(), Some(frame_len));
                assert!(frame_len <= buf.len(), "bad frame of {frame_len} bytes");
                buf = &buf[frame_len..];
            }
            Err(e) => {
                assert_eq!(e.skip_len(), None);
                return;
            }
        }
    }
}

/// What decoded encodes back and decodes to the same.
fn round_trip(decoder: &FrameDecoder, frame: &Frame, bytes: &[u8]) {
    let encoded = match frame {
        Frame::Avl(packet) => {
            packet.records.iter().for_each(telemetry);
            match encode_avl(packet) {
                Ok(encoded) => encoded,
                // The decoder does not enforce a record's IO total, so it reads records
                // with more elements than the total's width can say; only those may
                // fail to encode.
                Err(EncodeError::TooManyElements { count, max, .. })
                    if packet
                        .records
                        .iter()
                        .any(|r| r.io.len() == count && count > max) =>
                {
                    return
                }
                Err(e) => panic!("{packet:?} decodes, not encodes: {e}"),
            }
        }
        Frame::Codec12(msg) => {
            let encoded = match msg.kind {
                Codec12Kind::Response => encode_response(&msg.text),
                // A command we write is ASCII; a non-ASCII one is refused, not written.
                Codec12Kind::Command => match std::str::from_utf8(&msg.text) {
                    Ok(text) if text.is_ascii() => encode_command(text),
                    _ => return,
                },
            };
            let encoded = encoded.unwrap_or_else(|e| panic!("{msg:?} does not encode: {e}"));
            assert_eq!(encoded, bytes, "Codec 12 re-encodes to other bytes");
            encoded
        }
    };
    // The IO total count is not enforced, so an AVL frame may differ there only.
    assert_eq!(encoded.len(), bytes.len(), "re-encoded to another length");
    assert_eq!(
        decoder.decode(&encoded),
        Ok(Some((frame.clone(), bytes.len()))),
        "decode(encode(x)) != x"
    );
}

/// The three forms of a record's telemetry agree.
fn telemetry(record: &AvlRecord) {
    let values = telemetry_values(record);
    let point = record_telemetry(record);
    assert_eq!(point.ts_ms, record.timestamp_ms);
    let json: Map<String, Value> =
        serde_json::from_slice(&telemetry_json(record)).expect("telemetry JSON is an object");
    assert_eq!(
        json.get("ts").and_then(Value::as_u64),
        Some(record.timestamp_ms)
    );
    assert_eq!(json.len(), values.len() + 1, "a key is repeated or lost");
    assert_eq!(point.values.len(), values.len());
    for (key, value) in &values {
        assert_eq!(json.get(key), Some(value), "{key} differs in the JSON");
        assert_eq!(
            point.value(key).as_ref(),
            Some(value),
            "{key} differs in the point"
        );
    }
}
