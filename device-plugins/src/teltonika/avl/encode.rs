//! Writes an [`AvlPacket`] as a whole frame, as a tracker would send it.
//!
//! Each record's IO elements go out grouped by width (1, 2, 4, 8 bytes, then
//! variable-length), keeping their order within a group; a record whose elements are
//! already grouped, as every decoded one is, encodes to the bytes it came from. What
//! the packet's codec cannot carry is refused with an [`EncodeError`].

use super::{AvlPacket, AvlRecord, Codec, IoElement, IoValue};
use crate::teltonika::error::EncodeError;
use crate::teltonika::frame::FrameWriter;

/// The frame for `packet`: preamble, length, codec id, count, records, count, CRC.
pub fn encode_avl(packet: &AvlPacket) -> Result<Vec<u8>, EncodeError> {
    let count = u8::try_from(packet.records.len()).map_err(|_| EncodeError::TooManyRecords {
        count: packet.records.len(),
    })?;
    let mut w = FrameWriter::new();
    w.u8(packet.codec.id());
    w.u8(count);
    for record in &packet.records {
        write_record(packet.codec, record, &mut w)?;
    }
    w.u8(count);
    w.finish()
}

fn write_record(codec: Codec, rec: &AvlRecord, w: &mut FrameWriter) -> Result<(), EncodeError> {
    w.u64(rec.timestamp_ms);
    w.u8(rec.priority);
    let gps = &rec.gps;
    w.bytes(&gps.longitude.to_be_bytes());
    w.bytes(&gps.latitude.to_be_bytes());
    w.bytes(&gps.altitude.to_be_bytes());
    w.u16(gps.angle);
    w.u8(gps.satellites);
    w.u16(gps.speed);
    write_id(codec, rec.event_io, w)?;
    match (codec, rec.generation_type) {
        (Codec::Codec16, Some(generation)) => w.u8(generation),
        (Codec::Codec8 | Codec::Codec8Ext, None) => {}
        _ => return Err(EncodeError::GenerationType { codec }),
    }
    let mut groups: [Vec<&IoElement>; 5] = Default::default();
    for element in &rec.io {
        groups[element.value.group()].push(element);
    }
    if codec != Codec::Codec8Ext {
        if let Some(nx) = groups[4].first() {
            return Err(EncodeError::NxNotSupported { codec, id: nx.id });
        }
    }
    write_count(codec, rec.io.len(), w)?;
    for group in &groups[..4] {
        write_count(codec, group.len(), w)?;
        for element in group {
            write_id(codec, element.id, w)?;
            write_value(element.id, &element.value, w)?;
        }
    }
    if codec == Codec::Codec8Ext {
        write_nx(&groups[4], w)?;
    }
    Ok(())
}

/// Codec 8 Extended's variable-length group: count, then id, length, bytes each.
fn write_nx(group: &[&IoElement], w: &mut FrameWriter) -> Result<(), EncodeError> {
    write_count(Codec::Codec8Ext, group.len(), w)?;
    for element in group {
        w.u16(element.id);
        write_value(element.id, &element.value, w)?;
    }
    Ok(())
}

fn write_value(id: u16, value: &IoValue, w: &mut FrameWriter) -> Result<(), EncodeError> {
    match value {
        IoValue::U8(v) => w.u8(*v),
        IoValue::U16(v) => w.u16(*v),
        IoValue::U32(v) => w.u32(*v),
        IoValue::U64(v) => w.u64(*v),
        IoValue::Bytes(v) => {
            let len =
                u16::try_from(v.len()).map_err(|_| EncodeError::NxTooLong { id, len: v.len() })?;
            w.u16(len);
            w.bytes(v);
        }
    }
    Ok(())
}

fn write_id(codec: Codec, id: u16, w: &mut FrameWriter) -> Result<(), EncodeError> {
    if codec.wide_ids() {
        w.u16(id);
    } else {
        w.u8(u8::try_from(id).map_err(|_| EncodeError::IdTooLarge { codec, id })?);
    }
    Ok(())
}

fn write_count(codec: Codec, count: usize, w: &mut FrameWriter) -> Result<(), EncodeError> {
    let too_many = |max: usize| EncodeError::TooManyElements { codec, count, max };
    if codec.wide_counts() {
        w.u16(u16::try_from(count).map_err(|_| too_many(u16::MAX.into()))?);
    } else {
        w.u8(u8::try_from(count).map_err(|_| too_many(u8::MAX.into()))?);
    }
    Ok(())
}
