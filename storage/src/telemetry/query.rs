//! Newest-first pages of a device's points, merged from its blocks and from rows of
//! the table before blocks.
//!
//! Blocks are walked by descending key (newest `max_ts` first) and their points go into
//! a heap; the heap's newest point is emitted once it is newer than anything a block
//! or row not yet read can hold (a block holds nothing newer than its `max_ts`), so the
//! order is exact even when blocks overlap because a device's timestamps went
//! backwards. A block holds points of one bucket only, so the walk starts at the last
//! block of the bucket of the page's upper bound. A point of a V2 block waits in the
//! heap as a range of the block's bytes; its object is decoded into values only when
//! the point is emitted, so a page decodes the points it returns (and those a key
//! filter skips), not whole blocks.

use std::collections::{BTreeSet, BinaryHeap};
use std::ops::{Bound, Range};
use std::rc::Rc;

use redb::{Database, ReadableDatabase as _};

use super::block::{bucket, decode_block_points, object_values, Body};
use super::{
    decode_point, key_of, open_read, parse_block_key, parse_point_key, Cursor, Page, Point,
    PointQuery, QUERY_SCAN_BUDGET,
};
use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::schema::{TELEMETRY_BLOCKS as BLOCKS, TELEMETRY_POINTS as POINTS};

/// A point waiting in the merge, ordered by `(ts_ms, seq)`.
struct Pending {
    ts_ms: u64,
    seq: u64,
    values: Lazy,
}

/// A waiting point's values: decoded, or its object in a block's bytes.
enum Lazy {
    Values(Vec<(String, String)>),
    Object(Rc<[u8]>, Range<usize>),
}

impl Pending {
    fn at(&self) -> (u64, u64) {
        (self.ts_ms, self.seq)
    }

    /// The point with its values; `None` (logged) if its object does not decode.
    fn into_point(self, dev: &str) -> Option<Point> {
        let values = match self.values {
            Lazy::Values(values) => values,
            Lazy::Object(bytes, range) => match object_values(&bytes[range]) {
                Ok(values) => values,
                Err(error) => {
                    tracing::error!(device_id = dev, ts_ms = self.ts_ms, seq = self.seq, %error, "skipping corrupt telemetry point");
                    return None;
                }
            },
        };
        Some(Point {
            ts_ms: self.ts_ms,
            seq: self.seq,
            values,
        })
    }
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.at() == other.at()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at().cmp(&other.at())
    }
}

/// What a range over a `&[u8] → &[u8]` table yields.
type RowItem<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

/// A range over a `&[u8] → &[u8]` table.
trait Rows<'a>: Iterator<Item = RowItem<'a>> {}
impl<'a, T: Iterator<Item = RowItem<'a>>> Rows<'a> for T {}

/// Splits a key into (device, and its two numbers).
type ParseKey = fn(&[u8]) -> Result<(&str, u64, u64), StoreError>;

/// The `(ts_ms, seq)` range of a page.
struct Span {
    lower: (u64, u64),
    upper: Bound<(u64, u64)>,
}

impl Span {
    fn contains(&self, at: (u64, u64)) -> bool {
        self.lower <= at
            && match self.upper {
                Bound::Included(u) => at <= u,
                Bound::Excluded(u) => at < u,
                Bound::Unbounded => true,
            }
    }
}

/// A row read ahead from one of the two tables: its key's two numbers and its bytes.
struct Ahead {
    a: u64,
    b: u64,
    bytes: Rc<[u8]>,
}

fn pull<'a, I>(rows: &mut I, parse: ParseKey) -> Result<Option<Ahead>, StoreError>
where
    I: Rows<'a>,
{
    let Some(row) = rows.next() else {
        return Ok(None);
    };
    let (k, v) = row?;
    let (_, a, b) = parse(k.value())?;
    Ok(Some(Ahead {
        a,
        b,
        bytes: Rc::from(v.value()),
    }))
}

/// The points of `device` with `from_ms <= ts_ms <= to_ms`, newest first, one page.
///
/// A page ends after `limit` points, or after [`QUERY_SCAN_BUDGET`] points were read
/// (then it may be short, or empty, yet carry a cursor). A block or point that does not
/// decode is skipped and logged, so one bad record does not hide a device's history.
pub fn query(db: &Database, device: &DeviceId, q: &PointQuery<'_>) -> Result<Page, StoreError> {
    let dev = device.as_str();
    let limit = q.limit.max(1);
    let lower = (q.from_ms, 0u64);
    let mut upper = Bound::Included((q.to_ms, u64::MAX));
    if let Some(c) = q.cursor {
        if (c.ts_ms, c.seq) <= (q.to_ms, u64::MAX) {
            upper = Bound::Excluded((c.ts_ms, c.seq));
        }
    }
    let upper_at = match upper {
        Bound::Included(u) | Bound::Excluded(u) => u,
        Bound::Unbounded => (u64::MAX, u64::MAX),
    };
    let in_range = Span { lower, upper };
    let empty = match upper {
        Bound::Included(u) => lower > u,
        Bound::Excluded(u) => lower >= u,
        Bound::Unbounded => false,
    };
    if empty {
        return Ok(Page::default());
    }
    let txn = db.begin_read()?;
    let blocks_table = open_read(&txn, BLOCKS)?;
    let old_table = open_read(&txn, POINTS)?;

    let lo = key_of(dev, lower.0, lower.1);
    // Blocks whose newest point is in the upper bound's bucket may still hold points
    // at or below it.
    let blocks_hi = key_of(dev, bucket(upper_at.0).1, u64::MAX);
    let mut blocks = match &blocks_table {
        Some(t) => Some(
            t.range::<&[u8]>(lo.as_slice()..=blocks_hi.as_slice())?
                .rev(),
        ),
        None => None,
    };
    let old_hi = upper.map(|(ts, seq)| key_of(dev, ts, seq));
    let mut olds = match &old_table {
        Some(t) => Some(
            t.range::<&[u8]>((
                Bound::Included(lo.as_slice()),
                old_hi.as_ref().map(Vec::as_slice),
            ))?
            .rev(),
        ),
        None => None,
    };
    let mut next_block = match blocks.as_mut() {
        Some(rows) => pull(rows, parse_block_key)?,
        None => None,
    };
    let mut next_old = match olds.as_mut() {
        Some(rows) => pull(rows, parse_point_key)?,
        None => None,
    };

    let wanted: Option<BTreeSet<&str>> = q.keys.map(|k| k.iter().map(String::as_str).collect());
    let mut heap: BinaryHeap<Pending> = BinaryHeap::new();
    let mut page = Page::default();
    let mut scanned = 0usize;
    loop {
        // Nothing unread is newer than this.
        let block_bound = next_block.as_ref().map(|b| (b.a, u64::MAX));
        let old_bound = next_old.as_ref().map(|o| (o.a, o.b));
        let unread = block_bound.max(old_bound);
        let ready = heap
            .peek()
            .is_some_and(|top| unread.is_none_or(|u| top.at() > u));
        if ready {
            let Some(pending) = heap.pop() else {
                break;
            };
            scanned += 1;
            let at = pending.at();
            if let Some(mut point) = pending.into_point(dev) {
                if let Some(wanted) = &wanted {
                    point
                        .values
                        .retain(|(key, _)| wanted.contains(key.as_str()));
                }
                if wanted.is_none() || !point.values.is_empty() {
                    page.points.push(point);
                }
            }
            if page.points.len() >= limit || scanned >= QUERY_SCAN_BUDGET {
                // Is there more in range? Read ahead until a point turns up or
                // nothing is left (only blocks at the range's edges can be empty).
                while heap.is_empty() && (next_block.is_some() || next_old.is_some()) {
                    load_next(
                        dev,
                        &mut heap,
                        &in_range,
                        (&mut next_block, blocks.as_mut()),
                        (&mut next_old, olds.as_mut()),
                    )?;
                }
                if !heap.is_empty() {
                    page.next = Some(Cursor {
                        ts_ms: at.0,
                        seq: at.1,
                    });
                }
                break;
            }
        } else if unread.is_none() {
            break;
        } else {
            load_next(
                dev,
                &mut heap,
                &in_range,
                (&mut next_block, blocks.as_mut()),
                (&mut next_old, olds.as_mut()),
            )?;
        }
    }
    Ok(page)
}

/// Moves the unread block or row that may hold the newest point into the heap (the
/// points of it in range), and reads the next one of its table ahead.
fn load_next<'a, B, O>(
    dev: &str,
    heap: &mut BinaryHeap<Pending>,
    in_range: &Span,
    (next_block, blocks): (&mut Option<Ahead>, Option<&mut B>),
    (next_old, olds): (&mut Option<Ahead>, Option<&mut O>),
) -> Result<(), StoreError>
where
    B: Rows<'a>,
    O: Rows<'a>,
{
    let block_bound = next_block.as_ref().map(|b| (b.a, u64::MAX));
    let old_bound = next_old.as_ref().map(|o| (o.a, o.b));
    if block_bound.is_some() && block_bound >= old_bound {
        if let Some(block) = next_block.take() {
            match decode_block_points(dev, block.a, block.b, &block.bytes) {
                Ok(points) => heap.extend(
                    points
                        .into_iter()
                        .filter(|p| in_range.contains((p.ts_ms, p.seq)))
                        .map(|p| Pending {
                            ts_ms: p.ts_ms,
                            seq: p.seq,
                            values: match p.body {
                                Body::Values(values) => Lazy::Values(values),
                                Body::Object(range) => Lazy::Object(block.bytes.clone(), range),
                            },
                        }),
                ),
                Err(error) => tracing::error!(%error, "skipping corrupt telemetry block"),
            }
        }
        *next_block = match blocks {
            Some(rows) => pull(rows, parse_block_key)?,
            None => None,
        };
    } else if let Some(row) = next_old.take() {
        match decode_point(dev, row.a, row.b, &row.bytes) {
            Ok(values) => heap.push(Pending {
                ts_ms: row.a,
                seq: row.b,
                values: Lazy::Values(values),
            }),
            Err(error) => tracing::error!(%error, "skipping corrupt telemetry point"),
        }
        *next_old = match olds {
            Some(rows) => pull(rows, parse_point_key)?,
            None => None,
        };
    }
    Ok(())
}
