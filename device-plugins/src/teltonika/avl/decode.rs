//! Reads an AVL packet's data (codec id to second count) into an [`AvlPacket`].
//!
//! The frame layer has checked the length and the CRC. Here: the two record counts
//! agree, every record lies within the data, and no byte is left over. The total IO
//! count a record carries is read but not enforced: it repeats the sum of the per-width
//! counts, which decide what is read, and refusing a record over it would only make the
//! tracker send the same packet again and again. (Teltonika's one 8 Extended example has
//! no NX element, so whether its total counts them is not shown either.) So a record may
//! hold more elements than its codec's total can say, up to 1020 in Codec 8 and 16;
//! such a packet decodes but does not encode.

use super::{AvlPacket, AvlRecord, Codec, Gps, IoElement, IoValue};
use crate::teltonika::error::PacketError;
use crate::teltonika::reader::Reader;

/// The shortest record: timestamp, priority, GPS element, then Codec 8's event IO id,
/// total count and four empty groups.
const MIN_RECORD_LEN: usize = 8 + 1 + 15 + 1 + 1 + 4;

/// Decodes the data of a packet in `codec` (`data[0]` is its id).
pub(crate) fn packet(codec: Codec, data: &[u8]) -> Result<AvlPacket, PacketError> {
    // The frame layer guarantees the codec id and two counts.
    let [_codec, first, ref records @ .., second] = *data else {
        return Err(PacketError::Truncated { record: 0 });
    };
    if first != second {
        return Err(PacketError::CountMismatch { first, second });
    }
    let mut r = Reader::new(records);
    let count = usize::from(first);
    let mut out = Vec::with_capacity(count.min(records.len() / MIN_RECORD_LEN));
    for index in 0..count {
        let rec = record(codec, &mut r).ok_or(PacketError::Truncated { record: index })?;
        out.push(rec);
    }
    if r.remaining() > 0 {
        return Err(PacketError::TrailingBytes {
            extra: r.remaining(),
        });
    }
    Ok(AvlPacket {
        codec,
        records: out,
    })
}

/// One record; `None` if the data ends inside it.
fn record(codec: Codec, r: &mut Reader<'_>) -> Option<AvlRecord> {
    let timestamp_ms = r.u64()?;
    let priority = r.u8()?;
    let gps = Gps {
        longitude: r.i32()?,
        latitude: r.i32()?,
        altitude: r.i16()?,
        angle: r.u16()?,
        satellites: r.u8()?,
        speed: r.u16()?,
    };
    let event_io = id(codec, r)?;
    let generation_type = match codec {
        Codec::Codec16 => Some(r.u8()?),
        Codec::Codec8 | Codec::Codec8Ext => None,
    };
    let _total = count(codec, r)?;
    let io = io_elements(codec, r)?;
    Some(AvlRecord {
        timestamp_ms,
        priority,
        gps,
        event_io,
        generation_type,
        io,
    })
}

/// The 1-, 2-, 4- and 8-byte groups, and Codec 8 Extended's variable-length one.
fn io_elements(codec: Codec, r: &mut Reader<'_>) -> Option<Vec<IoElement>> {
    let mut io = Vec::new();
    for width in [1, 2, 4, 8] {
        for _ in 0..count(codec, r)? {
            let id = id(codec, r)?;
            let value = match width {
                1 => IoValue::U8(r.u8()?),
                2 => IoValue::U16(r.u16()?),
                4 => IoValue::U32(r.u32()?),
                _ => IoValue::U64(r.u64()?),
            };
            io.push(IoElement { id, value });
        }
    }
    if codec == Codec::Codec8Ext {
        for _ in 0..r.u16()? {
            let id = r.u16()?;
            let len = r.u16()?;
            let value = IoValue::Bytes(r.bytes(usize::from(len))?.to_vec());
            io.push(IoElement { id, value });
        }
    }
    Some(io)
}

/// An IO id (or the event IO id) in the codec's width.
fn id(codec: Codec, r: &mut Reader<'_>) -> Option<u16> {
    if codec.wide_ids() {
        r.u16()
    } else {
        r.u8().map(u16::from)
    }
}

/// An element count in the codec's width.
fn count(codec: Codec, r: &mut Reader<'_>) -> Option<u16> {
    if codec.wide_counts() {
        r.u16()
    } else {
        r.u8().map(u16::from)
    }
}
