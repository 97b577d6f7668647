//! The telemetry record codecs for `crate::fuzz` (feature `fuzzing`; not an API), in
//! plain types: a block's points with their bodies copied out, a summary as tuples.

use super::block::{self, Body, PointRef, RawRef};
use super::summary::{LatestV1, RecentV2, Summary};
use crate::error::StoreError;

/// One point of a decoded block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPoint {
    pub ts_ms: u64,
    pub seq: u64,
    /// `(key, JSON text)` of a V1 block's point.
    pub values: Option<Vec<(String, String)>>,
    /// The telemetry object of a V2 block's point, as stored.
    pub object: Option<Vec<u8>>,
}

/// The block stored under `(device, max_ts, id)`, as the store's reads decode it.
pub fn decode_block(
    device: &str,
    max_ts: u64,
    id: u64,
    bytes: &[u8],
) -> Result<Vec<BlockPoint>, StoreError> {
    Ok(block::decode_block_points(device, max_ts, id, bytes)?
        .into_iter()
        .map(|p| {
            let (values, object) = match p.body {
                Body::Values(values) => (Some(values), None),
                Body::Object(range) => (None, Some(bytes[range].to_vec())),
            };
            BlockPoint {
                ts_ms: p.ts_ms,
                seq: p.seq,
                values,
                object,
            }
        })
        .collect())
}

/// The bytes of a block keyed `(max_ts, id)` holding `points`, in the version their
/// bodies call for (as retention rewrites a block it cuts); mixed bodies are refused.
pub fn encode_block(max_ts: u64, id: u64, points: &[BlockPoint]) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::new();
    let values: Option<Vec<PointRef<'_>>> = points
        .iter()
        .map(|p| {
            Some(PointRef {
                ts_ms: p.ts_ms,
                seq: p.seq,
                values: p.values.as_deref()?,
            })
        })
        .collect();
    if let Some(values) = values {
        block::encode_block(max_ts, id, values.into_iter(), &mut buf)?;
        return Ok(buf);
    }
    let objects: Option<Vec<RawRef<'_>>> = points
        .iter()
        .map(|p| {
            Some(RawRef {
                ts_ms: p.ts_ms,
                seq: p.seq,
                object: p.object.as_deref()?,
            })
        })
        .collect();
    let objects = objects.ok_or_else(|| StoreError::encode("telemetry block", "mixed bodies"))?;
    block::encode_block_v2(max_ts, id, objects.into_iter(), &mut buf)?;
    Ok(buf)
}

/// `(point count, oldest timestamp)` as the sweeper reads them from a block's header.
pub fn block_header(
    device: &str,
    max_ts: u64,
    id: u64,
    bytes: &[u8],
) -> Result<(u64, u64), StoreError> {
    block::block_header(device, max_ts, id, bytes)
}

/// A stored telemetry object's values, as reads decode a V2 block's point.
pub fn object_values(object: &[u8]) -> Result<Vec<(String, String)>, String> {
    block::object_values(object)
}

/// A row of the old per-point table stored under `(device, ts_ms, seq)`.
pub fn decode_point(
    device: &str,
    ts_ms: u64,
    seq: u64,
    bytes: &[u8],
) -> Result<Vec<(String, String)>, StoreError> {
    super::decode_point(device, ts_ms, seq, bytes)
}

/// A device's summary: point count, `(key, ts_ms, seq, JSON text)` per key, and
/// `(shape, ts_ms, seq, object)` per recent object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SummaryView {
    pub points: u64,
    pub latest: Vec<(String, u64, u64, String)>,
    pub recent: Vec<(u64, u64, u64, Vec<u8>)>,
}

/// The summary stored for `device`.
pub fn decode_summary(device: &str, bytes: &[u8]) -> Result<SummaryView, StoreError> {
    let s = super::decode_summary(device, bytes)?;
    Ok(SummaryView {
        points: s.points,
        latest: s
            .latest
            .into_iter()
            .map(|l| (l.key, l.ts_ms, l.seq, l.value))
            .collect(),
        recent: s
            .recent
            .into_iter()
            .map(|r| (r.shape, r.ts_ms, r.seq, r.object))
            .collect(),
    })
}

/// The bytes the store writes for `s`.
pub fn encode_summary(s: &SummaryView) -> Result<Vec<u8>, StoreError> {
    super::encode_summary(Summary {
        points: s.points,
        latest: s
            .latest
            .iter()
            .map(|(key, ts_ms, seq, value)| LatestV1 {
                key: key.clone(),
                ts_ms: *ts_ms,
                seq: *seq,
                value: value.clone(),
            })
            .collect(),
        recent: s
            .recent
            .iter()
            .map(|(shape, ts_ms, seq, object)| RecentV2 {
                shape: *shape,
                ts_ms: *ts_ms,
                seq: *seq,
                object: object.clone(),
            })
            .collect(),
    })
}
