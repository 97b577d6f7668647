//! Conformance harness: a packet-level MQTT client over TCP or WebSocket speaking 3.1.1
//! or 5, and a target that is either a fresh [`TestBroker`] or an external broker.
//!
//! `CONFORMANCE_TARGET=host:tcpport:wsport[:tcpport_v5]` points every conformance test at
//! a running broker with anonymous access (Mosquitto, bare rumqttd, another fleetmq); the
//! optional last port is for brokers that take MQTT 5 on a listener of its own (rumqttd).
//! Tests that need a fleetmq-specific configuration skip themselves there.
//!
//! Outgoing packets are encoded with rumqttc's client codecs; incoming packets are read
//! by a small parser of our own (so reason codes are seen as the bytes on the wire), with
//! rumqttc's v5 codec for PUBLISH properties.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::TestBroker;
use fleetmq_broker::BrokerConfig;

pub use p5::{ConnectProperties, LastWillProperties, PublishProperties, SubscribeProperties};

/// How long to wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to wait for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(400);

/// Which listener a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Tcp,
    Ws,
}

/// Which protocol version a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ver {
    V4,
    V5,
}

/// Generates one `#[tokio::test]` per transport and version for `case(target, via, ver)`.
#[macro_export]
macro_rules! matrix {
    ($name:ident, $case:ident) => {
        $crate::matrix!($name, $case, [tcp_v4: Tcp V4, tcp_v5: Tcp V5, ws_v4: Ws V4, ws_v5: Ws V5]);
    };
    ($name:ident, $case:ident, v5) => {
        $crate::matrix!($name, $case, [tcp_v5: Tcp V5, ws_v5: Ws V5]);
    };
    ($name:ident, $case:ident, [$($t:ident: $via:ident $ver:ident),*]) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $t() {
                    use $crate::common::conf::{Ver, Via};
                    super::$case(Via::$via, Ver::$ver).await
                }
            )*
        }
    };
}

/// The broker under test.
pub struct Target {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    /// MQTT 5 over TCP, when the broker wants it on a port of its own.
    pub tcp5: Option<SocketAddr>,
    /// `None` when the tests run against an external broker.
    pub broker: Option<TestBroker>,
}

impl Target {
    /// A fleetmq with anonymous access (SPEC §3 default rules), or the external target.
    pub async fn start() -> Target {
        Target::with(|_| {}).await
    }

    /// Like [`Target::start`], with the fleetmq config adjusted (ignored for an external
    /// target: check [`Target::external`] when the test depends on the adjustment).
    pub async fn with(adjust: impl FnOnce(&mut BrokerConfig)) -> Target {
        if let Some(t) = external() {
            return t;
        }
        let mut config = BrokerConfig::for_tests();
        config.allow_anonymous = true;
        adjust(&mut config);
        let broker = TestBroker::with_config(config).await;
        Target {
            tcp: broker.tcp,
            ws: broker.ws,
            tcp5: None,
            broker: Some(broker),
        }
    }

    pub fn external(&self) -> bool {
        self.broker.is_none()
    }

    /// Opens a client connection (no CONNECT sent yet).
    pub async fn open(&self, via: Via, ver: Ver) -> Client {
        Client::open(self, via, ver).await
    }

    /// Opens and connects with a clean session; panics unless CONNACK is a success.
    pub async fn connect(&self, via: Via, ver: Ver, id: &str) -> Client {
        let mut c = self.open(via, ver).await;
        let ack = c.connect(Conn::new(id)).await;
        assert_eq!(ack.code, 0, "CONNACK for {id}: {ack:?}");
        c
    }
}

/// `CONFORMANCE_TARGET=host:tcpport:wsport[:tcpport_v5]` (host: an IP address).
fn external() -> Option<Target> {
    let spec = std::env::var("CONFORMANCE_TARGET").ok()?;
    let parts: Vec<&str> = spec.split(':').collect();
    let ip = parts
        .first()?
        .parse()
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let port = |i: usize| parts.get(i).and_then(|p| p.parse::<u16>().ok());
    Some(Target {
        tcp: SocketAddr::new(ip, port(1)?),
        ws: SocketAddr::new(ip, port(2)?),
        tcp5: port(3).map(|p| SocketAddr::new(ip, p)),
        broker: None,
    })
}

/// Unique names per test run, so an external broker's leftovers never interfere.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!(
        "{prefix}{}x{}",
        t % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// What goes into a CONNECT.
#[derive(Debug, Clone)]
pub struct Conn {
    pub id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub props: Option<ConnectProperties>,
    pub login: Option<(String, String)>,
}

/// A last will.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Option<LastWillProperties>,
}

impl Conn {
    pub fn new(id: &str) -> Conn {
        Conn {
            id: id.to_owned(),
            clean: true,
            keep_alive: 60,
            will: None,
            props: None,
            login: None,
        }
    }

    pub fn keep_alive(mut self, secs: u16) -> Conn {
        self.keep_alive = secs;
        self
    }

    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8) -> Conn {
        self.will = Some(Will {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            qos,
            retain: false,
            props: None,
        });
        self
    }

    pub fn will_props(mut self, props: LastWillProperties) -> Conn {
        if let Some(w) = self.will.as_mut() {
            w.props = Some(props);
        }
        self
    }

    pub fn props(mut self, props: ConnectProperties) -> Conn {
        self.props = Some(props);
        self
    }
}

/// Will properties with nothing set.
pub fn will_props() -> LastWillProperties {
    LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    }
}

/// Default connect properties with one field changed.
pub fn connect_props(f: impl FnOnce(&mut ConnectProperties)) -> ConnectProperties {
    let mut p = ConnectProperties::new();
    f(&mut p);
    p
}

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

enum Io {
    Tcp(TcpStream),
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>),
}

/// One packet-level client connection.
pub struct Client {
    io: Io,
    pub ver: Ver,
    buf: BytesMut,
    next_pkid: u16,
    /// PUBLISHes that arrived while waiting for something else.
    pub stash: Vec<Msg>,
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

impl Client {
    async fn open(target: &Target, via: Via, ver: Ver) -> Client {
        let io = match via {
            Via::Tcp => {
                let addr = match (ver, target.tcp5) {
                    (Ver::V5, Some(tcp5)) => tcp5,
                    _ => target.tcp,
                };
                let s = TcpStream::connect(addr).await.expect("tcp connect");
                s.set_nodelay(true).ok();
                Io::Tcp(s)
            }
            Via::Ws => {
                use tokio_tungstenite::tungstenite::client::IntoClientRequest;
                let url = format!("ws://{}/mqtt", target.ws);
                let mut req = url.into_client_request().expect("ws request");
                req.headers_mut()
                    .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
                let (ws, _) = tokio_tungstenite::connect_async(req)
                    .await
                    .expect("ws connect");
                Io::Ws(Box::new(ws))
            }
        };
        Client {
            io,
            ver,
            buf: BytesMut::new(),
            next_pkid: 1,
            stash: Vec::new(),
        }
    }

    pub fn v5(&self) -> bool {
        self.ver == Ver::V5
    }

    pub fn pkid(&mut self) -> u16 {
        let p = self.next_pkid;
        self.next_pkid = if p >= 60_000 { 1 } else { p + 1 };
        p
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        match &mut self.io {
            Io::Tcp(s) => s.write_all(bytes).await.is_ok(),
            Io::Ws(ws) => ws
                .send(Message::Binary(Bytes::copy_from_slice(bytes)))
                .await
                .is_ok(),
        }
    }

    /// Writes a v5 packet (any version: tests use this for v5-only packets).
    pub async fn send5(&mut self, packet: p5::Packet) -> bool {
        let mut b = BytesMut::new();
        packet.write(&mut b, None).expect("encode v5");
        self.send_raw(&b).await
    }

    /// Writes a 3.1.1 packet.
    pub async fn send4(&mut self, packet: rumqttc::Packet) -> bool {
        let mut b = BytesMut::new();
        packet.write(&mut b, 1 << 28).expect("encode v4");
        self.send_raw(&b).await
    }

    /// Sends CONNECT and returns the CONNACK.
    pub async fn connect(&mut self, c: Conn) -> ConnAck {
        self.send_connect(c).await;
        match self.recv().await {
            Some(In::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send_connect(&mut self, c: Conn) {
        match self.ver {
            Ver::V5 => {
                let connect = p5::Connect {
                    keep_alive: c.keep_alive,
                    client_id: c.id,
                    clean_start: c.clean,
                    properties: c.props,
                };
                let will = c.will.map(|w| p5::LastWill {
                    topic: Bytes::from(w.topic),
                    message: Bytes::from(w.payload),
                    qos: qos(w.qos),
                    retain: w.retain,
                    properties: w.props,
                });
                let login = c.login.map(|(u, p)| p5::Login::new(u, p));
                self.send5(p5::Packet::Connect(connect, will, login)).await;
            }
            Ver::V4 => {
                let mut connect = rumqttc::Connect::new(c.id);
                connect.keep_alive = c.keep_alive;
                connect.clean_session = c.clean;
                connect.last_will = c
                    .will
                    .map(|w| rumqttc::LastWill::new(w.topic, w.payload, qos4(w.qos), w.retain));
                connect.login = c.login.map(|(u, p)| rumqttc::Login::new(u, p));
                self.send4(rumqttc::Packet::Connect(connect)).await;
            }
        }
    }

    /// Publishes; returns the packet id used (0 for QoS 0).
    pub async fn publish(&mut self, topic: &str, payload: &[u8], q: u8, retain: bool) -> u16 {
        self.publish_with(topic, payload, q, retain, None).await
    }

    pub async fn publish_with(
        &mut self,
        topic: &str,
        payload: &[u8],
        q: u8,
        retain: bool,
        props: Option<PublishProperties>,
    ) -> u16 {
        let pkid = if q > 0 { self.pkid() } else { 0 };
        self.publish_raw(topic, payload, q, retain, false, pkid, props)
            .await;
        pkid
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "mirrors the PUBLISH header fields"
    )]
    pub async fn publish_raw(
        &mut self,
        topic: &str,
        payload: &[u8],
        q: u8,
        retain: bool,
        dup: bool,
        pkid: u16,
        props: Option<PublishProperties>,
    ) {
        match self.ver {
            Ver::V5 => {
                let mut p = p5::Publish::new(topic, qos(q), payload.to_vec(), props);
                p.retain = retain;
                p.dup = dup;
                p.pkid = pkid;
                self.send5(p5::Packet::Publish(p)).await;
            }
            Ver::V4 => {
                let mut p = rumqttc::Publish::new(topic, qos4(q), payload.to_vec());
                p.retain = retain;
                p.dup = dup;
                p.pkid = pkid;
                self.send4(rumqttc::Packet::Publish(p)).await;
            }
        };
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    pub async fn publish_acked(&mut self, topic: &str, payload: &[u8]) {
        let pkid = self.publish(topic, payload, 1, false).await;
        self.expect(|p| matches!(p, In::PubAck { pkid: id, .. } if *id == pkid))
            .await;
    }

    /// Subscribes to one filter; returns the SUBACK codes.
    pub async fn subscribe(&mut self, filter: &str, q: u8) -> Vec<u8> {
        self.subscribe_many(&[(filter, q)], None).await
    }

    pub async fn subscribe_many(
        &mut self,
        filters: &[(&str, u8)],
        props: Option<SubscribeProperties>,
    ) -> Vec<u8> {
        let filters = filters
            .iter()
            .map(|(f, q)| {
                let mut filter = p5::Filter::new(*f, qos(*q));
                filter.preserve_retain = false;
                filter
            })
            .collect();
        self.subscribe_filters(filters, props).await
    }

    /// Subscribes with full v5 options (3.1.1 clients send the path and QoS only).
    pub async fn subscribe_filters(
        &mut self,
        filters: Vec<p5::Filter>,
        props: Option<SubscribeProperties>,
    ) -> Vec<u8> {
        let pkid = self.pkid();
        match self.ver {
            Ver::V5 => {
                let mut s = p5::Subscribe::new_many(filters, props);
                s.pkid = pkid;
                self.send5(p5::Packet::Subscribe(s)).await;
            }
            Ver::V4 => {
                let mut s = rumqttc::Subscribe::new_many(
                    filters
                        .into_iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.path, qos4(f.qos as u8))),
                );
                s.pkid = pkid;
                self.send4(rumqttc::Packet::Subscribe(s)).await;
            }
        }
        match self
            .expect(|p| matches!(p, In::SubAck { pkid: id, .. } if *id == pkid))
            .await
        {
            In::SubAck { codes, .. } => codes,
            _ => unreachable!(),
        }
    }

    /// Unsubscribes; returns every UNSUBACK that arrives for it within [`QUIET`] after
    /// the first (there must be exactly one) as its reason codes (empty for 3.1.1).
    pub async fn unsubscribe(&mut self, filters: &[&str]) -> Vec<Vec<u8>> {
        let pkid = self.pkid();
        match self.ver {
            Ver::V5 => {
                let mut u = p5::Unsubscribe::new(filters[0], None);
                u.filters = filters.iter().map(|f| f.to_string()).collect();
                u.pkid = pkid;
                self.send5(p5::Packet::Unsubscribe(u)).await;
            }
            Ver::V4 => {
                let mut u = rumqttc::Unsubscribe::new(filters[0]);
                u.topics = filters.iter().map(|f| f.to_string()).collect();
                u.pkid = pkid;
                self.send4(rumqttc::Packet::Unsubscribe(u)).await;
            }
        }
        let mut acks = Vec::new();
        let mut deadline = WAIT;
        while let Some(p) = self.recv_within(deadline).await {
            match p {
                In::UnsubAck { pkid: id, codes } if id == pkid => {
                    acks.push(codes);
                    deadline = QUIET;
                }
                In::Publish(m) => self.stash.push(m),
                _ => {}
            }
        }
        acks
    }

    pub async fn puback(&mut self, pkid: u16) {
        self.send_raw(&[0x40, 0x02, (pkid >> 8) as u8, pkid as u8])
            .await;
    }

    pub async fn pubrec(&mut self, pkid: u16) {
        self.send_raw(&[0x50, 0x02, (pkid >> 8) as u8, pkid as u8])
            .await;
    }

    pub async fn pubrel(&mut self, pkid: u16) {
        self.send_raw(&[0x62, 0x02, (pkid >> 8) as u8, pkid as u8])
            .await;
    }

    pub async fn pubcomp(&mut self, pkid: u16) {
        self.send_raw(&[0x70, 0x02, (pkid >> 8) as u8, pkid as u8])
            .await;
    }

    pub async fn pingreq(&mut self) {
        self.send_raw(&[0xc0, 0x00]).await;
    }

    /// A normal DISCONNECT (v5: with `reason`).
    pub async fn disconnect(mut self, reason: u8) {
        match self.ver {
            Ver::V4 => self.send_raw(&[0xe0, 0x00]).await,
            Ver::V5 => self.send_raw(&[0xe0, 0x01, reason]).await,
        };
        // Give the server the chance to read it before the socket closes.
        let _ = self.recv_within(Duration::from_millis(100)).await;
    }

    /// Closes the network connection without DISCONNECT.
    pub async fn drop_connection(self) {
        match self.io {
            Io::Tcp(mut s) => {
                let _ = s.shutdown().await;
            }
            Io::Ws(mut ws) => {
                let _ = ws.send(Message::Close(None)).await;
            }
        }
    }

    /// The next packet within [`WAIT`]; `None` when the connection closed.
    pub async fn recv(&mut self) -> Option<In> {
        match tokio::time::timeout(WAIT, self.read_packet()).await {
            Ok(p) => p,
            Err(_) => panic!("no packet from the server within {WAIT:?}"),
        }
    }

    /// The next packet within `d`; `None` on timeout or close.
    pub async fn recv_within(&mut self, d: Duration) -> Option<In> {
        tokio::time::timeout(d, self.read_packet())
            .await
            .ok()
            .flatten()
    }

    /// Waits for a packet that satisfies `want`, stashing PUBLISHes it skips.
    pub async fn expect(&mut self, want: impl Fn(&In) -> bool) -> In {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.read_packet()).await {
                Ok(Some(p)) if want(&p) => return p,
                Ok(Some(In::Publish(m))) => self.stash.push(m),
                Ok(Some(_)) => {}
                Ok(None) => panic!("connection closed while waiting"),
                Err(_) => panic!("expected packet did not arrive within {WAIT:?}"),
            }
        }
    }

    /// The next PUBLISH (stashed ones first).
    pub async fn next_msg(&mut self) -> Msg {
        if !self.stash.is_empty() {
            return self.stash.remove(0);
        }
        match self.expect(|p| matches!(p, In::Publish(_))).await {
            In::Publish(m) => m,
            _ => unreachable!(),
        }
    }

    /// Every PUBLISH that arrives within `d` (stashed ones first), acking none.
    pub async fn msgs_within(&mut self, d: Duration) -> Vec<Msg> {
        let mut got = std::mem::take(&mut self.stash);
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.read_packet()).await {
                Ok(Some(In::Publish(m))) => got.push(m),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return got,
            }
        }
    }

    /// Waits until the server closes the connection; returns the v5 DISCONNECT reason it
    /// sent first, if any. Panics if the connection stays open for [`WAIT`].
    pub async fn closed(&mut self) -> Option<u8> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut reason = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.read_packet()).await {
                Ok(Some(In::Disconnect { reason: r, .. })) => reason = Some(r),
                Ok(Some(_)) => {}
                Ok(None) => return reason,
                Err(_) => panic!("the server did not close the connection"),
            }
        }
    }

    async fn fill(&mut self) -> bool {
        match &mut self.io {
            Io::Tcp(s) => {
                let mut chunk = [0u8; 8192];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => false,
                    Ok(n) => {
                        self.buf.extend_from_slice(&chunk[..n]);
                        true
                    }
                }
            }
            Io::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        self.buf.extend_from_slice(&b);
                        return true;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    async fn read_packet(&mut self) -> Option<In> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf) {
                return Some(parse(self.ver, frame));
            }
            if !self.fill().await {
                return None;
            }
        }
    }
}

/// Splits one complete frame off the front of `buf`.
fn split_frame(buf: &mut BytesMut) -> Option<Bytes> {
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

/// Skips the v5 property block, returning the reason string if there is one.
fn skip_props(b: &mut Bytes) -> Option<String> {
    let n = var_int(b);
    if b.remaining() < n {
        return None;
    }
    let mut props = b.split_to(n);
    let mut reason = None;
    while props.has_remaining() {
        let id = props.get_u8();
        match id {
            0x1f | 0x1a | 0x1c | 0x12 | 0x15 | 0x08 | 0x03 => {
                let l = usize::from(props.get_u16());
                let s = props.split_to(l);
                if id == 0x1f {
                    reason = Some(String::from_utf8_lossy(&s).into_owned());
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
            0x0b => {
                var_int(&mut props);
            }
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => props.advance(1),
            0x13 | 0x21 | 0x22 | 0x23 => props.advance(2),
            _ => props.advance(4),
        }
    }
    reason
}

fn parse(ver: Ver, frame: Bytes) -> In {
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
                match p5::Packet::read(&mut BytesMut::from(&frame[..]), None) {
                    Ok(p5::Packet::Publish(p)) => In::Publish(Msg {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        qos: q,
                        dup: p.dup,
                        retain: p.retain,
                        pkid: p.pkid,
                        props: p.properties,
                    }),
                    other => panic!("undecodable v5 PUBLISH: {other:?}"),
                }
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
                skip_props(&mut b)
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

/// A PUBLISH in the wire format of `ver`, with a raw property block for v5 (for
/// properties rumqttc will not encode, such as a topic alias with an empty topic).
pub fn raw_publish(
    ver: Ver,
    topic: &str,
    payload: &[u8],
    q: u8,
    pkid: u16,
    props: &[u8],
) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(topic.len() as u16);
    body.put_slice(topic.as_bytes());
    if q > 0 {
        body.put_u16(pkid);
    }
    if ver == Ver::V5 {
        put_var_int(&mut body, props.len());
        body.put_slice(props);
    }
    body.put_slice(payload);
    let mut out = BytesMut::new();
    out.put_u8(0x30 | (q << 1));
    put_var_int(&mut out, body.len());
    out.put_slice(&body);
    out.to_vec()
}

pub fn put_var_int(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

/// Publish properties with one field set.
pub fn publish_props(f: impl FnOnce(&mut PublishProperties)) -> Option<PublishProperties> {
    let mut p = PublishProperties::default();
    f(&mut p);
    Some(p)
}

/// A subscription filter with v5 options.
pub fn filter(path: &str, q: u8) -> p5::Filter {
    let mut f = p5::Filter::new(path, qos(q));
    f.preserve_retain = false;
    f
}
