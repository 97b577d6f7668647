//! A raw MQTT 3.1.1 client over TCP, for the real-binary tests that need packet ids, DUP
//! flags and QoS 2 exchanges exactly as they go over the wire (a client library hides
//! them). Short packets only (remaining length below 128).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Server, WAIT};

/// How long "nothing more arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(500);

/// CONNECT with Clean Session = 0 (or 1) and keepalive 60 s; whether the session was
/// present.
pub async fn connect(s: &Server, id: &str, clean: bool) -> (TcpStream, bool) {
    let flags = if clean { 2 } else { 0 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    body.extend((id.len() as u16).to_be_bytes());
    body.extend(id.as_bytes());
    let mut stream = TcpStream::connect(s.mqtt).await.unwrap();
    stream.write_all(&packet(0x10, &body)).await.unwrap();
    let ack = read_packet(&mut stream).await;
    assert_eq!(ack[..2], [0x20, 2], "CONNACK");
    assert_eq!(ack[3], 0, "accepted");
    (stream, ack[2] & 1 == 1)
}

/// A packet: fixed header byte, remaining length, body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let len = u8::try_from(body.len()).ok().filter(|&n| n < 128);
    let mut p = vec![first, len.expect("short packets only")];
    p.extend(body);
    p
}

/// The next packet, within `WAIT`.
pub async fn read_packet(s: &mut TcpStream) -> Vec<u8> {
    tokio::time::timeout(WAIT, read_one(s))
        .await
        .expect("packet in time")
}

/// The next packet, or `None` if nothing arrives within [`QUIET`].
pub async fn next_packet(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 1];
    match tokio::time::timeout(QUIET, s.read_exact(&mut head)).await {
        Err(_) => None,
        Ok(r) => {
            r.unwrap();
            let rest = read_rest(s).await;
            Some([head.to_vec(), rest].concat())
        }
    }
}

async fn read_one(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 1];
    s.read_exact(&mut head).await.unwrap();
    let rest = read_rest(s).await;
    [head.to_vec(), rest].concat()
}

/// The remaining length byte and the body after it.
async fn read_rest(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 1];
    s.read_exact(&mut len).await.unwrap();
    assert!(len[0] < 128, "short packets only");
    let mut body = vec![0u8; usize::from(len[0])];
    s.read_exact(&mut body).await.unwrap();
    [len.to_vec(), body].concat()
}

/// SUBSCRIBE (packet id 1) to one filter; the SUBACK must grant `qos`.
pub async fn subscribe(s: &mut TcpStream, filter: &str, qos: u8) {
    let mut body = vec![0, 1];
    body.extend((filter.len() as u16).to_be_bytes());
    body.extend(filter.as_bytes());
    body.push(qos);
    s.write_all(&packet(0x82, &body)).await.unwrap();
    assert_eq!(read_packet(s).await, [0x90, 3, 0, 1, qos], "SUBACK");
}

/// PUBLISH at QoS 1 or 2 on packet id `pkid`.
pub async fn publish(s: &mut TcpStream, topic: &str, qos: u8, pkid: u16, payload: &str, dup: bool) {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend(topic.as_bytes());
    body.extend(pkid.to_be_bytes());
    body.extend(payload.as_bytes());
    let first = 0x30 | (qos << 1) | if dup { 8 } else { 0 };
    s.write_all(&packet(first, &body)).await.unwrap();
}

/// Sends DISCONNECT and waits for the broker to close the connection, which it does
/// only once a persistent session is parked (stored). Nothing may arrive meanwhile.
pub async fn disconnect(mut s: TcpStream) {
    s.write_all(&[0xe0, 0]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert!(rest.is_empty(), "nothing after DISCONNECT: {rest:?}");
}

/// Nothing more arrives within [`QUIET`].
pub async fn quiet(s: &mut TcpStream) {
    let got = next_packet(s).await;
    assert_eq!(got, None, "nothing more expected");
}

/// A PUBLISH as the subscriber sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub dup: bool,
    pub qos: u8,
    pub pkid: u16,
    pub payload: String,
}

/// Reads a QoS 1/2 PUBLISH.
pub fn parse_publish(p: &[u8]) -> Delivery {
    assert_eq!(p[0] & 0xf0, 0x30, "PUBLISH, got {p:?}");
    let (dup, qos) = (p[0] & 8 != 0, (p[0] >> 1) & 3);
    let topic_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let at = 4 + topic_len;
    assert!(qos > 0, "QoS 1/2 expected: {p:?}");
    Delivery {
        dup,
        qos,
        pkid: u16::from_be_bytes([p[at], p[at + 1]]),
        payload: String::from_utf8_lossy(&p[at + 2..]).into_owned(),
    }
}

/// An acknowledgement (`0x40` PUBACK, `0x50` PUBREC, `0x62` PUBREL, `0x70` PUBCOMP).
pub fn ack(kind: u8, pkid: u16) -> [u8; 4] {
    let [hi, lo] = pkid.to_be_bytes();
    [kind, 2, hi, lo]
}
