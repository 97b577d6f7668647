//! The decoders of every record the store reads back from redb (`fleetmq_storage::fuzz`),
//! each followed by its encoder as the store pairs them.
//!
//! Input: a record kind byte (modulo 10), a key length byte (modulo 64) and the key (as
//! lossy UTF-8: the device id, topic, session key or command id the record is stored
//! under), for telemetry rows 8 + 8 bytes of timestamp and id (big-endian) and a cut
//! byte, then the stored value.
//!
//! Invariants: a refused record is reported as `StoreError::Corrupt`; an accepted one
//! encodes, and its encoding decodes to the same record and encodes to the same bytes.
//! For telemetry: an old point row moves into a block as the sweeper moves it; a
//! block's header agrees with its decoded points, and the block re-encodes whole and
//! after retention cuts its oldest points; the objects of a V2 block or a summary are
//! read without panicking.

use std::fmt::Debug;

use fleetmq_storage::fuzz as store;
use fleetmq_storage::StoreError;

/// Runs one input; panics when an invariant fails.
pub fn check(data: &[u8]) {
    let [kind, key_len, rest @ ..] = data else {
        return;
    };
    let (key, rest) = rest.split_at(usize::from(key_len % 64).min(rest.len()));
    let key = String::from_utf8_lossy(key);
    let key = key.as_ref();
    match kind % 10 {
        0 => round_trip(|b| store::decode_device(key, b), store::encode_device, rest),
        1 => round_trip(
            |b| store::decode_service_client(key, b),
            store::encode_service_client,
            rest,
        ),
        2 => round_trip(
            |b| store::decode_retained(key, b),
            store::encode_retained,
            rest,
        ),
        3 => round_trip(store::decode_credential, store::encode_credential, rest),
        4 => round_trip(
            |b| store::decode_session(key, b),
            store::encode_session,
            rest,
        ),
        5 => round_trip(
            |b| store::decode_queued(key, b),
            |m| store::encode_queued(key, m),
            rest,
        ),
        6 => round_trip(
            |b| store::decode_command(key, b),
            store::encode_command,
            rest,
        ),
        7 => round_trip(
            |b| store::decode_summary(key, b),
            |s| {
                for (_, _, _, object) in &s.recent {
                    let _ = store::object_values(object);
                }
                store::encode_summary(s)
            },
            rest,
        ),
        kind => {
            let Some((ts, id, cut, value)) = telemetry_key(rest) else {
                return;
            };
            if kind == 8 {
                point(key, ts, id, value);
            } else {
                block(key, ts, id, cut, value);
            }
        }
    }
}

/// `(ts or max_ts, seq or id, cut, value)` at the front of a telemetry row's input.
fn telemetry_key(rest: &[u8]) -> Option<(u64, u64, usize, &[u8])> {
    let (ts, rest) = rest.split_first_chunk::<8>()?;
    let (id, rest) = rest.split_first_chunk::<8>()?;
    let (&cut, value) = rest.split_first()?;
    Some((
        u64::from_be_bytes(*ts),
        u64::from_be_bytes(*id),
        usize::from(cut),
        value,
    ))
}

fn refused(e: StoreError) {
    assert!(
        matches!(e, StoreError::Corrupt { .. }),
        "a decoder failed with something other than Corrupt: {e}"
    );
}

/// decode → encode → decode gives the same record, and encodes to the same bytes.
fn round_trip<T: PartialEq + Debug>(
    decode: impl Fn(&[u8]) -> Result<T, StoreError>,
    encode: impl Fn(&T) -> Result<Vec<u8>, StoreError>,
    bytes: &[u8],
) {
    let record = match decode(bytes) {
        Ok(record) => record,
        Err(e) => return refused(e),
    };
    let encoded =
        encode(&record).unwrap_or_else(|e| panic!("{record:?} decodes, not encodes: {e}"));
    let again = decode(&encoded).unwrap_or_else(|e| panic!("re-encoded {record:?}: {e}"));
    assert_eq!(again, record, "decode(encode(x)) != x");
    assert_eq!(encode(&again).ok(), Some(encoded), "encoding is not stable");
}

/// An old per-point row: what decodes moves into a block of its own, as the sweeper
/// moves it, and reads back from there.
fn point(device: &str, ts_ms: u64, seq: u64, bytes: &[u8]) {
    let values = match store::decode_point(device, ts_ms, seq, bytes) {
        Ok(values) => values,
        Err(e) => return refused(e),
    };
    let moved = vec![store::BlockPoint {
        ts_ms,
        seq,
        values: Some(values),
        object: None,
    }];
    let block = store::encode_block(ts_ms, seq, &moved)
        .unwrap_or_else(|e| panic!("a decoded point does not move into a block: {e}"));
    let back = store::decode_block(device, ts_ms, seq, &block).expect("the moved point reads");
    assert_eq!(back, moved);
}

/// A block: its header agrees with its points; it re-encodes whole, and after
/// retention cuts its `cut % len` oldest points; its objects read without panicking.
fn block(device: &str, max_ts: u64, id: u64, cut: usize, bytes: &[u8]) {
    let points = match store::decode_block(device, max_ts, id, bytes) {
        Ok(points) => points,
        Err(e) => {
            refused(e);
            // The sweeper reads only headers; whatever it makes of them, no panic.
            let _ = store::block_header(device, max_ts, id, bytes);
            return;
        }
    };
    assert!(!points.is_empty(), "an empty block decodes");
    assert_eq!(
        store::block_header(device, max_ts, id, bytes).ok(),
        Some((points.len() as u64, points[0].ts_ms)),
        "the header disagrees with the points"
    );
    for keep in [&points[..], &points[cut % points.len()..]] {
        let encoded = store::encode_block(max_ts, id, keep)
            .unwrap_or_else(|e| panic!("decoded points do not encode: {e}"));
        let back = store::decode_block(device, max_ts, id, &encoded).expect("re-encoded block");
        assert_eq!(back, keep, "decode(encode(block)) != block");
    }
    for object in points.iter().filter_map(|p| p.object.as_deref()) {
        let _ = store::object_values(object);
    }
}
