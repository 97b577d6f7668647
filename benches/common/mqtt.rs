//! A minimal MQTT 3.1.1 client for load generation, shared by the `load` and `fleet`
//! benchmarks (each includes this file with `#[path]` and uses part of it): packets are
//! encoded by hand (a few bytes each) and written over a `TcpStream` with TCP_NODELAY,
//! so the generator, which shares the machine with the broker, spends its CPU on
//! syscalls rather than on a client library's bookkeeping.
#![allow(dead_code, reason = "shared by two benchmarks, each uses part of it")]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use fleetmq_broker::envelope::{self, NonceSource, KEY_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// MQTT packet types (upper nibble of byte 1).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBACK: u8 = 9;

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
}

fn put_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT, clean session unless the login asks for a persistent one, no will.
pub fn connect(login: &Login, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    put_str(&mut body, b"MQTT");
    body.push(4);
    let mut flags = if login.persistent { 0x00 } else { 0x02 };
    if login.credentials.is_some() {
        flags |= 0xc0;
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut body, login.client_id.as_bytes());
    if let Some((user, pass)) = &login.credentials {
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, pass.as_bytes());
    }
    let mut out = vec![0x10];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

pub fn subscribe(pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    put_str(&mut body, filter.as_bytes());
    body.push(qos);
    let mut out = vec![0x82];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Appends one PUBLISH (QoS 0 ignores `pkid`).
pub fn publish_into(out: &mut Vec<u8>, topic: &str, qos: u8, pkid: u16, payload: &[u8]) {
    let id_len = if qos > 0 { 2 } else { 0 };
    out.push(0x30 | (qos << 1));
    put_len(out, 2 + topic.len() + id_len + payload.len());
    put_str(out, topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

pub fn puback_into(out: &mut Vec<u8>, pkid: u16) {
    out.extend_from_slice(&[0x40, 0x02]);
    out.extend_from_slice(&pkid.to_be_bytes());
}

pub const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// One decoded frame: its type/flags byte and its body (after the remaining length).
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub byte1: u8,
    pub body: &'a [u8],
}

impl Frame<'_> {
    pub fn kind(&self) -> u8 {
        self.byte1 >> 4
    }

    /// QoS, packet id and payload of a PUBLISH.
    pub fn publish(&self) -> Option<(u8, u16, &[u8])> {
        let qos = (self.byte1 >> 1) & 3;
        let topic_len = usize::from(u16::from_be_bytes([
            *self.body.first()?,
            *self.body.get(1)?,
        ]));
        let mut at = 2 + topic_len;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16::from_be_bytes([*self.body.get(at)?, *self.body.get(at + 1)?]);
            at += 2;
        }
        Some((qos, pkid, self.body.get(at..)?))
    }
}

/// Splits the first complete frame off `buf`: `(frame, bytes consumed)`.
pub fn next_frame(buf: &[u8]) -> Option<(Frame<'_>, usize)> {
    let byte1 = *buf.first()?;
    let mut len = 0usize;
    let mut pos = 1;
    loop {
        let b = *buf.get(pos)?;
        len |= usize::from(b & 0x7f) << (7 * (pos - 1));
        pos += 1;
        if b & 0x80 == 0 || pos > 4 {
            break;
        }
    }
    let body = buf.get(pos..pos + len)?;
    Some((Frame { byte1, body }, pos + len))
}

/// A connected client: its socket and an input buffer of not yet parsed bytes.
pub struct Client {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    pub start: usize,
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
        let stream = TcpStream::connect(addr).await.context("tcp connect")?;
        Client::handshake(stream, login, keep_alive, 256).await
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
        Client::handshake(stream, login, 0, 16 * 1024).await
    }

    async fn handshake(
        stream: TcpStream,
        login: &Login,
        keep_alive: u16,
        chunk: usize,
    ) -> anyhow::Result<Client> {
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            buf: Vec::new(),
            start: 0,
            chunk,
        };
        client.stream.write_all(&connect(login, keep_alive)).await?;
        let code = client
            .expect(CONNACK, Duration::from_secs(30))
            .await?
            .1
            .get(1)
            .copied()
            .unwrap_or(0xff);
        if code != 0 {
            bail!("CONNACK return code {code} for {}", login.client_id);
        }
        Ok(client)
    }

    /// Subscribes with one filter and waits for a granting SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> anyhow::Result<()> {
        self.stream.write_all(&subscribe(1, filter, qos)).await?;
        let (_, body) = self.expect(SUBACK, Duration::from_secs(5)).await?;
        match body.get(2) {
            Some(&granted) if granted < 0x80 => Ok(()),
            other => bail!("SUBSCRIBE {filter} refused: {other:?}"),
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` on EOF.
    pub async fn fill(&mut self) -> anyhow::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.chunk / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
            self.buf.reserve(self.chunk);
        }
        Ok(self.stream.read_buf(&mut self.buf).await?)
    }

    /// Calls `f` on every complete frame read so far.
    pub fn drain_frames(&mut self, mut f: impl FnMut(Frame<'_>)) {
        while let Some((frame, used)) = next_frame(&self.buf[self.start..]) {
            f(frame);
            self.start += used;
        }
    }

    /// Waits for a packet of type `kind` (skipping others): its byte 1 and body.
    pub async fn expect(&mut self, kind: u8, within: Duration) -> anyhow::Result<(u8, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some((frame, used)) = next_frame(&self.buf[self.start..]) {
                self.start += used;
                if frame.kind() == kind {
                    return Ok((frame.byte1, frame.body.to_vec()));
                }
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => bail!("no packet of type {kind} within {within:?}"),
                Ok(Ok(0)) => bail!("connection closed while waiting for packet type {kind}"),
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
