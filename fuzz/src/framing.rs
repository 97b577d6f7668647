//! The guarded MQTT framing, driven as a connection drives it: find a frame with
//! `peek`, read the CONNECT's protocol level with `connect_version`, split the frame
//! off the read buffer, read a PUBLISH's header with `publish_meta`, decode the frame
//! with rumqttd's codec through `decode`.
//!
//! Input: one selector byte, then the bytes a client sent. The selector's low two bits
//! pick where the connection stands (0 and 3: before CONNECT, so the first frame must be
//! a CONNECT and picks the version; 1: after a 3.1.1 CONNECT; 2: after a v5 one), the
//! next two the maximum packet size.
//!
//! Invariants: a frame lies within the buffer and within the size limit, and `peek`
//! finds it again in exactly its own bytes; a decoded packet is of the frame's packet
//! type and one a client may send; a PUBLISH's raw header agrees with rumqttd's
//! reading; a packet that encodes decodes back to itself; a failed encode writes
//! nothing.

use bytes::BytesMut;
use fleetmq_broker::fuzz::{
    connect_version, decode, encode, meta_of, peek, publish_meta, Frame, Packet, Version,
};

/// Maximum packet sizes the selector picks from: the broker's default (1 MiB) and small
/// limits that frames hit often.
const MAX_PACKETS: [usize; 4] = [1 << 20, 1 << 10, 64, 5];

/// Runs one input; panics when an invariant fails.
pub fn check(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let max = MAX_PACKETS[usize::from(selector >> 2) & 3];
    let mut buf = BytesMut::from(stream);
    let version = match selector & 3 {
        1 => Version::V4,
        2 => Version::V5,
        _ => match connect(&mut buf, max) {
            Some(version) => version,
            None => return,
        },
    };
    ingress(version, &mut buf, max);
}

/// `read_connect`: the first frame, which must be a CONNECT; `None` when the
/// connection would close.
fn connect(buf: &mut BytesMut, max: usize) -> Option<Version> {
    let frame = next_frame(buf, max)?;
    if frame.packet_type() != 1 {
        return None;
    }
    let version = connect_version(buf, frame.header_len()).ok()?;
    // Only "MQTT" with level 4 or 5 gets here.
    let body = &buf[frame.header_len()..];
    let level = if version == Version::V5 { 5 } else { 4 };
    assert!(
        body.starts_with(&[0, 4, b'M', b'Q', b'T', b'T', level]),
        "connect_version chose {version:?} for {body:?}"
    );
    let raw = buf.split_to(frame.len());
    match decode(version, frame, raw.clone(), max) {
        Ok(packet) => {
            assert!(
                matches!(packet, Packet::Connect(..)),
                "a CONNECT frame decoded as {packet:?}"
            );
            round_trip(version, &packet, &raw);
            Some(version)
        }
        Err(_) => None,
    }
}

/// `Connection::ingress`: every complete frame in the buffer, up to the first bad one.
fn ingress(version: Version, buf: &mut BytesMut, max: usize) {
    while let Some(frame) = next_frame(buf, max) {
        let packet_type = frame.packet_type();
        let raw = buf.split_to(frame.len());
        let meta = (packet_type == 3).then(|| publish_meta(&raw)).flatten();
        let Ok(packet) = decode(version, frame, raw.clone(), max) else {
            return;
        };
        assert_eq!(
            type_of(&packet),
            Some(packet_type),
            "a frame of type {packet_type} decoded as {packet:?}"
        );
        if let Packet::Publish(publish, props) = &packet {
            assert_eq!(
                meta,
                Some(meta_of(publish)),
                "publish_meta disagrees with rumqttd on {raw:?}"
            );
            if props
                .as_ref()
                .is_some_and(|p| !p.subscription_identifiers.is_empty())
            {
                // The connection ends here: a client never sends a Subscription
                // Identifier [MQTT-3.3.4-6] (`ingress.rs`). rumqttd's v5 reader also
                // counts each one's property byte twice, so the packet it read is not
                // the one that was sent and must not be expected to round-trip.
                return;
            }
        }
        round_trip(version, &packet, &raw);
    }
}

/// `peek` at the front of `buf`, checking what it found.
fn next_frame(buf: &[u8], max: usize) -> Option<Frame> {
    let frame = peek(buf, max).ok()??;
    let body = frame.len() - frame.header_len();
    assert!(
        (2..=5).contains(&frame.header_len())
            && frame.len() <= buf.len()
            && body <= max
            && frame.byte1() == buf[0],
        "peek found {frame:?} in {} bytes (max {max})",
        buf.len()
    );
    let again = peek(&buf[..frame.len()], max)
        .ok()
        .flatten()
        .map(|f| (f.len(), f.header_len()));
    assert_eq!(
        again,
        Some((frame.len(), frame.header_len())),
        "peek does not find {frame:?} in its own bytes"
    );
    Some(frame)
}

/// The packet type a client's packet has on the wire; `None` for packets a client
/// may not send (the guard must have refused them).
fn type_of(packet: &Packet) -> Option<u8> {
    Some(match packet {
        Packet::Connect(..) => 1,
        Packet::Publish(..) => 3,
        Packet::PubAck(..) => 4,
        Packet::PubRec(..) => 5,
        Packet::PubRel(..) => 6,
        Packet::PubComp(..) => 7,
        Packet::Subscribe(..) => 8,
        Packet::Unsubscribe(..) => 10,
        Packet::PingReq(..) => 12,
        Packet::Disconnect(..) => 14,
        Packet::ConnAck(..) | Packet::PingResp(..) | Packet::SubAck(..) | Packet::UnsubAck(..) => {
            return None
        }
    })
}

/// A decoded packet of a kind the broker also sends (PUBLISH, its acks, a v5
/// DISCONNECT) that encodes decodes back to itself; a refused encode leaves the output
/// as it was. CONNECT, SUBSCRIBE, UNSUBSCRIBE and PINGREQ are left out: the broker
/// never encodes them (and rumqttd's 3.1.1 CONNECT encoder writes the connect flags
/// over the protocol name).
fn round_trip(version: Version, packet: &Packet, raw: &[u8]) {
    if !matches!(
        packet,
        Packet::Publish(..)
            | Packet::PubAck(..)
            | Packet::PubRec(..)
            | Packet::PubRel(..)
            | Packet::PubComp(..)
            | Packet::Disconnect(..)
    ) {
        return;
    }
    if version == Version::V5 && matches!(packet, Packet::Disconnect(_, None)) {
        // rumqttd's v5 writer miscounts the remaining length of a DISCONNECT without
        // properties; the broker always sends one with them (`link::server_disconnect`).
        return;
    }
    let mut out = BytesMut::from(&b"kept"[..]);
    if encode(version, packet.clone(), &mut out).is_err() {
        assert_eq!(&out[..], b"kept", "a failed encode wrote bytes");
        return;
    }
    let mut encoded = out.split_off(4);
    let limit = encoded.len();
    let frame = peek(&encoded, limit)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no frame in the encoding of {packet:?}: {encoded:?}"));
    assert_eq!(
        frame.len(),
        encoded.len(),
        "encoding of {packet:?} is not one frame"
    );
    let bytes = encoded.split_to(frame.len());
    let back = decode(version, frame, bytes.clone(), limit);
    assert_eq!(
        back.as_ref(),
        Ok(packet),
        "{version:?} {raw:?} decoded as {packet:?}, re-encoded as {bytes:?}"
    );
}
