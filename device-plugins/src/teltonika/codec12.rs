//! Codec 12: text commands from the server and the tracker's text responses, in the
//! same frame as AVL data.
//!
//! Data: codec id `0x0C`, quantity 1, type (`0x05` command, `0x06` response), a 4-byte
//! big-endian text length, the text, quantity 1 again. Codec 12 has no transport
//! acknowledgement: a command is answered by a response or not at all, and nothing in
//! the response names the command it answers.

use std::borrow::Cow;

use super::error::{EncodeError, PacketError};
use super::frame::FrameWriter;
use super::reader::Reader;

/// The codec id of Codec 12.
pub const CODEC_ID: u8 = 0x0C;

/// The longest command text [`encode_command`] writes, in bytes.
///
/// Teltonika's commands are short text lines (`getinfo`, `getver`, `setdigout 1`, a
/// `setparam` list); the bound is ours, so a mistaken API request does not become a
/// frame of megabytes on a tracker's mobile link.
pub const MAX_COMMAND_LEN: usize = 4096;

/// Which way a Codec 12 message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec12Kind {
    /// Server to tracker (type `0x05`).
    Command,
    /// Tracker to server (type `0x06`).
    Response,
}

impl Codec12Kind {
    /// The type byte on the wire.
    pub const fn type_byte(self) -> u8 {
        match self {
            Self::Command => 0x05,
            Self::Response => 0x06,
        }
    }

    const fn from_type_byte(b: u8) -> Option<Self> {
        match b {
            0x05 => Some(Self::Command),
            0x06 => Some(Self::Response),
            _ => None,
        }
    }
}

/// One Codec 12 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec12Message {
    /// Command or response.
    pub kind: Codec12Kind,
    /// The text as sent (commands are ASCII; a response is taken as the tracker wrote it).
    pub text: Vec<u8>,
}

impl Codec12Message {
    /// The text as a string; bytes that are not UTF-8 become U+FFFD.
    pub fn text_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.text)
    }
}

/// The frame of a command (type `0x05`) carrying `text`, which must be ASCII and at
/// most [`MAX_COMMAND_LEN`] bytes.
pub fn encode_command(text: &str) -> Result<Vec<u8>, EncodeError> {
    let bytes = text.as_bytes();
    if let Some(at) = bytes.iter().position(|b| !b.is_ascii()) {
        return Err(EncodeError::NotAscii {
            at,
            byte: bytes[at],
        });
    }
    if bytes.len() > MAX_COMMAND_LEN {
        return Err(EncodeError::CommandTooLong {
            len: bytes.len(),
            max: MAX_COMMAND_LEN,
        });
    }
    encode(Codec12Kind::Command, bytes)
}

/// The frame of a response (type `0x06`) carrying `text` as is, as a tracker answers
/// (for simulators and tests).
pub fn encode_response(text: &[u8]) -> Result<Vec<u8>, EncodeError> {
    encode(Codec12Kind::Response, text)
}

fn encode(kind: Codec12Kind, text: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let too_long = EncodeError::TooLong {
        len: text.len(),
        max: super::MAX_DATA_LEN,
    };
    let len = u32::try_from(text.len()).map_err(|_| too_long)?;
    let mut w = FrameWriter::new();
    w.u8(CODEC_ID);
    w.u8(1);
    w.u8(kind.type_byte());
    w.u32(len);
    w.bytes(text);
    w.u8(1);
    w.finish()
}

/// Decodes the data of a Codec 12 frame (`data[0]` is its id).
pub(crate) fn decode(data: &[u8]) -> Result<Codec12Message, PacketError> {
    // The frame layer guarantees the codec id and the two quantities.
    let [_codec, first, ref rest @ .., second] = *data else {
        return Err(PacketError::Truncated { record: 0 });
    };
    if first != second {
        return Err(PacketError::CountMismatch { first, second });
    }
    if first != 1 {
        return Err(PacketError::BadQuantity { quantity: first });
    }
    let mut r = Reader::new(rest);
    let (Some(kind), Some(announced)) = (r.u8(), r.u32()) else {
        return Err(PacketError::Truncated { record: 0 });
    };
    let kind = Codec12Kind::from_type_byte(kind).ok_or(PacketError::UnknownMessageType { kind })?;
    if usize::try_from(announced).ok() != Some(r.remaining()) {
        return Err(PacketError::TextLength {
            announced,
            actual: r.remaining(),
        });
    }
    let text = r.bytes(r.remaining()).unwrap_or_default().to_vec();
    Ok(Codec12Message { kind, text })
}
