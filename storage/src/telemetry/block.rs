//! The block record: one device's points of one batch that fall in one
//! [`BLOCK_SPAN_MS`] bucket of time, stored as one row of `telemetry_blocks`.
//!
//! Key: device, NUL, `max_ts` BE, `id` BE, the same layout as a point key. `max_ts` is
//! the newest point's timestamp, so a newest-first walk of a device's keys meets blocks
//! by descending `max_ts`; `id` is the smallest `seq` of the block's points when it was
//! written (unique, since every `seq` is used once) and a base for their `seq` offsets.
//! Every point of a block lies in the bucket of `max_ts` (`[max_ts - max_ts % SPAN,
//! …+SPAN)`): blocks of different buckets never interleave in time, so a query knows
//! which blocks can hold a point without reading them, and retention splits at most
//! the blocks of one bucket.
//!
//! Value, two versions, both postcard's bytes of a `StoredBlock` variant written by
//! hand; both start with the variant, the point count, and per point, in ascending
//! `(ts, seq)` order, `max_ts - ts` and `seq - id`, then:
//! - V1 ([`encode_block`], variant 0; the session-5 format, still written when old
//!   rows move into blocks and when retention rewrites a V1 block): the number of
//!   values and each `(key, JSON text)`;
//! - V2 ([`encode_block_v2`], variant 1; what a batch writes): the telemetry object as
//!   the device sent it, length-prefixed. Its top-level members but `ts` are the
//!   point's values (of a repeated key the last); they are decoded only when read
//!   ([`object_values`]), so storing a point costs a copy, not a parse.

use std::ops::Range;

use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;
use serde_json::value::RawValue;

#[cfg(test)]
use super::Point;
use super::{corrupt, decode_exact, put_varint};
use crate::error::StoreError;
use crate::schema::TELEMETRY_BLOCKS_TABLE as BLOCKS_TABLE;

/// Width of the time buckets blocks are cut along, milliseconds.
pub(super) const BLOCK_SPAN_MS: u64 = 1_000;

/// First and last timestamp of the bucket holding `ts_ms`.
pub(super) fn bucket(ts_ms: u64) -> (u64, u64) {
    let start = ts_ms - ts_ms % BLOCK_SPAN_MS;
    (start, start.saturating_add(BLOCK_SPAN_MS - 1))
}

/// On-disk block. A new format is a new variant, never an edit to `V1`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(super) enum StoredBlock {
    V1(BlockV1),
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(super) struct BlockV1 {
    /// Ascending `(ts, seq)`, at least one.
    pub(super) points: Vec<BlockPointV1>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(super) struct BlockPointV1 {
    /// `max_ts - ts_ms`.
    pub(super) ts_back: u64,
    /// `seq - id`.
    pub(super) seq_off: u64,
    /// `(key, JSON text)`, keys strictly ascending.
    pub(super) values: Vec<(String, String)>,
}

/// One point to encode into a block.
#[derive(Clone, Copy)]
pub(super) struct PointRef<'a> {
    pub(super) ts_ms: u64,
    pub(super) seq: u64,
    pub(super) values: &'a [(String, String)],
}

/// `(max_ts, id)` of a block holding points at `(ts, seq)` (not empty).
pub(super) fn block_key_parts(points: impl Iterator<Item = (u64, u64)>) -> Option<(u64, u64)> {
    points.fold(None, |acc, (ts, seq)| match acc {
        None => Some((ts, seq)),
        Some((max_ts, id)) => Some((max_ts.max(ts), id.min(seq))),
    })
}

fn encode_error(why: &str) -> StoreError {
    StoreError::encode("telemetry block", why)
}

/// What every encoder checks of the points it writes, one at a time: each lies within
/// the block's key (in `max_ts`'s bucket, at or before `max_ts`, `seq >= id`), each after
/// the one before.
struct KeyOrder {
    start: u64,
    max_ts: u64,
    id: u64,
    prev: Option<(u64, u64)>,
}

impl KeyOrder {
    fn new(max_ts: u64, id: u64) -> KeyOrder {
        let (start, _) = bucket(max_ts);
        KeyOrder {
            start,
            max_ts,
            id,
            prev: None,
        }
    }

    fn check(&mut self, ts_ms: u64, seq: u64) -> Result<(), StoreError> {
        if ts_ms > self.max_ts || ts_ms < self.start || seq < self.id {
            return Err(encode_error("point outside the block's key"));
        }
        if self.prev.is_some_and(|q| q >= (ts_ms, seq)) {
            return Err(encode_error("points not ascending"));
        }
        self.prev = Some((ts_ms, seq));
        Ok(())
    }
}

/// Appends the encoding of a block keyed `(max_ts, id)` holding `points` to `buf`.
/// `points` must be ascending, in `max_ts`'s bucket, with `seq >= id`: anything else is
/// refused rather than written as a record that would not decode.
pub(super) fn encode_block<'a>(
    max_ts: u64,
    id: u64,
    points: impl ExactSizeIterator<Item = PointRef<'a>> + Clone,
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    if points.len() == 0 {
        return Err(encode_error("no points"));
    }
    let text = points
        .clone()
        .flat_map(|p| p.values)
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum::<usize>();
    buf.reserve(text + points.len() * 6 + 4);
    put_varint(buf, V1);
    put_varint(buf, points.len() as u64);
    let mut order = KeyOrder::new(max_ts, id);
    for p in points {
        order.check(p.ts_ms, p.seq)?;
        put_varint(buf, max_ts - p.ts_ms);
        put_varint(buf, p.seq - id);
        put_varint(buf, p.values.len() as u64);
        for (key, json) in p.values {
            put_varint(buf, key.len() as u64);
            buf.extend_from_slice(key.as_bytes());
            put_varint(buf, json.len() as u64);
            buf.extend_from_slice(json.as_bytes());
        }
    }
    Ok(())
}

fn block_name(device: &str, max_ts: u64, id: u64) -> String {
    format!("{device}@{max_ts}#{id}")
}

/// One point of a decoded block, its values decoded (V1) or not (V2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BlockPoint {
    pub(super) ts_ms: u64,
    pub(super) seq: u64,
    pub(super) body: Body,
}

/// A block point's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Body {
    /// `(key, JSON text)`, keys strictly ascending (V1).
    Values(Vec<(String, String)>),
    /// Where in the block's bytes its telemetry object lies (V2).
    Object(Range<usize>),
}

const V1: u64 = 0;
const V2: u64 = 1;

/// Decodes the block stored under `(device, max_ts, id)`: its points, ascending, the
/// objects of V2 points left undecoded in `bytes`.
pub(super) fn decode_block_points(
    device: &str,
    max_ts: u64,
    id: u64,
    bytes: &[u8],
) -> Result<Vec<BlockPoint>, StoreError> {
    let bad = |reason: &dyn std::fmt::Display| {
        corrupt(BLOCKS_TABLE, block_name(device, max_ts, id), reason)
    };
    let (start, _) = bucket(max_ts);
    let mut out: Vec<BlockPoint> = Vec::new();
    let mut push = |ts_back: u64, seq_off: u64, body: Body| {
        let ts_ms = max_ts
            .checked_sub(ts_back)
            .filter(|&ts| ts >= start)
            .ok_or_else(|| bad(&"timestamp outside the block's bucket"))?;
        let seq = id
            .checked_add(seq_off)
            .ok_or_else(|| bad(&"seq overflows"))?;
        if out.last().is_some_and(|q| (q.ts_ms, q.seq) >= (ts_ms, seq)) {
            return Err(bad(&"points are not strictly ascending"));
        }
        out.push(BlockPoint { ts_ms, seq, body });
        Ok(())
    };
    let mut rest = bytes;
    match take_varint(&mut rest) {
        Some(V2) => {
            let count = take_varint(&mut rest).ok_or_else(|| bad(&"truncated header"))?;
            if count == 0 {
                return Err(bad(&"empty block"));
            }
            for _ in 0..count {
                let (ts_back, seq_off, len) = (|| {
                    let ts_back = take_varint(&mut rest)?;
                    let seq_off = take_varint(&mut rest)?;
                    let len = usize::try_from(take_varint(&mut rest)?).ok()?;
                    (len <= rest.len()).then_some((ts_back, seq_off, len))
                })()
                .ok_or_else(|| bad(&"truncated point"))?;
                let at = bytes.len() - rest.len();
                rest = &rest[len..];
                push(ts_back, seq_off, Body::Object(at..at + len))?;
            }
            if !rest.is_empty() {
                return Err(bad(&format!("{} trailing bytes", rest.len())));
            }
        }
        _ => {
            let StoredBlock::V1(v1) = decode_exact(bytes).map_err(|e| bad(&e))?;
            if v1.points.is_empty() {
                return Err(bad(&"empty block"));
            }
            for p in v1.points {
                if p.values.windows(2).any(|w| w[0].0 >= w[1].0) {
                    return Err(bad(&"keys are not strictly ascending"));
                }
                push(p.ts_back, p.seq_off, Body::Values(p.values))?;
            }
        }
    }
    Ok(out)
}

/// Decodes the block stored under `(device, max_ts, id)`: its points, ascending, with
/// their values (tests: the store decodes objects only as it reads them) (a V2 point's object that does not decode makes the block corrupt).
#[cfg(test)]
pub(super) fn decode_block(
    device: &str,
    max_ts: u64,
    id: u64,
    bytes: &[u8],
) -> Result<Vec<Point>, StoreError> {
    decode_block_points(device, max_ts, id, bytes)?
        .into_iter()
        .map(|p| {
            let values = match p.body {
                Body::Values(values) => values,
                Body::Object(range) => object_values(&bytes[range])
                    .map_err(|e| corrupt(BLOCKS_TABLE, block_name(device, max_ts, id), e))?,
            };
            Ok(Point {
                ts_ms: p.ts_ms,
                seq: p.seq,
                values,
            })
        })
        .collect()
}

/// A stored telemetry object's values: every top-level member but `ts`, by key
/// (of a repeated key the last), each value as its JSON text.
pub(crate) fn object_values(object: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut members: std::collections::BTreeMap<String, &RawValue> =
        serde_json::from_slice(object).map_err(|e| format!("telemetry object: {e}"))?;
    members.remove("ts");
    Ok(members
        .into_iter()
        .map(|(key, value)| (key, value.get().to_owned()))
        .collect())
}

/// One point to encode into a V2 block: its telemetry object as sent.
#[derive(Clone, Copy)]
pub(super) struct RawRef<'a> {
    pub(super) ts_ms: u64,
    pub(super) seq: u64,
    pub(super) object: &'a [u8],
}

/// Appends the V2 encoding of a block keyed `(max_ts, id)` holding `points` to `buf`,
/// under the rules of [`encode_block`].
pub(super) fn encode_block_v2<'a>(
    max_ts: u64,
    id: u64,
    points: impl ExactSizeIterator<Item = RawRef<'a>> + Clone,
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    if points.len() == 0 {
        return Err(encode_error("no points"));
    }
    let text = points.clone().map(|p| p.object.len() + 8).sum::<usize>();
    buf.reserve(text + 4);
    put_varint(buf, V2);
    put_varint(buf, points.len() as u64);
    let mut order = KeyOrder::new(max_ts, id);
    for p in points {
        order.check(p.ts_ms, p.seq)?;
        put_varint(buf, max_ts - p.ts_ms);
        put_varint(buf, p.seq - id);
        put_varint(buf, p.object.len() as u64);
        buf.extend_from_slice(p.object);
    }
    Ok(())
}

/// Reads a postcard varint (at most 10 bytes) from the front of `bytes`.
fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..70).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        n |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// `(point count, oldest timestamp)` of a block, read from its first bytes without
/// decoding the rest (the sweeper's view; [`decode_block`] checks the whole record).
pub(super) fn block_header(
    device: &str,
    max_ts: u64,
    id: u64,
    bytes: &[u8],
) -> Result<(u64, u64), StoreError> {
    let mut rest = bytes;
    let header = (|| {
        let version = take_varint(&mut rest)?;
        let count = take_varint(&mut rest)?;
        let back = take_varint(&mut rest)?;
        let min_ts = max_ts.checked_sub(back)?;
        ((version == V1 || version == V2) && count > 0 && min_ts >= bucket(max_ts).0)
            .then_some((count, min_ts))
    })();
    header.ok_or_else(|| {
        corrupt(
            BLOCKS_TABLE,
            block_name(device, max_ts, id),
            "undecodable block header",
        )
    })
}
