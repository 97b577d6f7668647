//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`).
//!
//! **Not an API.** Thin wrappers that let `fuzz/` reach the crate-private codecs exactly
//! as a connection calls them: the guarded MQTT framing (`link::codec::framing`) and the
//! SPEC §4 payload envelope (`link::security::crypto`). They may change or go away with
//! any commit; nothing outside `fuzz/` may use them, which is why they exist only under
//! a feature no other crate turns on.

use bytes::BytesMut;

use crate::link::codec::framing;

pub use crate::link::security::crypto::{
    open, seal, seal_v2, CountedNonce, CryptoError, Opened, ReplayWindow, KEY_LEN,
    MIN_ENVELOPE_LEN, NONCE_LEN,
};
pub use rumqttd::protocol::Packet;

/// The MQTT protocol a connection speaks (`framing::Version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(framing::Version);

impl Version {
    /// MQTT 3.1.1.
    pub const V4: Version = Version(framing::Version::V4);
    /// MQTT 5.
    pub const V5: Version = Version(framing::Version::V5);
}

/// One complete frame at the front of a buffer (`framing::Frame`).
#[derive(Debug, Clone, Copy)]
pub struct Frame(framing::Frame);

impl Frame {
    /// The frame's first byte.
    pub fn byte1(&self) -> u8 {
        self.0.byte1
    }

    /// Length of the fixed header (first byte and remaining length).
    pub fn header_len(&self) -> usize {
        self.0.header_len
    }

    /// Length of the whole frame.
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// Whether the frame is empty (never: a frame has a fixed header).
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// The MQTT packet type (the first byte's high nibble).
    pub fn packet_type(&self) -> u8 {
        self.0.packet_type()
    }
}

/// QoS, DUP, RETAIN and packet id of a PUBLISH (`framing::PublishMeta`) as a tuple.
pub type PublishMeta = (u8, bool, bool, u16);

fn meta(m: framing::PublishMeta) -> PublishMeta {
    (m.qos, m.dup, m.retain, m.pkid)
}

/// `framing::peek`; errors as their message.
pub fn peek(buf: &[u8], max_packet: usize) -> Result<Option<Frame>, String> {
    framing::peek(buf, max_packet)
        .map(|f| f.map(Frame))
        .map_err(|e| e.to_string())
}

/// `framing::connect_version`; errors as their message.
pub fn connect_version(frame: &[u8], header_len: usize) -> Result<Version, String> {
    framing::connect_version(frame, header_len)
        .map(Version)
        .map_err(|e| e.to_string())
}

/// `framing::decode`; errors as their message.
pub fn decode(
    version: Version,
    frame: Frame,
    bytes: BytesMut,
    max_packet: usize,
) -> Result<Packet, String> {
    framing::decode(version.0, frame.0, bytes, max_packet).map_err(|e| e.to_string())
}

/// `framing::encode`.
pub fn encode(version: Version, packet: Packet, out: &mut BytesMut) -> Result<(), String> {
    framing::encode(version.0, packet, out)
}

/// `framing::publish_meta`: read from a raw PUBLISH frame.
pub fn publish_meta(frame: &[u8]) -> Option<PublishMeta> {
    framing::publish_meta(frame).map(meta)
}

/// `framing::meta_of`: read from a decoded PUBLISH.
pub fn meta_of(publish: &rumqttd::protocol::Publish) -> PublishMeta {
    meta(framing::meta_of(publish))
}
