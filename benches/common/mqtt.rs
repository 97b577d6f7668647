//! A minimal MQTT 3.1.1 client for load generation, shared by the `load` and `fleet`
//! benchmarks (each includes this file with `#[path]` and uses part of it): packets are
//! encoded and decoded with rumqttc's codec (`mqttbytes::v4`) and written over a
//! `TcpStream` with TCP_NODELAY, with no event loop, so the generator, which shares the
//! machine with the broker, spends its CPU on syscalls rather than on a client
//! library's bookkeeping.
#![allow(dead_code, reason = "shared by two benchmarks, each uses part of it")]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BytesMut};
use fleetmq_broker::envelope::{self, NonceSource, KEY_LEN};
use rumqttc::mqttbytes::v4::{self, ConnAck, ConnectReturnCode, SubAck, SubscribeReasonCode};
use rumqttc::mqttbytes::{self, Error as CodecError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use rumqttc::mqttbytes::v4::{Packet, PubAck, Publish};
pub use rumqttc::mqttbytes::{PacketType, QoS};

/// The largest packet the client accepts from a broker; the benches' are under 1 KiB.
const MAX_PACKET: usize = 1 << 20;

/// Who a client logs in as.
#[derive(Debug, Clone)]
pub struct Login {
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    /// CONNECT with Clean Session = 0 (a persistent session).
    pub persistent: bool,
}

impl Login {
    pub fn anonymous(client_id: impl Into<String>) -> Login {
        Login {
            client_id: client_id.into(),
            credentials: None,
            persistent: false,
        }
    }

    pub fn password(client_id: &str, username: &str, password: &str) -> Login {
        Login {
            client_id: client_id.to_owned(),
            credentials: Some((username.to_owned(), password.to_owned())),
            persistent: false,
        }
    }

    /// CONNECT, clean session unless the login asks for a persistent one, no will.
    fn connect(&self, keep_alive: u16) -> v4::Connect {
        let mut connect = v4::Connect::new(self.client_id.as_str());
        connect.keep_alive = keep_alive;
        connect.clean_session = !self.persistent;
        if let Some((user, pass)) = &self.credentials {
            connect.set_login(user.as_str(), pass.as_str());
        }
        connect
    }
}

/// Appends one PUBLISH (QoS 0 ignores `pkid`; above QoS 0 it must not be 0).
pub fn publish_into(
    out: &mut BytesMut,
    topic: &str,
    qos: QoS,
    pkid: u16,
    payload: &[u8],
) -> anyhow::Result<()> {
    let mut publish = Publish::new(topic, qos, payload);
    if qos != QoS::AtMostOnce {
        publish.pkid = pkid;
    }
    publish.write(out)?;
    Ok(())
}

pub fn puback_into(out: &mut BytesMut, pkid: u16) -> anyhow::Result<()> {
    PubAck::new(pkid).write(out)?;
    Ok(())
}

/// A packet [`Client::expect`] can wait for.
pub trait Expected: Sized {
    const NAME: &'static str;
    fn from_packet(packet: Packet) -> Option<Self>;
}

macro_rules! expected {
    ($($variant:ident => $name:literal),* $(,)?) => {$(
        impl Expected for v4::$variant {
            const NAME: &'static str = $name;
            fn from_packet(packet: Packet) -> Option<Self> {
                match packet {
                    Packet::$variant(p) => Some(p),
                    _ => None,
                }
            }
        }
    )*};
}

expected!(ConnAck => "CONNACK", SubAck => "SUBACK", Publish => "PUBLISH", PubAck => "PUBACK");

/// A connected client: its socket and an input buffer of not yet decoded bytes.
pub struct Client {
    pub stream: TcpStream,
    pub buf: BytesMut,
    /// How much buffer to add when the spare room runs low (small for idle clients).
    pub chunk: usize,
}

impl Client {
    /// TCP connect (with TCP_NODELAY), CONNECT, and wait for a successful CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        login: &Login,
        keep_alive: u16,
    ) -> anyhow::Result<Client> {
        Client::connect_within(addr, login, keep_alive, Duration::from_secs(30)).await
    }

    /// [`Client::connect`], waiting up to `within` for the CONNACK (a reconnect storm
    /// against a broker that hashes every password takes minutes).
    pub async fn connect_within(
        addr: SocketAddr,
        login: &Login,
        keep_alive: u16,
        within: Duration,
    ) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr).await.context("tcp connect")?;
        Client::handshake(stream, login, keep_alive, 256, within).await
    }

    /// Like [`Client::connect`] with keepalive 0 (runs are short and never idle a
    /// connection) and the socket's send buffer capped at `send_buffer` bytes, so a
    /// publisher that outruns the broker waits instead of parking megabytes in the
    /// kernel that the broker reads long after the measurement ended.
    pub async fn connect_with(
        addr: SocketAddr,
        login: &Login,
        send_buffer: Option<u32>,
    ) -> anyhow::Result<Client> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(bytes) = send_buffer {
            socket.set_send_buffer_size(bytes)?;
        }
        let stream = socket.connect(addr).await.context("tcp connect")?;
        Client::handshake(stream, login, 0, 16 * 1024, Duration::from_secs(30)).await
    }

    async fn handshake(
        stream: TcpStream,
        login: &Login,
        keep_alive: u16,
        chunk: usize,
        within: Duration,
    ) -> anyhow::Result<Client> {
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            buf: BytesMut::new(),
            chunk,
        };
        let mut out = BytesMut::new();
        login.connect(keep_alive).write(&mut out)?;
        client.stream.write_all(&out).await?;
        let connack: ConnAck = client.expect(within).await?;
        if connack.code != ConnectReturnCode::Success {
            bail!("CONNACK {:?} for {}", connack.code, login.client_id);
        }
        Ok(client)
    }

    /// Subscribes with one filter and waits for a granting SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let mut subscribe = v4::Subscribe::new(filter, qos);
        subscribe.pkid = 1;
        let mut out = BytesMut::new();
        subscribe.write(&mut out)?;
        self.stream.write_all(&out).await?;
        let suback: SubAck = self.expect(Duration::from_secs(5)).await?;
        match suback.return_codes.first() {
            Some(SubscribeReasonCode::Success(_)) => Ok(()),
            other => bail!("SUBSCRIBE {filter} refused: {other:?}"),
        }
    }

    /// Sends DISCONNECT.
    pub async fn disconnect(&mut self) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        v4::Disconnect.write(&mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Reads more bytes into the buffer; `Ok(0)` on EOF.
    pub async fn fill(&mut self) -> anyhow::Result<usize> {
        // Once the packets decoded so far are dropped, `reserve` reuses the space they
        // took instead of growing the buffer.
        if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
            self.buf.reserve(self.chunk);
        }
        Ok(self.stream.read_buf(&mut self.buf).await?)
    }

    /// Decodes the next complete packet read so far, if there is one.
    pub fn next_packet(&mut self) -> anyhow::Result<Option<Packet>> {
        match Packet::read(&mut self.buf, MAX_PACKET) {
            Ok(packet) => Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(anyhow!(e).context("malformed packet from the broker")),
        }
    }

    /// Frames the next complete packet read so far and drops it undecoded: its type.
    /// For loops that only count packets: decoding a PUBLISH (its topic copied into a
    /// `String`) costs about 100 ns more than framing it.
    pub fn skip_packet(&mut self) -> anyhow::Result<Option<PacketType>> {
        match mqttbytes::check(self.buf.iter(), MAX_PACKET) {
            Ok(header) => {
                self.buf.advance(header.frame_length());
                Ok(Some(header.packet_type()?))
            }
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(anyhow!(e).context("malformed packet from the broker")),
        }
    }

    /// Waits for a packet of type `T`, skipping others.
    pub async fn expect<T: Expected>(&mut self, within: Duration) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(packet) = self.next_packet()? {
                if let Some(wanted) = T::from_packet(packet) {
                    return Ok(wanted);
                }
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => bail!("no {} within {within:?}", T::NAME),
                Ok(Ok(0)) => bail!("connection closed while waiting for a {}", T::NAME),
                Ok(r) => {
                    r?;
                }
            }
        }
    }
}

/// Connects every login, `at_once` at a time (a device's first CONNECT costs the broker
/// one PBKDF2 check), with [`Client::connect_with`]'s `send_buffer`; clients come back
/// in the order of `logins`.
pub async fn connect_many(
    addr: SocketAddr,
    logins: Vec<Login>,
    at_once: usize,
    send_buffer: Option<u32>,
) -> anyhow::Result<Vec<Client>> {
    let gate = std::sync::Arc::new(Semaphore::new(at_once.max(1)));
    let mut tasks = JoinSet::new();
    for (i, login) in logins.into_iter().enumerate() {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            anyhow::Ok((i, Client::connect_with(addr, &login, send_buffer).await?))
        });
    }
    let mut clients = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        clients.push(joined??);
    }
    clients.sort_by_key(|(i, _)| *i);
    Ok(clients.into_iter().map(|(_, c)| c).collect())
}

/// Seals payloads into the SPEC §4 envelope for one device, with the broker's own
/// envelope code.
pub struct Sealer {
    key: [u8; KEY_LEN],
    generation: u8,
    /// A random prefix keeps this sequence apart from every other sealer of the key.
    nonces: NonceSource,
}

impl Sealer {
    pub fn new(key: &[u8], generation: u8) -> anyhow::Result<Sealer> {
        let key = <[u8; KEY_LEN]>::try_from(key)
            .map_err(|_| anyhow!("device key has {} bytes, not {KEY_LEN}", key.len()))?;
        Ok(Sealer {
            key,
            generation,
            nonces: NonceSource::new(),
        })
    }

    pub fn seal(&mut self, topic: &str, plaintext: &[u8]) -> Vec<u8> {
        envelope::seal(
            &self.key,
            self.generation,
            self.nonces.next(),
            topic,
            plaintext,
        )
    }
}
