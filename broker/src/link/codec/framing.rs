//! Framing and decoding of client packets with rumqttd's codecs, guarded: packet types a
//! server must never receive are refused before the codec sees them (rumqttd's codecs hit
//! `unreachable!()` on some of them), and every codec call runs under `catch_unwind`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttd::protocol::{v4::V4, v5::V5, Packet, Protocol, Publish};

/// The protocol a client chose in its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V4,
    V5,
}

impl Version {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Version::V4 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// Why the bytes a client sent cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("packet of {0} bytes exceeds the maximum packet size")]
    TooLarge(usize),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("packet type {0} may not be sent by a client")]
    Forbidden(u8),
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
}

/// The fixed header of one complete frame at the front of a buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    pub(crate) byte1: u8,
    pub(crate) header_len: usize,
    pub(crate) len: usize,
}

impl Frame {
    pub(crate) fn packet_type(&self) -> u8 {
        self.byte1 >> 4
    }
}

/// Finds the first complete frame in `buf`; `Ok(None)` when more bytes are needed.
pub(crate) fn peek(buf: &[u8], max_packet: usize) -> Result<Option<Frame>, FrameError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut remaining: usize = 0;
    let mut shift = 0;
    let mut pos = 1;
    loop {
        let Some(&b) = buf.get(pos) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << shift;
        pos += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if pos > 4 {
            return Err(FrameError::Malformed(
                "remaining length over 4 bytes".into(),
            ));
        }
    }
    if remaining > max_packet {
        return Err(FrameError::TooLarge(remaining));
    }
    let len = pos + remaining;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame {
        byte1,
        header_len: pos,
        len,
    }))
}

/// Reads the protocol level out of a CONNECT frame (3 = MQTT 3.1, 4 = 3.1.1, 5 = 5.0).
pub(crate) fn connect_version(frame: &[u8], header_len: usize) -> Result<Version, FrameError> {
    let mut body = frame.get(header_len..).unwrap_or_default();
    if body.len() < 2 {
        return Err(FrameError::Malformed("CONNECT too short".into()));
    }
    let name_len = usize::from(body.get_u16());
    if body.len() < name_len + 1 {
        return Err(FrameError::Malformed(
            "CONNECT protocol name truncated".into(),
        ));
    }
    let name = &body[..name_len];
    let level = body[name_len];
    match (name, level) {
        (b"MQTT", 4) => Ok(Version::V4),
        (b"MQTT", 5) => Ok(Version::V5),
        (b"MQTT" | b"MQIsdp", level) => Err(FrameError::UnsupportedProtocol(level)),
        _ => Err(FrameError::Malformed("protocol name is not MQTT".into())),
    }
}

/// Packet types a client may send after CONNECT.
fn client_may_send(packet_type: u8) -> bool {
    matches!(packet_type, 1 | 3..=8 | 10 | 12 | 14)
}

/// Decodes one complete frame split off the read buffer.
pub(crate) fn decode(
    version: Version,
    frame: Frame,
    bytes: BytesMut,
    max_packet: usize,
) -> Result<Packet, FrameError> {
    let packet_type = frame.packet_type();
    if !client_may_send(packet_type) {
        return Err(FrameError::Forbidden(packet_type));
    }
    let mut bytes = bytes;
    if version == Version::V5 && packet_type == 14 && bytes.len() == 3 {
        // A v5 DISCONNECT may stop after its reason code (§3.14.2.2); rumqttd's reader
        // then demands a property length. Give it an empty one.
        bytes = BytesMut::from(&[bytes[0], 2, bytes[2], 0][..]);
    }
    let result = catch_unwind(AssertUnwindSafe(|| match version {
        Version::V4 => V4.read_mut(&mut bytes, max_packet),
        Version::V5 => V5.read_mut(&mut bytes, max_packet),
    }));
    match result {
        Ok(Ok(packet)) => Ok(packet),
        Ok(Err(e)) => Err(FrameError::Malformed(e.to_string())),
        Err(_) => Err(FrameError::Malformed("codec panicked".into())),
    }
}

/// Encodes `packet`; a codec error or panic becomes `Err` and nothing is written.
pub(crate) fn encode(version: Version, packet: Packet, out: &mut BytesMut) -> Result<(), String> {
    let start = out.len();
    let result = catch_unwind(AssertUnwindSafe(|| match version {
        Version::V4 => V4.write(packet, out),
        Version::V5 => V5.write(packet, out),
    }));
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            out.truncate(start);
            Err(e.to_string())
        }
        Err(_) => {
            out.truncate(start);
            Err("codec panicked".into())
        }
    }
}

/// QoS, DUP, RETAIN and packet id of a PUBLISH, read from its raw frame (rumqttd keeps
/// these fields crate-private).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PublishMeta {
    pub(crate) qos: u8,
    pub(crate) dup: bool,
    pub(crate) retain: bool,
    pub(crate) pkid: u16,
}

/// Reads [`PublishMeta`] from an encoded PUBLISH at the start of `frame`.
pub(crate) fn publish_meta(frame: &[u8]) -> Option<PublishMeta> {
    let byte1 = *frame.first()?;
    let qos = (byte1 >> 1) & 0b11;
    let mut pos = 1;
    while *frame.get(pos)? & 0x80 != 0 {
        pos += 1;
    }
    pos += 1;
    let topic_len = usize::from(u16::from_be_bytes([*frame.get(pos)?, *frame.get(pos + 1)?]));
    let pkid_at = pos + 2 + topic_len;
    let pkid = if qos > 0 {
        u16::from_be_bytes([*frame.get(pkid_at)?, *frame.get(pkid_at + 1)?])
    } else {
        0
    };
    Some(PublishMeta {
        qos,
        dup: byte1 & 0b1000 != 0,
        retain: byte1 & 1 != 0,
        pkid,
    })
}

/// Builds a PUBLISH with the given QoS and packet id in one fresh allocation (so it
/// never pins a connection's read buffer).
pub(crate) fn build_publish(meta: PublishMeta, topic: &[u8], payload: &[u8]) -> Publish {
    build_prefixed(meta, topic, &[], payload)
}

/// [`build_publish`] with `prefix` in front of the payload, in the same one copy.
pub(crate) fn build_prefixed(
    meta: PublishMeta,
    topic: &[u8],
    prefix: &[u8],
    payload: &[u8],
) -> Publish {
    Publish::deserialize(encode_prefixed(meta, topic, prefix, payload).freeze())
}

/// The encoding [`build_prefixed`] parses, still mutable: `prefix` starts at
/// `5 + topic.len()`.
pub(crate) fn encode_prefixed(
    meta: PublishMeta,
    topic: &[u8],
    prefix: &[u8],
    payload: &[u8],
) -> BytesMut {
    let mut b = BytesMut::with_capacity(5 + topic.len() + prefix.len() + payload.len());
    b.put_u8(0x30 | u8::from(meta.retain) | (meta.qos << 1) | (u8::from(meta.dup) << 3));
    b.put_u16(meta.pkid);
    // Topic names are at most 65535 bytes: the codec refused anything longer.
    b.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    b.put_slice(topic);
    b.put_slice(prefix);
    b.put_slice(payload);
    b
}

/// The QoS and packet id of a PUBLISH held by value (via its MQTT-independent encoding).
pub(crate) fn meta_of(publish: &Publish) -> PublishMeta {
    // Without topic and payload (reference counts, not copies) the encoding is 5 bytes.
    let mut head = publish.clone();
    head.topic = Bytes::new();
    head.payload = Bytes::new();
    let raw: Bytes = head.serialize();
    let byte1 = raw.first().copied().unwrap_or(0);
    let pkid = raw
        .get(1..3)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    PublishMeta {
        qos: (byte1 >> 1) & 0b11,
        dup: byte1 & 0b1000 != 0,
        retain: byte1 & 1 != 0,
        pkid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_read_back_meta() {
        let meta = PublishMeta {
            qos: 2,
            dup: true,
            retain: true,
            pkid: 513,
        };
        let p = build_publish(meta, b"a/b", b"xyz");
        assert_eq!(meta_of(&p), meta);
        assert_eq!(&p.topic[..], b"a/b");
        assert_eq!(&p.payload[..], b"xyz");
        let mut out = BytesMut::new();
        encode(Version::V4, Packet::Publish(p, None), &mut out).unwrap();
        assert_eq!(publish_meta(&out), Some(meta));
    }

    #[test]
    fn peek_needs_whole_frame() {
        assert!(peek(&[0x30], 100).unwrap().is_none());
        assert!(peek(&[0x30, 0x05, 0, 1], 100).unwrap().is_none());
        let f = peek(&[0xc0, 0x00], 100).unwrap().unwrap();
        assert_eq!((f.packet_type(), f.len), (12, 2));
        assert!(matches!(
            peek(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 100),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            peek(&[0x30, 0x7f], 10),
            Err(FrameError::TooLarge(127))
        ));
    }

    #[test]
    fn v5_disconnect_with_only_a_reason_code_decodes() {
        let bytes = [0xe0u8, 0x01, 0x04];
        let frame = peek(&bytes, 100).unwrap().unwrap();
        let p = decode(Version::V5, frame, BytesMut::from(&bytes[..]), 100).unwrap();
        assert!(matches!(
            p,
            Packet::Disconnect(d, None)
                if d.reason_code == rumqttd::protocol::DisconnectReasonCode::DisconnectWithWillMessage
        ));
    }

    #[test]
    fn server_only_packets_are_refused_before_the_codec() {
        // A CONNACK and an UNSUBACK from a client panic rumqttd's v5 codec.
        for bytes in [&[0x20u8, 0x03, 0, 0, 0][..], &[0xb0, 0x03, 0, 1, 0]] {
            let frame = peek(bytes, 100).unwrap().unwrap();
            let r = decode(Version::V5, frame, BytesMut::from(bytes), 100);
            assert!(matches!(r, Err(FrameError::Forbidden(_))));
        }
    }

    proptest::proptest! {
        /// A PUBLISH the broker builds and encodes is one frame that `peek` finds whole,
        /// whose header `publish_meta` reads back, and that decodes to the same packet.
        #[test]
        fn publish_round_trips(
            qos in 0u8..=2,
            dup: bool,
            retain: bool,
            pkid in 1u16..,
            topic in "[a-z0-9/-]{1,40}",
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            v5: bool,
        ) {
            let meta = PublishMeta {
                qos,
                dup: dup && qos > 0,
                retain,
                pkid: if qos > 0 { pkid } else { 0 },
            };
            let version = if v5 { Version::V5 } else { Version::V4 };
            let publish = build_publish(meta, topic.as_bytes(), &payload);
            let mut out = BytesMut::new();
            encode(version, Packet::Publish(publish.clone(), None), &mut out).unwrap();
            proptest::prop_assert_eq!(publish_meta(&out), Some(meta));
            let frame = peek(&out, out.len()).unwrap().unwrap();
            proptest::prop_assert_eq!(frame.len, out.len());
            let decoded = decode(version, frame, out, frame.len).unwrap();
            proptest::prop_assert_eq!(decoded, Packet::Publish(publish, None));
        }
    }
}
