//! The per-device summary (`telemetry_latest`): a device's point count and what its
//! keys' newest values are, kept in step with its blocks by the same transactions.
//!
//! A key's newest value is the newest, by `(ts, seq)`, of its entry in `latest` (per
//! key, decoded) and its values in `recent` (up to [`MAX_RECENT_SHAPES`] objects as
//! sent, one per shape). A batch copies a device's newest object over the one of its
//! shape; a new shape beyond the limit folds the oldest object into `latest`;
//! [`latest`] decodes the objects when asked.

use std::collections::BTreeMap;

use redb::{Database, ReadableDatabase as _, ReadableTable as _, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::block::object_values;
use super::{
    corrupt, count_points, decode_exact, open_read, BlocksTable, Latest, LatestTable, Row,
    MAX_LATEST_KEYS_PER_DEVICE, MAX_RECENT_SHAPES,
};
use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::schema::{
    TELEMETRY_LATEST as LATEST, TELEMETRY_LATEST_TABLE as LATEST_TABLE, TELEMETRY_POINTS as POINTS,
};

/// On-disk per-device summary. A new format is a new variant, never an edit to `V1`.
#[derive(Serialize, Deserialize)]
pub(super) enum StoredSummary {
    V1(SummaryV1),
    V2(Summary),
}

/// The summary before raw objects (read, never written).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct SummaryV1 {
    /// Points stored for the device.
    pub(super) points: u64,
    /// Newest value of each key, keys strictly ascending.
    pub(super) latest: Vec<LatestV1>,
}

/// A device's summary, in memory and as `StoredSummary::V2`. A key's newest value is
/// the newest, by `(ts, seq)`, of its entry in `latest` and its values in `recent`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Summary {
    /// Points stored for the device.
    pub(super) points: u64,
    /// Newest value of each key as far as objects no longer in `recent` go, keys
    /// strictly ascending.
    pub(super) latest: Vec<LatestV1>,
    /// The newest object of each of up to [`MAX_RECENT_SHAPES`] shapes, distinct shapes.
    pub(super) recent: Vec<RecentV2>,
}

/// The newest telemetry object of one shape.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RecentV2 {
    pub(super) shape: u64,
    pub(super) ts_ms: u64,
    pub(super) seq: u64,
    /// The object as stored (JSON text).
    pub(super) object: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LatestV1 {
    pub(super) key: String,
    pub(super) ts_ms: u64,
    /// The `seq` of the point it came from: breaks ties between equal timestamps.
    pub(super) seq: u64,
    /// JSON text.
    pub(super) value: String,
}

pub(super) fn encode_summary(s: Summary) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(&StoredSummary::V2(s))
        .map_err(|e| StoreError::encode("telemetry summary", e))
}

pub(super) fn decode_summary(device: &str, bytes: &[u8]) -> Result<Summary, StoreError> {
    let bad = |e| corrupt(LATEST_TABLE, device.to_owned(), e);
    let summary = match decode_exact(bytes).map_err(bad)? {
        StoredSummary::V1(v1) => Summary {
            points: v1.points,
            latest: v1.latest,
            recent: Vec::new(),
        },
        StoredSummary::V2(v2) => v2,
    };
    if summary.latest.windows(2).any(|w| w[0].key >= w[1].key) {
        return Err(bad("keys are not strictly ascending".into()));
    }
    Ok(summary)
}

/// Adds `run` (one device's points of this batch, in (ts, seq) order) to the device's
/// summary.
pub(super) fn update_summary(
    blocks: &BlocksTable<'_>,
    txn: &WriteTransaction,
    summaries: &mut LatestTable<'_>,
    device: &str,
    run: &[Row<'_>],
) -> Result<(), StoreError> {
    let stored = summaries
        .get(device)?
        .map(|v| decode_summary(device, v.value()));
    let mut summary = match stored {
        None => Summary::default(),
        Some(Ok(s)) => s,
        Some(Err(error)) => {
            tracing::warn!(%error, "rebuilding corrupt telemetry summary");
            // The run is already inserted, so it is part of the recount.
            let old = txn.open_table(POINTS)?;
            let points = count_points(blocks, Some(&old), device)?.saturating_sub(run.len() as u64);
            Summary {
                points,
                ..Summary::default()
            }
        }
    };
    summary.points = summary.points.saturating_add(run.len() as u64);
    // Newest first: once a shape took a point's object, no older point of the run is
    // newer than it, so each shape's object is copied at most once.
    for row in run.iter().rev() {
        let at = (row.point.ts_ms, row.point.seq);
        if let Some(r) = summary.recent.iter_mut().find(|r| r.shape == row.shape) {
            if at > (r.ts_ms, r.seq) {
                (r.ts_ms, r.seq) = at;
                r.object.clear();
                r.object.extend_from_slice(row.point.object);
            }
            continue;
        }
        if summary.recent.len() >= MAX_RECENT_SHAPES {
            let oldest = (0..summary.recent.len())
                .min_by_key(|&i| (summary.recent[i].ts_ms, summary.recent[i].seq))
                .unwrap_or(0);
            let r = summary.recent.swap_remove(oldest);
            fold_recent(&mut summary.latest, &r, device);
        }
        summary.recent.push(RecentV2 {
            shape: row.shape,
            ts_ms: at.0,
            seq: at.1,
            object: row.point.object.to_vec(),
        });
    }
    cap_latest(&mut summary.latest);
    summaries.insert(device, encode_summary(summary)?.as_slice())?;
    Ok(())
}

/// Merges the values of a recent object into per-key latest values (newer wins).
pub(super) fn fold_recent(latest: &mut Vec<LatestV1>, r: &RecentV2, device: &str) {
    let values = match object_values(&r.object) {
        Ok(values) => values,
        Err(error) => {
            tracing::error!(device_id = device, %error, "dropping corrupt latest telemetry object");
            return;
        }
    };
    for (key, json) in values {
        match latest.binary_search_by(|l| l.key.as_str().cmp(key.as_str())) {
            Ok(i) => {
                let l = &mut latest[i];
                if (r.ts_ms, r.seq) > (l.ts_ms, l.seq) {
                    l.ts_ms = r.ts_ms;
                    l.seq = r.seq;
                    l.value = json;
                }
            }
            Err(i) => latest.insert(
                i,
                LatestV1 {
                    key,
                    ts_ms: r.ts_ms,
                    seq: r.seq,
                    value: json,
                },
            ),
        }
    }
}

/// Keeps the [`MAX_LATEST_KEYS_PER_DEVICE`] most recently updated keys.
pub(super) fn cap_latest(latest: &mut Vec<LatestV1>) {
    if latest.len() > MAX_LATEST_KEYS_PER_DEVICE {
        latest.sort_unstable_by_key(|l| std::cmp::Reverse((l.ts_ms, l.seq)));
        latest.truncate(MAX_LATEST_KEYS_PER_DEVICE);
        latest.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    }
}

pub(super) fn read_summary(
    db: &Database,
    device: &DeviceId,
) -> Result<Option<Summary>, StoreError> {
    let txn = db.begin_read()?;
    let Some(table) = open_read(&txn, LATEST)? else {
        return Ok(None);
    };
    let dev = device.as_str();
    let row = table.get(dev)?;
    row.map(|v| decode_summary(dev, v.value())).transpose()
}

/// How many points `device` has stored.
pub fn count(db: &Database, device: &DeviceId) -> Result<u64, StoreError> {
    Ok(read_summary(db, device)?.map_or(0, |s| s.points))
}

/// The newest value of every key `device` reported, by key.
pub fn latest(db: &Database, device: &DeviceId) -> Result<BTreeMap<String, Latest>, StoreError> {
    let mut summary = read_summary(db, device)?.unwrap_or_default();
    for r in std::mem::take(&mut summary.recent) {
        fold_recent(&mut summary.latest, &r, device.as_str());
    }
    cap_latest(&mut summary.latest);
    Ok(summary
        .latest
        .into_iter()
        .map(|l| {
            (
                l.key,
                Latest {
                    ts_ms: l.ts_ms,
                    seq: l.seq,
                    value: l.value,
                },
            )
        })
        .collect())
}
