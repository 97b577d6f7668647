//! AVL data: the records a tracker sends in codec 0x08 (Codec 8), 0x8E (Codec 8
//! Extended) and 0x10 (Codec 16), as typed values ([`AvlPacket`], [`AvlRecord`],
//! [`Gps`], [`IoElement`]).
//!
//! The three codecs carry the same record: timestamp, priority, GPS element, event IO
//! id and IO elements grouped by value width. They differ in the IO part only:
//!
//! | | event IO id | counts | IO ids | variable-length (NX) | generation type |
//! |---|---|---|---|---|---|
//! | Codec 8 | 1 byte | 1 byte | 1 byte | no | no |
//! | Codec 8 Extended | 2 bytes | 2 bytes | 2 bytes | yes (2-byte length) | no |
//! | Codec 16 | 2 bytes | 1 byte | 2 bytes | no | 1 byte after the event IO id |
//!
//! `decode` reads a packet's body (codec id to second count) once the frame layer has
//! checked its length and CRC; `encode` writes one.

pub(crate) mod decode;
pub(crate) mod encode;

/// Which AVL codec a packet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Codec 8 (`0x08`): 1-byte IO ids and counts.
    Codec8,
    /// Codec 8 Extended (`0x8E`): 2-byte IO ids and counts, variable-length elements.
    Codec8Ext,
    /// Codec 16 (`0x10`): 2-byte IO ids, 1-byte counts, a generation type per record.
    Codec16,
}

impl Codec {
    /// The codec id on the wire.
    pub const fn id(self) -> u8 {
        match self {
            Self::Codec8 => 0x08,
            Self::Codec8Ext => 0x8E,
            Self::Codec16 => 0x10,
        }
    }

    /// The codec with this id, if it is an AVL codec.
    pub const fn from_id(id: u8) -> Option<Self> {
        match id {
            0x08 => Some(Self::Codec8),
            0x8E => Some(Self::Codec8Ext),
            0x10 => Some(Self::Codec16),
            _ => None,
        }
    }

    /// Whether IO ids (and the event IO id) take two bytes.
    pub(crate) const fn wide_ids(self) -> bool {
        !matches!(self, Self::Codec8)
    }

    /// Whether element counts take two bytes.
    pub(crate) const fn wide_counts(self) -> bool {
        matches!(self, Self::Codec8Ext)
    }
}

/// One AVL data packet: the records a tracker sent together (1 to 255 of them), to be
/// acknowledged with their number once stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvlPacket {
    /// The codec it was (or is to be) written in.
    pub codec: Codec,
    /// The records, in the order sent (a tracker sends oldest first).
    pub records: Vec<AvlRecord>,
}

impl AvlPacket {
    /// The server's answer once the records are stored: [`records_ack`] of their number.
    pub fn ack(&self) -> [u8; 4] {
        records_ack(u32::try_from(self.records.len()).unwrap_or(u32::MAX))
    }
}

/// The server's answer to an AVL packet: the number of records it accepted, as a 4-byte
/// big-endian integer. A tracker re-sends a packet that is not answered with its count.
pub fn records_ack(count: u32) -> [u8; 4] {
    count.to_be_bytes()
}

/// One AVL record: a position and the IO values at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvlRecord {
    /// When the record was taken, in unix milliseconds (the tracker's clock).
    pub timestamp_ms: u64,
    /// 0 low, 1 high, 2 panic (kept as sent: other values are not refused).
    pub priority: u8,
    /// The GPS element.
    pub gps: Gps,
    /// The id of the IO element whose change made this record, 0 when none did.
    pub event_io: u16,
    /// How the record was generated (Codec 16 only; `None` for the other codecs):
    /// 0 on exit, 1 on entrance, 2 on both, 4 hysteresis, 5 on change, 6 eventual,
    /// 7 periodical.
    pub generation_type: Option<u8>,
    /// The IO elements, in wire order: 1-, 2-, 4-, 8-byte values, then variable-length.
    pub io: Vec<IoElement>,
}

/// The GPS element of a record, as sent. Without a fix, longitude, latitude and altitude
/// are the last valid fix and angle, satellites and speed are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gps {
    /// Longitude in 10^-7 degrees, negative west.
    pub longitude: i32,
    /// Latitude in 10^-7 degrees, negative south.
    pub latitude: i32,
    /// Metres above sea level.
    pub altitude: i16,
    /// Heading in degrees from north, clockwise.
    pub angle: u16,
    /// Satellites in use.
    pub satellites: u8,
    /// Speed in km/h.
    pub speed: u16,
}

impl Gps {
    /// Longitude in degrees.
    pub fn longitude_deg(&self) -> f64 {
        f64::from(self.longitude) / 1e7
    }

    /// Latitude in degrees.
    pub fn latitude_deg(&self) -> f64 {
        f64::from(self.latitude) / 1e7
    }
}

/// One IO element: an AVL id and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoElement {
    /// The AVL id (at most 255 in Codec 8).
    pub id: u16,
    /// The value, with its wire width.
    pub value: IoValue,
}

/// An IO element's value. The variant is the width it has on the wire, so a record
/// encodes back to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoValue {
    /// A 1-byte value.
    U8(u8),
    /// A 2-byte value.
    U16(u16),
    /// A 4-byte value.
    U32(u32),
    /// An 8-byte value.
    U64(u64),
    /// A variable-length (NX) value, Codec 8 Extended only.
    Bytes(Vec<u8>),
}

impl IoValue {
    /// The value as an unsigned integer, or `None` for a variable-length one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::Bytes(_) => None,
        }
    }

    /// Its group on the wire: 0 to 3 for 1-, 2-, 4- and 8-byte values, 4 for NX.
    pub(crate) fn group(&self) -> usize {
        match self {
            Self::U8(_) => 0,
            Self::U16(_) => 1,
            Self::U32(_) => 2,
            Self::U64(_) => 3,
            Self::Bytes(_) => 4,
        }
    }
}
