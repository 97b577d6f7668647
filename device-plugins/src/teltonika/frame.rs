//! The frame every Teltonika TCP message after the login shares, AVL data and Codec 12
//! alike: four zero bytes, a 4-byte big-endian data length, the data (codec id to second
//! count), and four bytes whose last two are the data's CRC-16/IBM.
//!
//! [`FrameDecoder::decode`] is incremental and checks in order: the preamble and the
//! length as soon as they arrive (a bad one leaves the stream with no boundary to find
//! the next frame by), then, once the frame is whole, the CRC, the codec id and the
//! body. [`FrameWriter`] builds a frame the same way round.

use super::avl::{self, AvlPacket, Codec};
use super::codec12::{self, Codec12Message};
use super::crc::crc16;
use super::error::{EncodeError, FrameError, PacketError};

/// The most data (codec id to second count) a frame may announce by default: 1 MiB.
///
/// Teltonika documents 1280 bytes as the largest AVL packet its FMB/FMC trackers send
/// over TCP (512 for FMB630/FMB640), but the format allows far more: one Codec 8
/// Extended variable-length element alone may be 64 KiB, and a Codec 12 response is as
/// long as the tracker's answer. The limit is what a connection may have to buffer
/// before the frame's CRC can be checked, so it is generous enough that no real tracker
/// meets it and small enough that a peer announcing 4 GiB is refused at once.
/// [`FrameDecoder::with_max_data_len`] lowers (or raises) it.
pub const MAX_DATA_LEN: usize = 1 << 20;

/// The shortest data of any frame: a codec id and two counts (an AVL packet without
/// records).
pub const MIN_DATA_LEN: usize = 3;

/// Preamble and data length.
const HEADER_LEN: usize = 8;
/// The CRC field.
const CRC_LEN: usize = 4;

/// One frame from a tracker (or, for simulators, from the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// AVL data (Codec 8, 8 Extended or 16), to be acknowledged with its record count.
    Avl(AvlPacket),
    /// A Codec 12 command or response.
    Codec12(Codec12Message),
}

/// Reads frames from the front of a buffer; see [`decode`](Self::decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDecoder {
    max_data_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder that accepts up to [`MAX_DATA_LEN`] bytes of data per frame.
    pub const fn new() -> Self {
        Self {
            max_data_len: MAX_DATA_LEN,
        }
    }

    /// A decoder that accepts up to `max` bytes of data per frame.
    pub const fn with_max_data_len(max: usize) -> Self {
        Self { max_data_len: max }
    }

    /// The most data a frame may announce.
    pub const fn max_data_len(&self) -> usize {
        self.max_data_len
    }

    /// Reads the frame at the front of `buf`.
    ///
    /// - `Ok(None)`: the bytes so far may still become a frame; read more.
    /// - `Ok(Some((frame, len)))`: a frame took the first `len` bytes.
    /// - `Err(e)`: the bytes can never be a valid frame. With
    ///   [`FrameError::Invalid`] the frame was whole and [`FrameError::skip_len`] says
    ///   how many bytes it took; otherwise the stream has no frame boundary left.
    pub fn decode(&self, buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(data_len) = self.header(buf)? else {
            return Ok(None);
        };
        // `header` bounded `data_len` by `max_data_len`, a `usize`.
        let Some(frame_len) = data_len
            .checked_add(HEADER_LEN + CRC_LEN)
            .filter(|&n| n <= buf.len())
        else {
            return Ok(None);
        };
        let data = &buf[HEADER_LEN..HEADER_LEN + data_len];
        let crc = &buf[HEADER_LEN + data_len..frame_len];
        body(data, crc)
            .map(|frame| Some((frame, frame_len)))
            .map_err(|problem| FrameError::Invalid { frame_len, problem })
    }

    /// The length of the frame at the front of `buf`, preamble to CRC, once its header
    /// is in: `Ok(None)` before that, the header's refusal (as [`decode`](Self::decode)
    /// gives it) if it has one. For a connection that sizes its read buffer to the frame.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        Ok(self
            .header(buf)?
            .and_then(|data_len| data_len.checked_add(HEADER_LEN + CRC_LEN)))
    }

    /// Checks the preamble and the length present in `buf`; the data length once both
    /// are in.
    fn header(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if let Some(at) = buf.iter().take(4).position(|&b| b != 0) {
            return Err(FrameError::BadPreamble { at, byte: buf[at] });
        }
        let Some(len) = buf.get(4..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let data_len = usize::try_from(len).unwrap_or(usize::MAX);
        if data_len > self.max_data_len {
            return Err(FrameError::TooLong {
                len,
                max: self.max_data_len,
            });
        }
        if data_len < MIN_DATA_LEN {
            return Err(FrameError::TooShort {
                len,
                min: MIN_DATA_LEN,
            });
        }
        Ok(Some(data_len))
    }
}

/// A whole frame's data and CRC field, checked and decoded.
fn body(data: &[u8], crc: &[u8]) -> Result<Frame, PacketError> {
    let expected = crc
        .first_chunk::<4>()
        .map_or(u32::MAX, |c| u32::from_be_bytes(*c));
    let actual = crc16(data);
    if expected != u32::from(actual) {
        return Err(PacketError::CrcMismatch { expected, actual });
    }
    let codec = data.first().copied().unwrap_or_default();
    match Codec::from_id(codec) {
        Some(codec) => avl::decode::packet(codec, data).map(Frame::Avl),
        None if codec == codec12::CODEC_ID => codec12::decode(data).map(Frame::Codec12),
        None => Err(PacketError::UnknownCodec { codec }),
    }
}

/// Builds one frame: the caller writes the data, [`finish`](Self::finish) adds the
/// length and the CRC.
#[derive(Debug)]
pub(crate) struct FrameWriter {
    out: Vec<u8>,
}

impl FrameWriter {
    /// A frame with room for the header, data to follow.
    pub(crate) fn new() -> Self {
        Self {
            out: vec![0; HEADER_LEN],
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.out.extend_from_slice(v);
    }

    /// The whole frame; refused if its data is longer than [`MAX_DATA_LEN`], so what is
    /// written a default decoder reads.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, EncodeError> {
        let data_len = self.out.len().saturating_sub(HEADER_LEN);
        let len = u32::try_from(data_len)
            .ok()
            .filter(|_| data_len <= MAX_DATA_LEN)
            .ok_or(EncodeError::TooLong {
                len: data_len,
                max: MAX_DATA_LEN,
            })?;
        self.out[4..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        let crc = crc16(&self.out[HEADER_LEN..]);
        self.out.extend_from_slice(&u32::from(crc).to_be_bytes());
        Ok(self.out)
    }
}
