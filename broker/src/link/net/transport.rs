//! One byte stream per client, whatever listener it came in on: TCP, TLS, or binary
//! WebSocket frames (over TCP or over TLS). Reads are cancel-safe (used inside `select!`); writes are not and are
//! only awaited outside of `select!`.

use std::io;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// What [`Stream::read_or_writable`] waited for.
pub(crate) enum Io {
    /// As [`Stream::read`].
    Read(io::Result<usize>),
    /// The socket takes bytes again.
    Writable,
}

/// A connected client's stream.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WebSocketStream<TcpStream>>),
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
}

impl Stream {
    /// Appends what arrives to `buf`; `Ok(0)` means the peer closed the stream.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if self.tcp().is_some() {
            return match self.tcp_ready(buf, true, false).await {
                Io::Read(read) => read,
                Io::Writable => unreachable!("write readiness was not asked for"),
            };
        }
        reserve(buf);
        match self {
            Stream::Tcp(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
            Stream::Ws(ws) => {
                let read = Box::pin(ws_read(ws, buf));
                read.await
            }
            Stream::Wss(ws) => {
                let read = Box::pin(ws_read(ws, buf));
                read.await
            }
        }
    }

    /// Waits until the client sent something (appended to `buf`, as [`Stream::read`]) or,
    /// with `write`, until a plain TCP socket takes more bytes (only plain TCP writes
    /// without waiting, `Connection::flush`). Cancel-safe.
    pub(crate) async fn read_or_writable(
        &mut self,
        buf: &mut BytesMut,
        read: bool,
        write: bool,
    ) -> Io {
        if self.tcp().is_none() {
            return Io::Read(self.read(buf).await);
        }
        self.tcp_ready(buf, read, write).await
    }

    /// [`Stream::read_or_writable`] on a plain TCP socket. Waits for data before taking
    /// room for it, so an idle connection holds no read buffer (cancel-safe: `ready` is,
    /// and the read does not wait).
    async fn tcp_ready(&mut self, buf: &mut BytesMut, read: bool, write: bool) -> Io {
        let interest = match (read, write) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (true, false) => Interest::READABLE,
            (false, true) => Interest::WRITABLE,
            (false, false) => return std::future::pending().await,
        };
        loop {
            let ready = match self.tcp() {
                Some(s) => s.ready(interest).await,
                None => return Io::Read(Err(io::ErrorKind::Unsupported.into())),
            };
            let ready = match ready {
                Ok(ready) => ready,
                Err(e) => return Io::Read(Err(e)),
            };
            if write && ready.is_writable() {
                return Io::Writable;
            }
            if read {
                match self.try_read_tcp(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    read => return Io::Read(read),
                }
            }
        }
    }

    /// Writes what a plain TCP socket takes of `data` now: `WouldBlock` when it takes
    /// nothing (its write readiness is cleared then, for [`Stream::read_or_writable`]).
    pub(crate) fn try_write_tcp(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(data),
            _ => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// The socket of a plain TCP stream, whose readiness can be awaited without
    /// reading (a TLS or WebSocket stream may hold decoded bytes of its own).
    pub(crate) fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            _ => None,
        }
    }

    /// Appends what a plain TCP socket holds to `buf` without waiting: `WouldBlock`
    /// when it held nothing (readiness is cleared only then, after a read that drained
    /// the socket; the room taken for nothing goes before waiting again).
    pub(crate) fn try_read_tcp(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let Stream::Tcp(s) = self else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        reserve(buf);
        let read = s.try_read_buf(buf);
        if buf.is_empty() {
            *buf = BytesMut::new();
        }
        read
    }

    /// Writes the whole buffer: one write (one WebSocket message) per call.
    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(data).await,
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Stream::Ws(ws) => ws_write(ws, data).await,
            Stream::Wss(ws) => ws_write(ws, data).await,
        }
    }

    /// Closes the stream, ignoring errors: the peer may already be gone.
    pub(crate) async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Ws(ws) => ws.close().await.map_err(io::Error::other),
            Stream::Wss(ws) => ws.close().await.map_err(io::Error::other),
        };
    }
}

/// One binary WebSocket message appended to `buf` (`Ok(0)`: the peer closed).
async fn ws_read<S>(ws: &mut WebSocketStream<S>, buf: &mut BytesMut) -> io::Result<usize>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            None => return Ok(0),
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(Message::Binary(data))) => {
                if data.is_empty() {
                    continue;
                }
                buf.extend_from_slice(&data);
                return Ok(data.len());
            }
            Some(Ok(Message::Close(_))) => return Ok(0),
            // Pings are answered by tungstenite on the next write or flush.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(_))) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "MQTT over WebSocket must use binary frames",
                ))
            }
        }
    }
}

/// `data` as one binary WebSocket message.
async fn ws_write<S>(ws: &mut WebSocketStream<S>, data: &[u8]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::Binary(bytes::Bytes::copy_from_slice(data)))
        .await
        .map_err(io::Error::other)
}

/// At least 4 KiB free to read into (8 KiB taken at a time).
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
}
