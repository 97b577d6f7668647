//! What the test client receives: packets from the server as seen on the wire, split
//! off the byte stream and parsed by hand (rumqttc's v5 codec only for properties).

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5 as p5;

use super::{PublishProperties, Ver};

/// A received CONNACK.
#[derive(Debug, Clone)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: u8,
    pub props: Option<p5::ConnAckProperties>,
}

/// A received PUBLISH.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    pub pkid: u16,
    pub props: Option<PublishProperties>,
}

/// A packet from the server, as seen on the wire.
#[derive(Debug, Clone)]
pub enum In {
    ConnAck(ConnAck),
    Publish(Msg),
    PubAck {
        pkid: u16,
        reason: u8,
    },
    PubRec {
        pkid: u16,
        reason: u8,
    },
    PubRel {
        pkid: u16,
        reason: u8,
    },
    PubComp {
        pkid: u16,
        reason: u8,
    },
    SubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    UnsubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    PingResp,
    Disconnect {
        reason: u8,
        reason_string: Option<String>,
    },
    Other(u8),
}

/// Splits one complete frame off the front of `buf`.
pub(super) fn split_frame(buf: &mut BytesMut) -> Option<Bytes> {
    let mut len = 0usize;
    let mut pos = 1;
    let mut shift = 0;
    loop {
        let b = *buf.get(pos)?;
        len |= usize::from(b & 0x7f) << shift;
        pos += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    if buf.len() < pos + len {
        return None;
    }
    Some(buf.split_to(pos + len).freeze())
}

fn var_int(b: &mut Bytes) -> usize {
    let mut v = 0usize;
    let mut shift = 0;
    while b.has_remaining() {
        let x = b.get_u8();
        v |= usize::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    v
}

/// What the harness reads itself from a v5 property block.
#[derive(Default)]
struct Props {
    reason: Option<String>,
    subscription_ids: Vec<usize>,
}

/// Skips the v5 property block, returning the reason string and Subscription
/// Identifiers it holds.
fn skip_props(b: &mut Bytes) -> Props {
    let n = var_int(b);
    let mut found = Props::default();
    if b.remaining() < n {
        return found;
    }
    let mut props = b.split_to(n);
    while props.has_remaining() {
        let id = props.get_u8();
        match id {
            0x1f | 0x1a | 0x1c | 0x12 | 0x15 | 0x08 | 0x03 => {
                let l = usize::from(props.get_u16());
                let s = props.split_to(l);
                if id == 0x1f {
                    found.reason = Some(String::from_utf8_lossy(&s).into_owned());
                }
            }
            0x26 => {
                for _ in 0..2 {
                    let l = usize::from(props.get_u16());
                    props.advance(l);
                }
            }
            0x09 | 0x16 => {
                let l = usize::from(props.get_u16());
                props.advance(l);
            }
            0x0b => found.subscription_ids.push(var_int(&mut props)),
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => props.advance(1),
            0x13 | 0x21 | 0x22 | 0x23 => props.advance(2),
            _ => props.advance(4),
        }
    }
    found
}

/// A v5 PUBLISH. rumqttc 0.25.1 counts each Subscription Identifier's property byte
/// twice (`v5/mqttbytes/v5/publish.rs:229`), so with two or more its property block
/// ends early and the rest lands in the payload: the harness takes the identifiers and
/// the payload from the frame itself (`b`: the frame after its fixed header).
fn publish_v5(byte1: u8, frame: &Bytes, mut b: Bytes) -> Msg {
    let q = (byte1 >> 1) & 3;
    let p = match p5::Packet::read(&mut BytesMut::from(&frame[..]), None) {
        Ok(p5::Packet::Publish(p)) => p,
        other => panic!("undecodable v5 PUBLISH: {other:?}"),
    };
    let l = usize::from(b.get_u16());
    b.advance(l + if q > 0 { 2 } else { 0 });
    let ids = skip_props(&mut b).subscription_ids;
    let mut props = p.properties;
    if let Some(props) = props.as_mut() {
        props.subscription_identifiers = ids;
    }
    Msg {
        topic: String::from_utf8_lossy(&p.topic).into_owned(),
        payload: b.to_vec(),
        qos: q,
        dup: p.dup,
        retain: p.retain,
        pkid: p.pkid,
        props,
    }
}

pub(super) fn parse(ver: Ver, frame: Bytes) -> In {
    let byte1 = frame[0];
    let mut b = frame.clone();
    b.advance(1);
    var_int(&mut b);
    let v5 = ver == Ver::V5;
    let pkid_reason = |b: &mut Bytes| {
        let pkid = b.get_u16();
        let reason = if b.has_remaining() { b.get_u8() } else { 0 };
        (pkid, reason)
    };
    match byte1 >> 4 {
        2 => {
            let flags = b.get_u8();
            let code = b.get_u8();
            let props = if v5 {
                match p5::Packet::read(&mut BytesMut::from(&frame[..]), None) {
                    Ok(p5::Packet::ConnAck(a)) => a.properties,
                    _ => None,
                }
            } else {
                None
            };
            In::ConnAck(ConnAck {
                session_present: flags & 1 == 1,
                code,
                props,
            })
        }
        3 => {
            let q = (byte1 >> 1) & 3;
            if v5 {
                In::Publish(publish_v5(byte1, &frame, b))
            } else {
                let l = usize::from(b.get_u16());
                let topic = String::from_utf8_lossy(&b.split_to(l)).into_owned();
                let pkid = if q > 0 { b.get_u16() } else { 0 };
                In::Publish(Msg {
                    topic,
                    payload: b.to_vec(),
                    qos: q,
                    dup: byte1 & 8 != 0,
                    retain: byte1 & 1 != 0,
                    pkid,
                    props: None,
                })
            }
        }
        4 => {
            let (pkid, reason) = pkid_reason(&mut b);
            In::PubAck { pkid, reason }
        }
        5 => {
            let (pkid, reason) = pkid_reason(&mut b);
            In::PubRec { pkid, reason }
        }
        6 => {
            let (pkid, reason) = pkid_reason(&mut b);
            In::PubRel { pkid, reason }
        }
        7 => {
            let (pkid, reason) = pkid_reason(&mut b);
            In::PubComp { pkid, reason }
        }
        9 | 11 => {
            let pkid = b.get_u16();
            if v5 {
                skip_props(&mut b);
            }
            let codes = b.to_vec();
            if byte1 >> 4 == 9 {
                In::SubAck { pkid, codes }
            } else {
                In::UnsubAck { pkid, codes }
            }
        }
        13 => In::PingResp,
        14 => {
            let reason = if b.has_remaining() { b.get_u8() } else { 0 };
            let reason_string = if b.has_remaining() {
                skip_props(&mut b).reason
            } else {
                None
            };
            In::Disconnect {
                reason,
                reason_string,
            }
        }
        t => In::Other(t),
    }
}
