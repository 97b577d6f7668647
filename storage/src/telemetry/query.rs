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
use std::fmt;
use std::iter::Rev;
use std::ops::{Bound, Range};
use std::rc::Rc;
use std::str::FromStr;

use redb::{Database, ReadTransaction, ReadableDatabase as _};

use super::block::{bucket, decode_block_points, object_values, Body};
use super::{
    decode_point, key_of, open_read, parse_block_key, parse_point_key, Page, Point, PointQuery,
    QUERY_SCAN_BUDGET,
};
use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::schema::{TELEMETRY_BLOCKS as BLOCKS, TELEMETRY_POINTS as POINTS};

/// Where a newest-first page ended; the next page starts just before it.
/// Shown to API clients as an opaque string (`Display` / `FromStr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub(super) ts_ms: u64,
    pub(super) seq: u64,
}

/// A string that is not a [`Cursor`] this store handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid telemetry cursor")]
pub struct InvalidCursor;

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ts_ms, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ts, seq) = s.split_once('.').ok_or(InvalidCursor)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ts) || !digits(seq) {
            return Err(InvalidCursor);
        }
        Ok(Cursor {
            ts_ms: ts.parse().map_err(|_| InvalidCursor)?,
            seq: seq.parse().map_err(|_| InvalidCursor)?,
        })
    }
}

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

/// A range of a `&[u8] → &[u8]` table, newest key first.
type Rows = Rev<redb::Range<'static, &'static [u8], &'static [u8]>>;

/// Splits a key into (device, and its two numbers).
type ParseKey = fn(&[u8]) -> Result<(&str, u64, u64), StoreError>;

/// The `(ts_ms, seq)` range of a page.
struct Span {
    lower: (u64, u64),
    upper: Bound<(u64, u64)>,
}

impl Span {
    /// The range `q` asks for: from `from_ms` up to `to_ms`, or up to just below its
    /// cursor when that is lower. `None` if nothing can be in it.
    fn of(q: &PointQuery<'_>) -> Option<Self> {
        let lower = (q.from_ms, 0u64);
        let mut upper = Bound::Included((q.to_ms, u64::MAX));
        if let Some(c) = q.cursor {
            if (c.ts_ms, c.seq) <= (q.to_ms, u64::MAX) {
                upper = Bound::Excluded((c.ts_ms, c.seq));
            }
        }
        let empty = match upper {
            Bound::Included(u) => lower > u,
            Bound::Excluded(u) => lower >= u,
            Bound::Unbounded => false,
        };
        (!empty).then_some(Self { lower, upper })
    }

    /// The upper bound's `(ts_ms, seq)`, whether included or not.
    fn upper_at(&self) -> (u64, u64) {
        match self.upper {
            Bound::Included(u) | Bound::Excluded(u) => u,
            Bound::Unbounded => (u64::MAX, u64::MAX),
        }
    }

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

fn pull(rows: Option<&mut Rows>, parse: ParseKey) -> Result<Option<Ahead>, StoreError> {
    let Some(row) = rows.and_then(Iterator::next) else {
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
    let Some(span) = Span::of(q) else {
        return Ok(Page::default());
    };
    let txn = db.begin_read()?;
    let mut merge = Merge::open(&txn, dev, span)?;
    let wanted: Option<BTreeSet<&str>> = q.keys.map(|k| k.iter().map(String::as_str).collect());
    let mut page = Page::default();
    let mut scanned = 0usize;
    while let Some(pending) = merge.pop()? {
        scanned += 1;
        let at = pending.at();
        let point = pending.into_point(dev);
        if let Some(point) = point.and_then(|p| only_wanted(p, wanted.as_ref())) {
            page.points.push(point);
        }
        if page.points.len() >= limit || scanned >= QUERY_SCAN_BUDGET {
            if merge.has_more()? {
                page.next = Some(Cursor {
                    ts_ms: at.0,
                    seq: at.1,
                });
            }
            break;
        }
    }
    Ok(page)
}

/// `point` with only the `wanted` keys' values (all without a key filter); `None` if
/// the filter leaves none.
fn only_wanted(mut point: Point, wanted: Option<&BTreeSet<&str>>) -> Option<Point> {
    if let Some(wanted) = wanted {
        point
            .values
            .retain(|(key, _)| wanted.contains(key.as_str()));
        if point.values.is_empty() {
            return None;
        }
    }
    Some(point)
}

/// A device's points in a span, newest first, merged from its blocks and old rows.
///
/// Points of what was read wait in `heap`; of each table the next block or row is read
/// ahead, and the rest waits in its range.
struct Merge<'d> {
    dev: &'d str,
    span: Span,
    heap: BinaryHeap<Pending>,
    next_block: Option<Ahead>,
    blocks: Option<Rows>,
    next_old: Option<Ahead>,
    olds: Option<Rows>,
}

impl<'d> Merge<'d> {
    /// Opens the ranges of both tables that may hold points of `span`, and reads the
    /// first of each ahead.
    fn open(txn: &ReadTransaction, dev: &'d str, span: Span) -> Result<Self, StoreError> {
        let blocks_table = open_read(txn, BLOCKS)?;
        let old_table = open_read(txn, POINTS)?;
        let lo = key_of(dev, span.lower.0, span.lower.1);
        // Blocks whose newest point is in the upper bound's bucket may still hold points
        // at or below it.
        let blocks_hi = key_of(dev, bucket(span.upper_at().0).1, u64::MAX);
        let mut blocks = match &blocks_table {
            Some(t) => Some(
                t.range::<&[u8]>(lo.as_slice()..=blocks_hi.as_slice())?
                    .rev(),
            ),
            None => None,
        };
        let old_hi = span.upper.map(|(ts, seq)| key_of(dev, ts, seq));
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
        Ok(Self {
            dev,
            span,
            heap: BinaryHeap::new(),
            next_block: pull(blocks.as_mut(), parse_block_key)?,
            blocks,
            next_old: pull(olds.as_mut(), parse_point_key)?,
            olds,
        })
    }

    /// The newest `(ts_ms, seq)` a block or row not yet read may hold; `None` once
    /// both tables are read.
    fn unread(&self) -> Option<(u64, u64)> {
        let block_bound = self.next_block.as_ref().map(|b| (b.a, u64::MAX));
        let old_bound = self.next_old.as_ref().map(|o| (o.a, o.b));
        block_bound.max(old_bound)
    }

    /// The newest point not yet taken, or `None` when there is none left.
    fn pop(&mut self) -> Result<Option<Pending>, StoreError> {
        loop {
            // Nothing unread is newer than this.
            let unread = self.unread();
            let ready = self
                .heap
                .peek()
                .is_some_and(|top| unread.is_none_or(|u| top.at() > u));
            if ready {
                return Ok(self.heap.pop());
            }
            if unread.is_none() {
                return Ok(None);
            }
            self.load_next()?;
        }
    }

    /// Whether any point is left. Reads ahead until a point turns up or nothing is left
    /// (only blocks at the range's edges can be empty).
    fn has_more(&mut self) -> Result<bool, StoreError> {
        while self.heap.is_empty() && (self.next_block.is_some() || self.next_old.is_some()) {
            self.load_next()?;
        }
        Ok(!self.heap.is_empty())
    }

    /// Moves the unread block or row that may hold the newest point into the heap (the
    /// points of it in range), and reads the next one of its table ahead.
    fn load_next(&mut self) -> Result<(), StoreError> {
        let dev = self.dev;
        let block_bound = self.next_block.as_ref().map(|b| (b.a, u64::MAX));
        let old_bound = self.next_old.as_ref().map(|o| (o.a, o.b));
        if block_bound.is_some() && block_bound >= old_bound {
            if let Some(block) = self.next_block.take() {
                match decode_block_points(dev, block.a, block.b, &block.bytes) {
                    Ok(points) => self.heap.extend(
                        points
                            .into_iter()
                            .filter(|p| self.span.contains((p.ts_ms, p.seq)))
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
            self.next_block = pull(self.blocks.as_mut(), parse_block_key)?;
        } else if let Some(row) = self.next_old.take() {
            match decode_point(dev, row.a, row.b, &row.bytes) {
                Ok(values) => self.heap.push(Pending {
                    ts_ms: row.a,
                    seq: row.b,
                    values: Lazy::Values(values),
                }),
                Err(error) => tracing::error!(%error, "skipping corrupt telemetry point"),
            }
            self.next_old = pull(self.olds.as_mut(), parse_point_key)?;
        }
        Ok(())
    }
}
