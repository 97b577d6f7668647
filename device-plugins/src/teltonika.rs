//! Teltonika trackers' binary TCP protocol (SPEC §10), sans-IO: the IMEI login, AVL data
//! in Codec 8, 8 Extended and 16, Codec 12 commands and responses, and the server's
//! answers; every decoder is incremental, checks each length before it reads, and
//! returns a typed error instead of panicking.
//!
//! A connection, as the server sees it:
//!
//! 1. [`decode_login`] until it gives the tracker's [`Imei`]; answer [`login_answer`].
//! 2. [`FrameDecoder::decode`] in a loop over the bytes read: a [`Frame::Avl`] packet is
//!    answered with [`AvlPacket::ack`] once its records are stored, a [`Frame::Codec12`]
//!    response answers the oldest matching command; [`encode_command`] writes commands.
//!    A [`FrameError`] with a [`skip_len`](FrameError::skip_len) was one bad frame;
//!    without one, the stream has lost its framing.
//! 3. [`record_telemetry`] / [`telemetry_json`] turn each record into SPEC §10's point.
//!
//! Modules, one concern each:
//! - `login`: the IMEI login and its one-byte answer.
//! - `frame`: preamble, length, CRC; [`FrameDecoder`] and the writer the encoders share.
//! - `avl` (types), `avl/decode`, `avl/encode`: AVL data packets and the record-count ack.
//! - `codec12`: Codec 12 commands and responses.
//! - `telemetry`: a record as SPEC §10's telemetry keys.
//! - `plugin`: [`TeltonikaPlugin`], trackers as devices: Codec 12 commands, answers
//!   matched by response pattern, telemetry as the JSON points built from records.
//! - `crc`: CRC-16/IBM. `reader`: the bounds-checked cursor every decoder reads with.
//! - `error`: [`FrameError`], [`PacketError`], [`EncodeError`]; the login's own
//!   [`LoginError`] lives with it.

mod avl;
mod codec12;
mod crc;
mod error;
mod frame;
mod login;
mod plugin;
mod reader;
mod telemetry;

pub use avl::encode::encode_avl;
pub use avl::{records_ack, AvlPacket, AvlRecord, Codec, Gps, IoElement, IoValue};
pub use codec12::{
    encode_command, encode_response, Codec12Kind, Codec12Message, CODEC_ID as CODEC12_ID,
    MAX_COMMAND_LEN,
};
pub use crc::crc16;
pub use error::{EncodeError, FrameError, PacketError};
pub use frame::{Frame, FrameDecoder, MAX_DATA_LEN, MIN_DATA_LEN};
pub use login::{decode_login, encode_login, login_answer, Imei, LoginError, IMEI_LEN, LOGIN_LEN};
pub use plugin::TeltonikaPlugin;
pub use telemetry::{record_telemetry, telemetry_json, telemetry_values};

#[cfg(test)]
mod tests;
