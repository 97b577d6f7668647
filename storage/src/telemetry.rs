//! The telemetry tables: every point a device reported, and per device its point count
//! and the latest value of each key, kept in step by the same transactions.
//!
//! - `telemetry_blocks`: block key → block (`block.rs`). A batch stores each device's
//!   points as one row per [`block::BLOCK_SPAN_MS`] bucket of time they fall in, not
//!   one row per point: the B-tree insert and its page writes were most of what storing
//!   a point cost. The key is the device id, a NUL, then the block's newest `ts_ms` and
//!   its `id` big-endian, so a reverse range scan meets a device's blocks newest first
//!   and a query merges the points of overlapping blocks (`query.rs`). Every point has
//!   a `seq` from one store-wide counter: two points of a device with the same
//!   timestamp never overwrite each other, and equal timestamps keep arrival order.
//! - `telemetry_points`: the format before blocks, point key (device, NUL, `ts_ms` BE,
//!   `seq` BE) → `StoredPoint`. Nothing writes it any more; queries read it alongside
//!   the blocks, and the sweeper moves its rows into blocks in bounded transactions
//!   (`retention.rs`) until it is empty, so an upgraded store loses and repeats nothing.
//! - `telemetry_latest`: device → `StoredSummary`: how many points the device has (so
//!   the per-device cap and [`count`] cost one lookup) and what its keys' newest values
//!   are: up to [`MAX_RECENT_SHAPES`] newest telemetry objects as sent, one per *shape*
//!   (list of key names), plus the newest value of each key that only older objects
//!   carried. A batch copies a device's newest object over the one of the same shape
//!   instead of decoding every point's keys; [`latest`] decodes the few objects when
//!   asked (`summary.rs`). One row per device keeps a batch to one read and one write
//!   per device.
//! - `telemetry_meta`: `"next_seq"` → the next unused `seq`.
//!
//! A point is stored as its telemetry object, the JSON text the device sent (the
//! broker validated it): its top-level members but `ts` are the values. This module
//! splits objects into `(key, JSON text)` pairs only when they are read, and returns
//! values without parsing them further (the broker parses them).
//!
//! Writes are batched: [`insert_batch`] commits any number of points in one durable
//! transaction. [`sweep`] enforces retention in bounded transactions so ingest is never
//! held up behind one huge delete. Nothing here panics on stored bytes: undecodable
//! records come back as [`StoreError::Corrupt`]; [`query`] skips and logs an
//! undecodable block or point so one bad record does not hide a device's history, and
//! [`sweep`] rebuilds an undecodable summary.

use std::collections::HashMap;
use std::fmt;

#[cfg(test)]
use redb::ReadableDatabase as _;
use redb::{
    Database, Durability, Key, ReadOnlyTable, ReadTransaction, ReadableTable, Table,
    TableDefinition, TableError, Value, WriteTransaction,
};
use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::schema::{
    TELEMETRY_BLOCKS as BLOCKS, TELEMETRY_BLOCKS_TABLE as BLOCKS_TABLE, TELEMETRY_LATEST as LATEST,
    TELEMETRY_META as META, TELEMETRY_POINTS as POINTS, TELEMETRY_POINTS_TABLE as POINTS_TABLE,
};

const NEXT_SEQ: &str = "next_seq";

/// Most rows one [`query`] page reads; a key filter that matches rarely ends the page
/// early with a cursor rather than walking a device's whole history in one call.
pub const QUERY_SCAN_BUDGET: usize = 50_000;
/// Most distinct keys whose latest value is kept per device; beyond it the least
/// recently updated go, so a device inventing keys cannot grow its summary forever.
pub const MAX_LATEST_KEYS_PER_DEVICE: usize = 1_000;
/// Most objects a device's summary keeps as sent, one per shape; a new shape beyond it
/// has the oldest decoded into per-key values. Devices send one or two shapes.
pub const MAX_RECENT_SHAPES: usize = 4;

// ---- keys ----------------------------------------------------------------------

/// Bytes after the device id in a point key: NUL, ts_ms, seq.
const KEY_SUFFIX: usize = 1 + 8 + 8;

/// Writes the key of `(device, ts_ms, seq)` into `buf`. Device ids never contain NUL,
/// so byte order is (device, ts_ms, seq) order and no device's keys interleave
/// another's (`"a\0…"` < `"a-…"` < `"ab…"`).
fn point_key(buf: &mut Vec<u8>, device: &str, ts_ms: u64, seq: u64) {
    buf.clear();
    buf.extend_from_slice(device.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&ts_ms.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
}

fn key_of(device: &str, ts_ms: u64, seq: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(device.len() + KEY_SUFFIX);
    point_key(&mut buf, device, ts_ms, seq);
    buf
}

/// Splits a point key into `(device, ts_ms, seq)`.
fn parse_point_key(key: &[u8]) -> Result<(&str, u64, u64), StoreError> {
    parse_key(POINTS_TABLE, key)
}

/// Splits a block key into `(device, max_ts, id)`.
fn parse_block_key(key: &[u8]) -> Result<(&str, u64, u64), StoreError> {
    parse_key(BLOCKS_TABLE, key)
}

/// Splits a key of `table` laid out as (device, NUL, u64 BE, u64 BE).
fn parse_key<'k>(table: &'static str, key: &'k [u8]) -> Result<(&'k str, u64, u64), StoreError> {
    let bad = |reason| corrupt(table, String::from_utf8_lossy(key).into_owned(), reason);
    let split = key
        .len()
        .checked_sub(KEY_SUFFIX)
        .filter(|&i| i > 0 && key[i] == 0)
        .ok_or_else(|| bad("malformed point key"))?;
    let device = std::str::from_utf8(&key[..split]).map_err(|_| bad("device is not UTF-8"))?;
    let mut ts = [0u8; 8];
    let mut seq = [0u8; 8];
    ts.copy_from_slice(&key[split + 1..split + 9]);
    seq.copy_from_slice(&key[split + 9..]);
    Ok((device, u64::from_be_bytes(ts), u64::from_be_bytes(seq)))
}

// ---- records -----------------------------------------------------------------

/// On-disk point. A new format is a new variant, never an edit to `V1`.
#[derive(Deserialize)]
enum StoredPoint {
    V1(PointV1),
}

#[derive(Deserialize)]
struct PointV1 {
    /// `(key, JSON text)`, keys strictly ascending.
    values: Vec<(String, String)>,
}

/// Encoding side of [`StoredPoint`] through serde, borrowed: what [`encode_point`]
/// writes by hand, kept to check it against postcard.
#[cfg(test)]
#[derive(Serialize)]
enum StoredPointRef<'a> {
    V1(PointV1Ref<'a>),
}

#[cfg(test)]
#[derive(Serialize)]
struct PointV1Ref<'a> {
    values: &'a [(String, String)],
}

fn corrupt(table: &'static str, key: String, reason: impl fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        key,
        reason: reason.to_string(),
    }
}

/// Decodes a whole postcard value, refusing trailing bytes.
fn decode_exact<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(format!("{} trailing bytes", rest.len()))
    }
}

/// Appends the encoding of a point with `values` to `buf`: postcard's bytes for
/// `StoredPoint::V1` (variant, count, then each key and JSON text length-prefixed).
/// Nothing writes points any more (blocks replaced them); tests write rows of the
/// format before blocks with it.
#[cfg(test)]
fn encode_point(values: &[(String, String)], mut buf: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    const V1: u64 = 0;
    let text = values
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>();
    buf.reserve(text + 2);
    put_varint(&mut buf, V1);
    put_varint(&mut buf, values.len() as u64);
    for (key, json) in values {
        put_varint(&mut buf, key.len() as u64);
        buf.extend_from_slice(key.as_bytes());
        put_varint(&mut buf, json.len() as u64);
        buf.extend_from_slice(json.as_bytes());
    }
    Ok(buf)
}

/// postcard's varint: 7 bits per byte, low bits first, high bit set on all but the last.
fn put_varint(buf: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// Decodes a point stored under `(device, ts_ms, seq)`.
fn decode_point(
    device: &str,
    ts_ms: u64,
    seq: u64,
    bytes: &[u8],
) -> Result<Vec<(String, String)>, StoreError> {
    let name = || format!("{device}@{ts_ms}#{seq}");
    let StoredPoint::V1(v1) = decode_exact(bytes).map_err(|e| corrupt(POINTS_TABLE, name(), e))?;
    if v1.values.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(corrupt(
            POINTS_TABLE,
            name(),
            "keys are not strictly ascending",
        ));
    }
    Ok(v1.values)
}

// ---- API types -------------------------------------------------------------

/// A point to store: one allocation holding the device id and the telemetry object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPoint {
    /// The device id's bytes, then the object's.
    buf: Box<[u8]>,
    device_len: usize,
    ts_ms: u64,
    shape: u64,
}

impl NewPoint {
    /// A point of `device` measured at `ts_ms` (unix milliseconds) with `values` as
    /// `(key, JSON text)`. The JSON is stored as given: the caller guarantees it is
    /// valid. Of a repeated key the first is kept; a key `ts` is not a value (an
    /// object's `ts` is its timestamp) and is left out.
    pub fn new(device: DeviceId, ts_ms: u64, mut values: Vec<(String, String)>) -> NewPoint {
        // Stable and linear on input that is already sorted (from a `BTreeMap`).
        values.sort_by(|a, b| a.0.cmp(&b.0));
        values.dedup_by(|later, earlier| later.0 == earlier.0);
        values.retain(|(key, _)| key != "ts");
        let mut object = Vec::with_capacity(
            2 + values
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>(),
        );
        let mut shape = 0u64;
        object.push(b'{');
        for (i, (key, json)) in values.iter().enumerate() {
            if i > 0 {
                object.push(b',');
            }
            // Writing a string cannot fail.
            let _ = serde_json::to_writer(&mut object, key);
            object.push(b':');
            object.extend_from_slice(json.as_bytes());
            for &b in key.as_bytes().iter().chain(b"\0") {
                shape = (shape ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        object.push(b'}');
        NewPoint::object(&device, ts_ms, shape, &object)
    }

    /// A point of `device` measured at `ts_ms` whose values are the top-level members
    /// but `ts` of `object`, a JSON object as the device sent it (the caller guarantees
    /// it is valid UTF-8 JSON). `shape` tells objects with different key lists apart
    /// (equal key lists must give equal shapes; see [`MAX_RECENT_SHAPES`]).
    pub fn object(device: &DeviceId, ts_ms: u64, shape: u64, object: &[u8]) -> NewPoint {
        let id = device.as_str().as_bytes();
        let mut buf = Vec::with_capacity(id.len() + object.len());
        buf.extend_from_slice(id);
        buf.extend_from_slice(object);
        NewPoint {
            buf: buf.into_boxed_slice(),
            device_len: id.len(),
            ts_ms,
            shape,
        }
    }

    fn device(&self) -> &[u8] {
        &self.buf[..self.device_len]
    }

    fn object_bytes(&self) -> &[u8] {
        &self.buf[self.device_len..]
    }

    /// The device id, as given to the constructor.
    pub fn device_id(&self) -> &str {
        // Built from a `DeviceId`'s bytes, so valid UTF-8.
        std::str::from_utf8(self.device()).unwrap_or_default()
    }

    /// When it was measured, unix milliseconds.
    pub fn ts_ms(&self) -> u64 {
        self.ts_ms
    }

    /// Tells objects with different key lists apart (see [`NewPoint::object`]).
    pub fn shape(&self) -> u64 {
        self.shape
    }

    /// The telemetry object, JSON text (it may carry `ts`, which is not a value).
    pub fn object_json(&self) -> &[u8] {
        self.object_bytes()
    }
}

/// A stored point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// When it was measured, unix milliseconds.
    pub ts_ms: u64,
    /// Its store-wide sequence number (arrival order).
    pub seq: u64,
    /// `(key, JSON text)`, keys ascending.
    pub values: Vec<(String, String)>,
}

/// The newest stored value of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    /// When it was measured, unix milliseconds.
    pub ts_ms: u64,
    /// The `seq` of the point it came from.
    pub seq: u64,
    /// JSON text.
    pub value: String,
}

/// What [`query`] reads.
#[derive(Debug, Clone, Copy)]
pub struct PointQuery<'a> {
    /// Oldest timestamp included, unix milliseconds.
    pub from_ms: u64,
    /// Newest timestamp included, unix milliseconds.
    pub to_ms: u64,
    /// Only these keys; points carrying none of them are skipped. `None`: every key.
    pub keys: Option<&'a [String]>,
    /// Most points returned (at least one is asked for).
    pub limit: usize,
    /// Continue after a previous page.
    pub cursor: Option<Cursor>,
}

/// One newest-first page of points.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Newest first.
    pub points: Vec<Point>,
    /// Where to continue, when more points may follow.
    pub next: Option<Cursor>,
}

// ---- tables ------------------------------------------------------------------

/// Creates the telemetry tables, so readers never meet a missing table. Called from
/// the store's initialisation transaction.
pub fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    crate::schema::create_telemetry_tables(txn)
}

/// Opens `def` for reading; a table that was never created reads as empty (`None`).
fn open_read<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<'static, K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(def) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn begin_write(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

type BlocksTable<'t> = Table<'t, &'static [u8], &'static [u8]>;
type LatestTable<'t> = Table<'t, &'static str, &'static [u8]>;

// ---- writes ------------------------------------------------------------------

/// Stores `points` in one durable write transaction, updating each device's summary
/// (count, latest values) in the same transaction. Returns how many points were
/// stored. Either every point is stored or none is.
pub fn insert_batch(db: &Database, points: &[NewPoint]) -> Result<u64, StoreError> {
    if points.is_empty() {
        return Ok(0);
    }
    let txn = begin_write(db)?;
    let stored = write_points(&txn, points)?;
    crate::metrics::commit(txn)?;
    Ok(stored)
}

/// One point of a batch, with its `seq`.
#[derive(Clone, Copy)]
struct Row<'a> {
    device: &'a [u8],
    point: RawRef<'a>,
    shape: u64,
}

fn write_points(txn: &WriteTransaction, points: &[NewPoint]) -> Result<u64, StoreError> {
    let n = u64::try_from(points.len())
        .map_err(|_| StoreError::Invalid("telemetry batch too large".into()))?;
    let base = {
        let mut meta = txn.open_table(META)?;
        let base = meta.get(NEXT_SEQ)?.map_or(0, |v| v.value());
        let next = base
            .checked_add(n)
            .ok_or_else(|| StoreError::Invalid("telemetry sequence exhausted".into()))?;
        meta.insert(NEXT_SEQ, next)?;
        base
    };
    // `seq` is arrival order. Sorted by (device, ts, seq), each device's run is in
    // (ts, seq) order, ready to be cut into blocks.
    let order = sort_rows(points.iter().zip(base..).map(|(p, seq)| Row {
        device: p.device(),
        point: RawRef {
            ts_ms: p.ts_ms,
            seq,
            object: p.object_bytes(),
        },
        shape: p.shape,
    }));

    let mut blocks = txn.open_table(BLOCKS)?;
    let mut summaries = txn.open_table(LATEST)?;
    let mut key = Vec::new();
    let mut value = Vec::new();
    for run in order.chunk_by(|a, b| a.device == b.device) {
        // Built from a `DeviceId`, so always UTF-8.
        let device = std::str::from_utf8(run[0].device)
            .map_err(|_| StoreError::Invalid("telemetry device id is not UTF-8".into()))?;
        let same_bucket = |a: &Row<'_>, b: &Row<'_>| bucket(a.point.ts_ms) == bucket(b.point.ts_ms);
        for chunk in run.chunk_by(same_bucket) {
            let rows = chunk.iter().map(|r| r.point);
            let Some((max_ts, id)) = block_key_parts(rows.clone().map(|r| (r.ts_ms, r.seq))) else {
                continue;
            };
            point_key(&mut key, device, max_ts, id);
            value.clear();
            encode_block_v2(max_ts, id, rows, &mut value)?;
            blocks.insert(key.as_slice(), value.as_slice())?;
        }
        update_summary(&blocks, txn, &mut summaries, device, run)?;
    }
    Ok(n)
}

/// A batch's rows, given in `seq` order, sorted by (device, ts, seq) without comparing
/// device ids per comparison: a batch has few devices and many points (a comparison
/// sort spent most of its time in `memcmp` of equal ids, about half of the writer's
/// time with 10 devices). Devices are numbered once (a connection's points arrive in
/// runs, so a row is first compared with the one before it), ranked by id, and the rows
/// counted into place by rank, which keeps `seq` order within a device; a device whose
/// timestamps are not already in order is then sorted by them (stably, so `seq` still
/// breaks ties).
fn sort_rows<'a>(rows: impl Iterator<Item = Row<'a>>) -> Vec<Row<'a>> {
    let mut numbers: HashMap<&'a [u8], usize> = HashMap::new();
    let mut numbered: Vec<(usize, Row<'a>)> = Vec::with_capacity(rows.size_hint().0);
    let mut last: Option<(&'a [u8], usize)> = None;
    for row in rows {
        let n = match last {
            Some((device, n)) if device == row.device => n,
            _ => {
                let next = numbers.len();
                *numbers.entry(row.device).or_insert(next)
            }
        };
        last = Some((row.device, n));
        numbered.push((n, row));
    }
    let mut devices: Vec<(&[u8], usize)> = numbers.into_iter().collect();
    devices.sort_unstable();
    // Where each device's rows start in the output, by device number.
    let mut start = vec![0usize; devices.len()];
    let mut count = vec![0usize; devices.len()];
    for (n, _) in &numbered {
        count[*n] += 1;
    }
    let mut at = 0;
    for (_, n) in &devices {
        start[*n] = at;
        at += count[*n];
    }
    // Every slot is overwritten below; copying the rows is just a way to fill it.
    let mut out: Vec<Row<'a>> = numbered.iter().map(|&(_, row)| row).collect();
    for (n, row) in numbered {
        out[start[n]] = row;
        start[n] += 1;
    }
    for run in out.chunk_by_mut(|a, b| a.device == b.device) {
        if !run.is_sorted_by_key(|r| r.point.ts_ms) {
            run.sort_by_key(|r| r.point.ts_ms);
        }
    }
    out
}

fn device_range(device: &str) -> (Vec<u8>, Vec<u8>) {
    (key_of(device, 0, 0), key_of(device, u64::MAX, u64::MAX))
}

/// How many points `device` has: the counts of its blocks (an undecodable one is
/// logged and counted as none) and its rows in the table before blocks.
fn count_points(
    blocks: &impl ReadableTable<&'static [u8], &'static [u8]>,
    old: Option<&impl ReadableTable<&'static [u8], &'static [u8]>>,
    device: &str,
) -> Result<u64, StoreError> {
    let (lo, hi) = device_range(device);
    let mut n = 0u64;
    for row in blocks.range::<&[u8]>(lo.as_slice()..=hi.as_slice())? {
        let (k, v) = row?;
        match parse_block_key(k.value())
            .and_then(|(_, max_ts, id)| block_header(device, max_ts, id, v.value()))
        {
            Ok((count, _)) => n = n.saturating_add(count),
            Err(error) => tracing::error!(%error, "not counting corrupt telemetry block"),
        }
    }
    if let Some(old) = old {
        for row in old.range::<&[u8]>(lo.as_slice()..=hi.as_slice())? {
            row?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes every point and latest value of `device`; how many points were removed.
pub fn delete_device(db: &Database, device: &DeviceId) -> Result<u64, StoreError> {
    let dev = device.as_str();
    let txn = begin_write(db)?;
    let mut removed = 0u64;
    {
        let (lo, hi) = device_range(dev);
        let range = lo.as_slice()..=hi.as_slice();
        txn.open_table(BLOCKS)?
            .retain_in::<&[u8], _>(range.clone(), |k, v| {
                let count =
                    parse_block_key(k).and_then(|(_, max_ts, id)| block_header(dev, max_ts, id, v));
                removed = removed.saturating_add(count.map_or(0, |(n, _)| n));
                false
            })?;
        txn.open_table(POINTS)?
            .retain_in::<&[u8], _>(range, |_, _| {
                removed += 1;
                false
            })?;
        txn.open_table(LATEST)?.remove(dev)?;
    }
    crate::metrics::commit(txn)?;
    Ok(removed)
}

// ---- reads -------------------------------------------------------------------

mod block;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod query;
mod retention;
mod summary;

use block::{block_header, block_key_parts, bucket, encode_block_v2, RawRef};
pub use query::{query, Cursor, InvalidCursor};
pub use retention::{sweep, sweep_until};
pub use summary::{count, latest};
use summary::{decode_summary, encode_summary, update_summary, Summary};
#[cfg(test)]
use summary::{LatestV1, StoredSummary, SummaryV1};

#[cfg(test)]
mod block_tests;
#[cfg(test)]
mod raw_tests;
#[cfg(test)]
mod tests;
