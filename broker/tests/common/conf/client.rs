//! One packet-level client connection over TCP or WebSocket: send helpers that encode
//! with rumqttc's codecs, and receive helpers over [`super::wire`].

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rumqttc::v5::mqttbytes::v5 as p5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::packet::{qos, qos4};
use super::wire::{parse, split_frame};
use super::{
    Conn, ConnAck, In, Msg, PublishProperties, SubscribeProperties, Target, Ver, Via, QUIET, WAIT,
};

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

impl Client {
    pub(super) async fn open(target: &Target, via: Via, ver: Ver) -> Client {
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
                // TCP_NODELAY as over TCP: otherwise a write after a read waits ~40 ms
                // on delayed ACKs, and "publish right after the SUBACK" would not be.
                let (ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
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

    /// Opens a TCP connection from `local` (on Linux every address of 127/8 is the
    /// loopback's), so that tests can tell clients apart by address.
    pub async fn open_tcp_from(target: &Target, local: std::net::IpAddr, ver: Ver) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("tcp socket");
        socket
            .bind((local, 0).into())
            .expect("bind the local address");
        let s = socket.connect(target.tcp).await.expect("tcp connect");
        s.set_nodelay(true).ok();
        Client {
            io: Io::Tcp(s),
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
        let pkid = self.send_subscribe(filters, props).await;
        self.suback(pkid).await
    }

    /// The codes of the SUBACK for `pkid` (PUBLISHes before it are stashed).
    pub async fn suback(&mut self, pkid: u16) -> Vec<u8> {
        match self
            .expect(|p| matches!(p, In::SubAck { pkid: id, .. } if *id == pkid))
            .await
        {
            In::SubAck { codes, .. } => codes,
            _ => unreachable!(),
        }
    }

    /// Sends a SUBSCRIBE without waiting for its SUBACK; returns its packet id.
    pub async fn send_subscribe(
        &mut self,
        filters: Vec<p5::Filter>,
        props: Option<SubscribeProperties>,
    ) -> u16 {
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
        pkid
    }

    /// Unsubscribes; returns every UNSUBACK that arrives for it within [`QUIET`] after
    /// the first (there must be exactly one) as its reason codes (empty for 3.1.1).
    pub async fn unsubscribe(&mut self, filters: &[&str]) -> Vec<Vec<u8>> {
        let pkid = self.send_unsubscribe(filters).await;
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

    /// Unsubscribes and returns the codes of the first UNSUBACK, without waiting for
    /// more (PUBLISHes before it are stashed).
    pub async fn unsubscribe_acked(&mut self, filters: &[&str]) -> Vec<u8> {
        let pkid = self.send_unsubscribe(filters).await;
        match self
            .expect(|p| matches!(p, In::UnsubAck { pkid: id, .. } if *id == pkid))
            .await
        {
            In::UnsubAck { codes, .. } => codes,
            _ => unreachable!(),
        }
    }

    async fn send_unsubscribe(&mut self, filters: &[&str]) -> u16 {
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
        pkid
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

    /// The next PUBLISH within `d` (stashed ones first); `None` on timeout or close.
    pub async fn next_msg_within(&mut self, d: Duration) -> Option<Msg> {
        if !self.stash.is_empty() {
            return Some(self.stash.remove(0));
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.read_packet()).await {
                Ok(Some(In::Publish(m))) => return Some(m),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
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
        self.closed_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("the server did not close the connection"))
    }

    /// Like [`Client::closed`], waiting up to `d`; `None` if the connection is still open.
    pub async fn closed_within(&mut self, d: Duration) -> Option<Option<u8>> {
        let deadline = tokio::time::Instant::now() + d;
        let mut reason = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.read_packet()).await {
                Ok(Some(In::Disconnect { reason: r, .. })) => reason = Some(r),
                Ok(Some(_)) => {}
                Ok(None) => return Some(reason),
                Err(_) => return None,
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
