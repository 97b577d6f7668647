//! What the server writes to a tracker after the login, read sans-IO: record-count acks
//! and Codec 12 commands, interleaved in one byte stream.
//!
//! The two share no framing. An ack is 4 bytes, the number of records the server
//! stored, big-endian. A Codec 12 frame starts with a 4-byte preamble of zeros, then a
//! 4-byte data length, the data and a CRC. A command may arrive at any moment, also
//! while an ack is awaited, so the reader cannot know which comes next; it reads what
//! the first 4 bytes say:
//!
//! - not all zero: an ack. A tracker sends 1 to 255 records per packet, so an ack is
//!   `00 00 00 NN` with `NN` ≥ 1: its first three bytes look like a preamble, its fourth
//!   never does.
//! - all zero: a frame's preamble. The next 4 bytes are its length, and nothing is
//!   taken until the whole frame is in.
//!
//! An ack of 0 ("no records taken") would read as a preamble and swallow what follows.
//! No packet of ours has 0 records, and fleetmq withholds the ack of a packet it did not
//! store instead of answering 0 (SPEC §10), so a 0 would come only from a server that
//! breaks the protocol; the bytes after it then fail as a frame ([`WireError::Frame`]).
//! Reading item by item from the start of the stream keeps the 4-byte boundaries: there
//! is never a need to search for a preamble.

use bytes::{Buf, BytesMut};
use fleetmq_device_plugins::teltonika::{Codec12Kind, Frame, FrameDecoder, FrameError};

/// Bytes one item needs before it can be told apart: an ack, or a preamble.
const HEAD_LEN: usize = 4;

/// One thing the server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// The records of the packet in flight are stored: their number.
    Ack(u32),
    /// A Codec 12 command, as its text.
    Command(String),
}

/// Bytes that are neither an ack nor a command.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A frame that is not one, or one whose CRC or body is wrong.
    #[error("bad frame from the server: {0}")]
    Frame(#[from] FrameError),
    /// A whole frame that a server does not send a tracker (AVL data, a response).
    #[error("the server sent a {0}, not a command")]
    Unexpected(&'static str),
}

impl WireError {
    /// Whether the stream still has its boundaries, so reading may go on.
    pub fn recoverable(&self) -> bool {
        match self {
            WireError::Frame(e) => e.skip_len().is_some(),
            WireError::Unexpected(_) => true,
        }
    }
}

/// The bytes read from the server and not yet understood.
#[derive(Debug, Default)]
pub struct ServerStream {
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl ServerStream {
    /// Where a read puts its bytes (`read_buf`).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes waiting for the rest of their item.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Forgets what is buffered (after a reconnect).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// The next whole item, `Ok(None)` until its bytes are in. A recoverable error has
    /// taken the bad frame off the stream.
    pub fn next_item(&mut self) -> Result<Option<Inbound>, WireError> {
        let Some(head) = self.buf.first_chunk::<HEAD_LEN>() else {
            return Ok(None);
        };
        if *head != [0; HEAD_LEN] {
            let count = u32::from_be_bytes(*head);
            self.buf.advance(HEAD_LEN);
            return Ok(Some(Inbound::Ack(count)));
        }
        match self.decoder.decode(&self.buf) {
            Ok(None) => Ok(None),
            Ok(Some((frame, used))) => {
                self.buf.advance(used);
                match frame {
                    Frame::Codec12(msg) if msg.kind == Codec12Kind::Command => {
                        Ok(Some(Inbound::Command(msg.text_lossy().into_owned())))
                    }
                    Frame::Codec12(_) => Err(WireError::Unexpected("Codec 12 response")),
                    Frame::Avl(_) => Err(WireError::Unexpected("AVL data packet")),
                }
            }
            Err(e) => {
                if let Some(skip) = e.skip_len() {
                    self.buf.advance(skip.min(self.buf.len()));
                }
                Err(e.into())
            }
        }
    }
}
