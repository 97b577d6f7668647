//! Retention for the telemetry tables: points too old or beyond the per-device cap,
//! and latest values too old, removed in bounded transactions.

use std::ops::Bound;

use redb::{Database, ReadableDatabase as _, ReadableTable};

use super::{
    begin_write, count_points, decode_summary, encode_summary, key_of, open_read, LatestTable,
    PointsTable, SummaryV1, LATEST, POINTS,
};
use crate::StoreError;

/// Most points one [`sweep`] transaction removes, so the ingest writer waits for at
/// most one bounded transaction at a time.
pub(super) const SWEEP_TXN_BUDGET: u64 = 20_000;

/// Enforces retention: removes every point older than `older_than_ms`, then the oldest
/// points of each device beyond `max_points_per_device`, and latest values older than
/// `older_than_ms`. Returns how many points were removed.
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
    let devices = devices_to_sweep(db, older_than_ms, max_points_per_device)?;
    let mut removed = 0u64;
    let mut next = 0usize;
    while next < devices.len() && !stop() {
        let txn = begin_write(db)?;
        {
            let mut points = txn.open_table(POINTS)?;
            let mut summaries = txn.open_table(LATEST)?;
            let mut budget = SWEEP_TXN_BUDGET;
            while budget > 0 && next < devices.len() {
                let allowed = budget;
                let n = sweep_device(
                    &mut points,
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

/// Devices with old points, old latest values, more points than allowed, or an
/// undecodable summary.
fn devices_to_sweep(
    db: &Database,
    older_than_ms: u64,
    max: u64,
) -> Result<Vec<String>, StoreError> {
    let txn = db.begin_read()?;
    let (Some(summaries), Some(points)) = (open_read(&txn, LATEST)?, open_read(&txn, POINTS)?)
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
                    || (older_than_ms > 0 && {
                        let lo = key_of(dev, 0, 0);
                        let hi = key_of(dev, older_than_ms, 0);
                        points
                            .range::<&[u8]>(lo.as_slice()..hi.as_slice())?
                            .next()
                            .is_some()
                    })
            }
            Err(_) => true,
        };
        if due {
            out.push(dev.to_owned());
        }
    }
    Ok(out)
}

/// Removes up to `budget` of `dev`'s oldest points that are too old or beyond the cap,
/// and its latest values that are too old, keeping its summary in step; how many
/// points were removed.
fn sweep_device(
    points: &mut PointsTable<'_>,
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
            SummaryV1 {
                points: count_points(points, dev)?,
                latest: Vec::new(),
            }
        }
    };
    let old = remove_oldest(points, dev, Some(older_than_ms), budget)?;
    summary.points = summary.points.saturating_sub(old);
    let excess = summary.points.saturating_sub(max);
    let capped = remove_oldest(points, dev, None, excess.min(budget - old))?;
    summary.points = summary.points.saturating_sub(capped);
    if summary.points == 0 {
        // Recount rather than trust a count that reached zero.
        summary.points = count_points(points, dev)?;
    }
    summary.latest.retain(|l| l.ts_ms >= older_than_ms);
    if summary.points == 0 && summary.latest.is_empty() {
        summaries.remove(dev)?;
    } else {
        summaries.insert(dev, encode_summary(summary)?.as_slice())?;
    }
    Ok(old + capped)
}

/// Removes up to `max` of `dev`'s oldest points: those before `before_ms`, or any.
fn remove_oldest(
    points: &mut PointsTable<'_>,
    dev: &str,
    before_ms: Option<u64>,
    max: u64,
) -> Result<u64, StoreError> {
    if max == 0 || before_ms == Some(0) {
        return Ok(0);
    }
    let lo = key_of(dev, 0, 0);
    let end = match before_ms {
        Some(ts) => Bound::Excluded(key_of(dev, ts, 0)),
        None => Bound::Included(key_of(dev, u64::MAX, u64::MAX)),
    };
    let take = usize::try_from(max).unwrap_or(usize::MAX);
    let mut removed = 0;
    for row in points
        .extract_from_if::<&[u8], _>(
            (
                Bound::Included(lo.as_slice()),
                end.as_ref().map(Vec::as_slice),
            ),
            |_, _| true,
        )?
        .take(take)
    {
        row?;
        removed += 1;
    }
    Ok(removed)
}
