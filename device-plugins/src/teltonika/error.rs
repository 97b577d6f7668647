//! The codec's errors, split by what a caller does about them:
//!
//! - [`FrameError`]: bytes from a tracker that cannot be read as a frame. Most leave the
//!   stream without a frame boundary to resynchronise on (close the connection); an
//!   [`Invalid`](FrameError::Invalid) frame was whole and can be skipped.
//! - [`PacketError`]: what is wrong inside a whole frame.
//! - [`EncodeError`]: a value the codec refuses to write (a command text, a packet that
//!   its codec cannot carry); nothing reached the wire.

use super::avl::Codec;

/// Why bytes from a tracker cannot be read as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// One of the first four bytes is not zero: this is no frame, and nothing says where
    /// the next one would start.
    #[error("frame byte {at} is {byte:#04x}: a frame starts with four zero bytes")]
    BadPreamble {
        /// Its position, 0 to 3.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// The data length is over the decoder's limit; the frame is not read (or skipped).
    #[error("data length {len} is over the limit of {max} bytes")]
    TooLong {
        /// The announced data length.
        len: u32,
        /// The limit.
        max: usize,
    },
    /// The data length is shorter than any frame's (codec id and two counts).
    #[error("data length {len} is shorter than any frame ({min} bytes)")]
    TooShort {
        /// The announced data length.
        len: u32,
        /// The shortest possible.
        min: usize,
    },
    /// A whole frame arrived but is not valid; the `frame_len` bytes it took can be
    /// skipped and the next frame read.
    #[error("bad frame of {frame_len} bytes: {problem}")]
    Invalid {
        /// How many bytes the frame takes, preamble to CRC.
        frame_len: usize,
        /// What is wrong with it.
        problem: PacketError,
    },
}

impl FrameError {
    /// How many bytes to skip to read on after this error, when the frame was whole;
    /// `None` when the stream cannot be resynchronised.
    pub fn skip_len(&self) -> Option<usize> {
        match self {
            Self::Invalid { frame_len, .. } => Some(*frame_len),
            _ => None,
        }
    }
}

/// What is wrong inside a whole frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// The CRC the frame carries is not the CRC-16/IBM of its data.
    #[error("CRC mismatch: the frame carries {expected:#010x}, its data gives {actual:#06x}")]
    CrcMismatch {
        /// The four CRC bytes the frame carries.
        expected: u32,
        /// The CRC of its data.
        actual: u16,
    },
    /// The codec id is none of 0x08, 0x8E, 0x10 (AVL data) or 0x0C (Codec 12).
    #[error("unknown codec id {codec:#04x}")]
    UnknownCodec {
        /// The codec id.
        codec: u8,
    },
    /// The record (or Codec 12 message) count before the data and after it differ.
    #[error("the count before the data is {first}, the one after it {second}")]
    CountMismatch {
        /// The count before the data.
        first: u8,
        /// The count after the data.
        second: u8,
    },
    /// The data ends inside a record (or inside a Codec 12 message's header).
    #[error("record {record} ends past the data")]
    Truncated {
        /// Which record (from 0).
        record: usize,
    },
    /// Bytes are left between the last record and the second count.
    #[error("{extra} bytes follow the last record")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// A Codec 12 message of another type than command (0x05) or response (0x06).
    #[error("Codec 12 message type {kind:#04x} is neither a command (0x05) nor a response (0x06)")]
    UnknownMessageType {
        /// The type byte.
        kind: u8,
    },
    /// A Codec 12 message whose quantity is not 1 (it carries one text).
    #[error("Codec 12 quantity is {quantity}, not 1")]
    BadQuantity {
        /// The quantity.
        quantity: u8,
    },
    /// A Codec 12 text length that disagrees with the data length.
    #[error("Codec 12 text length is {announced}, the frame has room for {actual}")]
    TextLength {
        /// The text length the message announces.
        announced: u32,
        /// The bytes the frame has for it.
        actual: usize,
    },
}

/// Why a value cannot be written in a Teltonika frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A packet carries at most 255 records.
    #[error("{count} records in one packet, at most 255")]
    TooManyRecords {
        /// How many were given.
        count: usize,
    },
    /// An IO id (or event IO id) wider than the codec's ids.
    #[error("IO id {id} does not fit {codec:?}'s one-byte ids")]
    IdTooLarge {
        /// The codec.
        codec: Codec,
        /// The id.
        id: u16,
    },
    /// More elements of one width (or in all) than the codec's counts can say.
    #[error("{count} IO elements, {codec:?} counts up to {max}")]
    TooManyElements {
        /// The codec.
        codec: Codec,
        /// How many there are.
        count: usize,
        /// The most its counts can say.
        max: usize,
    },
    /// A variable-length value in a codec without them (all but Codec 8 Extended).
    #[error("IO {id} has a variable-length value, which {codec:?} cannot carry")]
    NxNotSupported {
        /// The codec.
        codec: Codec,
        /// The IO id.
        id: u16,
    },
    /// A variable-length value longer than its 2-byte length can say.
    #[error("IO {id} has a {len}-byte value, at most 65535")]
    NxTooLong {
        /// The IO id.
        id: u16,
        /// Its length.
        len: usize,
    },
    /// A record with a generation type in a codec without one, or a Codec 16 record
    /// without one.
    #[error("{codec:?} records {} a generation type", if *.codec == Codec::Codec16 { "need" } else { "cannot carry" })]
    GenerationType {
        /// The codec.
        codec: Codec,
    },
    /// The frame's data would be longer than a decoder accepts by default.
    #[error("{len} bytes of data, at most {max}")]
    TooLong {
        /// The data length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A command text with a byte outside ASCII.
    #[error("command text byte {at} is {byte:#04x}, not ASCII")]
    NotAscii {
        /// Its position.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// A command text longer than [`MAX_COMMAND_LEN`](super::MAX_COMMAND_LEN).
    #[error("command text of {len} bytes, at most {max}")]
    CommandTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}
