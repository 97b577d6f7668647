//! Retention for the telemetry tables: points too old or beyond the per-device cap,
//! and latest values too old, removed in bounded transactions; and the move of the
//! rows of the table before blocks (`telemetry_points`) into blocks.
//!
//! Retention works a bucket of time at a time (blocks never span buckets): a bucket
//! whose every point goes loses its blocks whole; otherwise its blocks are decoded,
//! merged, and the oldest points cut off, which rewrites at most that bucket's blocks
//! (normally one) per device per step.

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::{Database, ReadableDatabase as _, ReadableTable, WriteTransaction};

use super::block::{
    block_header, block_key_parts, bucket, decode_block_points, encode_block, encode_block_v2,
    BlockPoint, Body, PointRef, RawRef,
};
use super::{
    begin_write, count_points, decode_point, decode_summary, device_range, encode_summary, key_of,
    open_read, parse_block_key, parse_point_key, BlocksTable, LatestTable, Point, Summary,
};
use crate::error::StoreError;
use crate::schema::{
    TELEMETRY_BLOCKS as BLOCKS, TELEMETRY_LATEST as LATEST, TELEMETRY_POINTS as POINTS,
};

/// Most points one [`sweep`] transaction removes (or moves into blocks), so the ingest
/// writer waits for at most one bounded transaction at a time.
pub(super) const SWEEP_TXN_BUDGET: u64 = 20_000;

/// Enforces retention: removes every point older than `older_than_ms`, then the oldest
/// points of each device beyond `max_points_per_device`, and latest values older than
/// `older_than_ms`. Returns how many points were removed. First moves whatever the
/// table before blocks still holds into blocks.
///
/// Works in transactions of at most `SWEEP_TXN_BUDGET` removals each; points written
/// meanwhile are newer than the cutoff, so splitting the work changes nothing.
pub fn sweep(
    db: &Database,
    older_than_ms: u64,
    max_points_per_device: u64,
) -> Result<u64, StoreError> {
    sweep_until(db, older_than_ms, max_points_per_device, &|| false)
}

/// [`sweep`], checking `stop` before each transaction and returning early (with what
/// was removed so far) once it says so, so a large backlog never delays shutdown.
pub fn sweep_until(
    db: &Database,
    older_than_ms: u64,
    max_points_per_device: u64,
    stop: &dyn Fn() -> bool,
) -> Result<u64, StoreError> {
    // Old rows first, so that retention below sees every point in a block.
    loop {
        let moved = migrate_step(db, SWEEP_TXN_BUDGET)?;
        if moved < SWEEP_TXN_BUDGET {
            break;
        }
        if stop() {
            return Ok(0);
        }
    }
    let devices = devices_to_sweep(db, older_than_ms, max_points_per_device)?;
    let mut removed = 0u64;
    let mut next = 0usize;
    while next < devices.len() && !stop() {
        let txn = begin_write(db)?;
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            let mut summaries = txn.open_table(LATEST)?;
            let mut budget = SWEEP_TXN_BUDGET;
            while budget > 0 && next < devices.len() {
                let allowed = budget;
                let n = sweep_device(
                    &mut blocks,
                    &mut summaries,
                    &devices[next],
                    older_than_ms,
                    max_points_per_device,
                    allowed,
                )?;
                removed += n;
                budget -= n;
                if n < allowed {
                    // Fewer removed than allowed: this device is done. Otherwise the
                    // budget is spent and the next transaction goes on with it.
                    next += 1;
                }
            }
        }
        crate::metrics::commit(txn)?;
    }
    if removed > 0 {
        tracing::debug!(removed, devices = devices.len(), "telemetry sweep");
    }
    Ok(removed)
}

/// Moves up to `budget` of the oldest-keyed rows of `telemetry_points` into blocks in
/// one transaction; how many rows it took (fewer than `budget`: the table is empty).
/// A row that does not decode is dropped with an error logged (queries skipped it
/// already) and its device's count lowered.
pub(super) fn migrate_step(db: &Database, budget: u64) -> Result<u64, StoreError> {
    {
        let txn = db.begin_read()?;
        match open_read(&txn, POINTS)? {
            Some(old) if old.first()?.is_some() => {}
            _ => return Ok(0),
        }
    }
    let txn = begin_write(db)?;
    let moved = move_rows(&txn, budget)?;
    crate::metrics::commit(txn)?;
    if moved > 0 {
        tracing::info!(moved, "telemetry rows moved into blocks");
    }
    Ok(moved)
}

fn move_rows(txn: &WriteTransaction, budget: u64) -> Result<u64, StoreError> {
    let take = usize::try_from(budget).unwrap_or(usize::MAX);
    let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    {
        let mut old = txn.open_table(POINTS)?;
        let all = (Bound::<&[u8]>::Unbounded, Bound::<&[u8]>::Unbounded);
        for row in old
            .extract_from_if::<&[u8], _>(all, |_, _| true)?
            .take(take)
        {
            let (k, v) = row?;
            rows.push((k.value().to_vec(), v.value().to_vec()));
        }
    }
    let moved = rows.len() as u64;
    // Key order: a device's rows are adjacent and ascending by (ts, seq).
    let mut points: Vec<(&str, Point)> = Vec::with_capacity(rows.len());
    let mut lost: BTreeMap<&str, u64> = BTreeMap::new();
    for (k, v) in &rows {
        match parse_point_key(k) {
            Ok((dev, ts_ms, seq)) => match decode_point(dev, ts_ms, seq, v) {
                Ok(values) => points.push((dev, Point { ts_ms, seq, values })),
                Err(error) => {
                    tracing::error!(%error, "dropping corrupt telemetry point");
                    *lost.entry(dev).or_default() += 1;
                }
            },
            Err(error) => tracing::error!(%error, "dropping telemetry row with a bad key"),
        }
    }
    let mut blocks = txn.open_table(BLOCKS)?;
    let mut value = Vec::new();
    for run in points.chunk_by(|a, b| a.0 == b.0) {
        let dev = run[0].0;
        for chunk in run.chunk_by(|a, b| bucket(a.1.ts_ms) == bucket(b.1.ts_ms)) {
            let refs = chunk.iter().map(|(_, p)| PointRef {
                ts_ms: p.ts_ms,
                seq: p.seq,
                values: &p.values,
            });
            let Some((max_ts, id)) = block_key_parts(refs.clone().map(|r| (r.ts_ms, r.seq))) else {
                continue;
            };
            value.clear();
            encode_block(max_ts, id, refs, &mut value)?;
            blocks.insert(key_of(dev, max_ts, id).as_slice(), value.as_slice())?;
        }
    }
    if !lost.is_empty() {
        let mut summaries = txn.open_table(LATEST)?;
        for (dev, n) in lost {
            let stored = summaries.get(dev)?.map(|v| decode_summary(dev, v.value()));
            if let Some(Ok(mut s)) = stored {
                s.points = s.points.saturating_sub(n);
                summaries.insert(dev, encode_summary(s)?.as_slice())?;
            }
        }
    }
    Ok(moved)
}

/// Devices with old points, old latest values, more points than allowed, or an
/// undecodable summary.
fn devices_to_sweep(
    db: &Database,
    older_than_ms: u64,
    max: u64,
) -> Result<Vec<String>, StoreError> {
    let txn = db.begin_read()?;
    let (Some(summaries), Some(blocks)) = (open_read(&txn, LATEST)?, open_read(&txn, BLOCKS)?)
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in summaries.iter()? {
        let (k, v) = row?;
        let dev = k.value();
        let due = match decode_summary(dev, v.value()) {
            Ok(s) => {
                s.points > max
                    || s.latest.iter().any(|l| l.ts_ms < older_than_ms)
                    || s.recent.iter().any(|r| r.ts_ms < older_than_ms)
                    || (older_than_ms > 0 && has_points_before(&blocks, dev, older_than_ms)?)
            }
            Err(_) => true,
        };
        if due {
            out.push(dev.to_owned());
        }
    }
    Ok(out)
}

/// Whether `dev` may have a point older than `cutoff`: a block that ends before it, or
/// one of the cutoff's bucket that starts before it (or does not decode).
fn has_points_before(
    blocks: &impl ReadableTable<&'static [u8], &'static [u8]>,
    dev: &str,
    cutoff: u64,
) -> Result<bool, StoreError> {
    let lo = key_of(dev, 0, 0);
    let hi = key_of(dev, bucket(cutoff).1, u64::MAX);
    for row in blocks.range::<&[u8]>(lo.as_slice()..=hi.as_slice())? {
        let (k, v) = row?;
        let old = parse_block_key(k.value())
            .and_then(|(_, max_ts, id)| block_header(dev, max_ts, id, v.value()))
            .map_or(true, |(_, min_ts)| min_ts < cutoff);
        if old {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes up to `budget` of `dev`'s oldest points that are too old or beyond the cap,
/// and its latest values that are too old, keeping its summary in step; how many
/// points were removed.
fn sweep_device(
    blocks: &mut BlocksTable<'_>,
    summaries: &mut LatestTable<'_>,
    dev: &str,
    older_than_ms: u64,
    max: u64,
    budget: u64,
) -> Result<u64, StoreError> {
    let stored = summaries.get(dev)?.map(|v| decode_summary(dev, v.value()));
    let mut summary = match stored {
        None => return Ok(0),
        Some(Ok(s)) => s,
        Some(Err(error)) => {
            tracing::error!(%error, "rebuilding corrupt telemetry summary; latest values lost");
            Summary {
                points: count_points(blocks, None::<&BlocksTable<'_>>, dev)?,
                ..Summary::default()
            }
        }
    };
    let (old, lost_old) = remove_oldest(blocks, dev, Some(older_than_ms), budget)?;
    summary.points = summary.points.saturating_sub(old);
    let excess = summary.points.saturating_sub(max);
    let (capped, lost_capped) = remove_oldest(blocks, dev, None, excess.min(budget - old))?;
    summary.points = summary.points.saturating_sub(capped);
    if summary.points == 0 || lost_old || lost_capped {
        // Recount rather than trust a count that reached zero, or one that corrupt
        // blocks removed without a count made wrong.
        summary.points = count_points(blocks, None::<&BlocksTable<'_>>, dev)?;
    }
    summary.latest.retain(|l| l.ts_ms >= older_than_ms);
    summary.recent.retain(|r| r.ts_ms >= older_than_ms);
    if summary.points == 0 && summary.latest.is_empty() && summary.recent.is_empty() {
        summaries.remove(dev)?;
    } else {
        summaries.insert(dev, encode_summary(summary)?.as_slice())?;
    }
    Ok(old + capped)
}

/// A block of one bucket, read for retention.
struct Member {
    key: Vec<u8>,
    max_ts: u64,
    id: u64,
    bytes: Vec<u8>,
}

/// Removes up to `max` of `dev`'s oldest points: those before `before_ms`, or any.
/// Returns how many, and whether an undecodable block was removed (its points are not
/// in that number, so the device's count must be taken again).
fn remove_oldest(
    blocks: &mut BlocksTable<'_>,
    dev: &str,
    before_ms: Option<u64>,
    max: u64,
) -> Result<(u64, bool), StoreError> {
    let mut removed = 0u64;
    let mut lost = false;
    if before_ms == Some(0) {
        return Ok((0, false));
    }
    let (lo, hi) = device_range(dev);
    while removed < max {
        let first = match blocks.range::<&[u8]>(lo.as_slice()..=hi.as_slice())?.next() {
            None => break,
            Some(row) => row?.0.value().to_vec(),
        };
        let max_ts = match parse_block_key(&first) {
            Ok((_, max_ts, _)) => max_ts,
            Err(error) => {
                tracing::error!(%error, "removing telemetry block with a bad key");
                blocks.remove(first.as_slice())?;
                lost = true;
                continue;
            }
        };
        let (start, last) = bucket(max_ts);
        if before_ms.is_some_and(|cutoff| start >= cutoff) {
            break;
        }
        // Every block of the bucket: blocks of one bucket may interleave in time.
        let members = bucket_members(blocks, dev, (start, last))?;
        let whole = before_ms.is_none_or(|cutoff| last < cutoff);
        if whole {
            let (total, bad) = count_members(dev, &members);
            lost |= bad;
            if total <= max - removed {
                for m in &members {
                    blocks.remove(m.key.as_slice())?;
                }
                removed += total;
                continue;
            }
        }
        let (n, bad) = cut_bucket(blocks, dev, members, before_ms, max - removed)?;
        removed += n;
        lost |= bad;
        // Either the budget is spent or nothing older than the cutoff is left: later
        // buckets start after it.
        break;
    }
    Ok((removed, lost))
}

/// The blocks of `dev` in the bucket `(start, last)`, oldest key first.
fn bucket_members(
    blocks: &BlocksTable<'_>,
    dev: &str,
    (start, last): (u64, u64),
) -> Result<Vec<Member>, StoreError> {
    let lo = key_of(dev, start, 0);
    let hi = key_of(dev, last, u64::MAX);
    let mut members = Vec::new();
    for row in blocks.range::<&[u8]>(lo.as_slice()..=hi.as_slice())? {
        let (k, v) = row?;
        let (_, max_ts, id) = parse_block_key(k.value())?;
        members.push(Member {
            key: k.value().to_vec(),
            max_ts,
            id,
            bytes: v.value().to_vec(),
        });
    }
    Ok(members)
}

/// How many points `members` hold, by their headers, and whether a header did not
/// decode (logged; that block's points are not counted).
fn count_members(dev: &str, members: &[Member]) -> (u64, bool) {
    let mut total = 0u64;
    let mut lost = false;
    for m in members {
        match block_header(dev, m.max_ts, m.id, &m.bytes) {
            Ok((n, _)) => total = total.saturating_add(n),
            Err(error) => {
                tracing::error!(%error, "removing corrupt telemetry block");
                lost = true;
            }
        }
    }
    (total, lost)
}

/// Removes the `max` oldest points of one bucket's blocks that are before `before_ms`
/// (or any), rewriting the blocks that keep some. What a block loses is always its
/// oldest points, so its newest point, and with it its key, stays.
fn cut_bucket(
    blocks: &mut BlocksTable<'_>,
    dev: &str,
    members: Vec<Member>,
    before_ms: Option<u64>,
    max: u64,
) -> Result<(u64, bool), StoreError> {
    let mut lost = false;
    let mut decoded: Vec<(Member, Vec<BlockPoint>)> = Vec::with_capacity(members.len());
    for m in members {
        match decode_block_points(dev, m.max_ts, m.id, &m.bytes) {
            Ok(points) => decoded.push((m, points)),
            Err(error) => {
                tracing::error!(%error, "removing corrupt telemetry block");
                blocks.remove(m.key.as_slice())?;
                lost = true;
            }
        }
    }
    let mut candidates: Vec<(u64, u64, usize)> = decoded
        .iter()
        .enumerate()
        .flat_map(|(i, (_, points))| points.iter().map(move |p| (p.ts_ms, p.seq, i)))
        .filter(|&(ts, _, _)| before_ms.is_none_or(|cutoff| ts < cutoff))
        .collect();
    candidates.sort_unstable();
    candidates.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    let mut cut = vec![0usize; decoded.len()];
    for &(_, _, i) in &candidates {
        cut[i] += 1;
    }
    let mut value = Vec::new();
    for ((m, points), n) in decoded.iter().zip(cut) {
        if n == 0 {
            continue;
        }
        if n >= points.len() {
            blocks.remove(m.key.as_slice())?;
            continue;
        }
        value.clear();
        reencode(m, &points[n..], &mut value)?;
        blocks.insert(m.key.as_slice(), value.as_slice())?;
    }
    Ok((candidates.len() as u64, lost))
}

/// Encodes what is left of a block's points in the block's own version (a block's
/// points all have the same kind of body).
fn reencode(m: &Member, keep: &[BlockPoint], buf: &mut Vec<u8>) -> Result<(), StoreError> {
    let values: Option<Vec<PointRef<'_>>> = keep
        .iter()
        .map(|p| match &p.body {
            Body::Values(values) => Some(PointRef {
                ts_ms: p.ts_ms,
                seq: p.seq,
                values,
            }),
            Body::Object(_) => None,
        })
        .collect();
    if let Some(values) = values {
        return encode_block(m.max_ts, m.id, values.into_iter(), buf);
    }
    let objects: Option<Vec<RawRef<'_>>> = keep
        .iter()
        .map(|p| match &p.body {
            Body::Object(range) => Some(RawRef {
                ts_ms: p.ts_ms,
                seq: p.seq,
                object: m.bytes.get(range.clone())?,
            }),
            Body::Values(_) => None,
        })
        .collect();
    match objects {
        Some(objects) => encode_block_v2(m.max_ts, m.id, objects.into_iter(), buf),
        None => Err(StoreError::encode("telemetry block", "mixed point formats")),
    }
}
