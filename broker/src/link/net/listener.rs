//! Accept loops for TCP (1883), WebSocket (9001, paths `/mqtt` and `/`, subprotocol
//! `mqtt`), TLS (8883), and the `[[mqtt.listeners]]` beside them (any of those kinds, and
//! WebSocket over TLS), each TLS one with its own certificate and client-CA policy. Every
//! listener shares one accounting: `mqtt.max_pending_connects` for sockets not yet
//! through CONNECT and authentication (a listener accepts only with a slot free, so
//! sockets that never send CONNECT cannot take every descriptor; the kernel's backlog
//! holds the rest), one connect timeout from accept to CONNECT, `mqtt.max_connections`
//! for authenticated clients, and the counters. No per-accept sleep: the loop takes
//! connections as fast as the kernel hands them over; each connection runs in its own
//! task.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;

use crate::client::Transport;
use crate::link::connection::connect::{self, ConnectFailure};
use crate::link::connection::refusal::{self, Attempt};
use crate::link::connection::Connection;
use crate::link::net::transport::Stream;
use crate::link::settings::{BrokerConfig, ListenerSpec};
use crate::link::Core;
use crate::stats::RefusalCause;

/// The broker's bound MQTT listeners. Bind first, then start: tests bind port 0.
pub struct Listeners {
    pub(crate) tcp: Option<TcpListener>,
    pub(crate) ws: Option<TcpListener>,
    pub(crate) tls: Option<(TcpListener, TlsAcceptor)>,
    /// `[[mqtt.listeners]]`, in the order written.
    extra: Vec<(TcpListener, Kind)>,
    /// `teltonika.listen` (SPEC §10).
    pub(crate) teltonika: Option<TcpListener>,
    /// The session-ticket keys of every TLS listener; given their secret at start.
    pub(crate) tickets: Vec<Arc<crate::link::net::tickets::TicketKeys>>,
}

impl Listeners {
    /// Binds every listener the config enables; TLS certificates are loaded here, each
    /// TLS listener's own.
    pub async fn bind(config: &BrokerConfig) -> io::Result<Listeners> {
        let bind = |addr: Option<SocketAddr>| async move {
            match addr {
                Some(addr) => TcpListener::bind(addr)
                    .await
                    .map(Some)
                    .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}"))),
                None => Ok(None),
            }
        };
        let mut tickets = Vec::new();
        let tls = match &config.tls {
            Some(tls) => {
                let acceptor = crate::link::net::tls::acceptor(tls, &mut tickets)?;
                bind(Some(tls.listen)).await?.map(|l| (l, acceptor))
            }
            None => None,
        };
        let mut extra = Vec::with_capacity(config.listeners.len());
        for spec in &config.listeners {
            let kind = match spec {
                ListenerSpec::Tcp(_) => Kind::Tcp,
                ListenerSpec::Ws(_) => Kind::Ws,
                ListenerSpec::Tls(tls) => {
                    Kind::Tls(crate::link::net::tls::acceptor(tls, &mut tickets)?)
                }
                ListenerSpec::Wss(tls) => {
                    Kind::Wss(crate::link::net::tls::acceptor(tls, &mut tickets)?)
                }
            };
            if let Some(listener) = bind(Some(spec.listen())).await? {
                extra.push((listener, kind));
            }
        }
        Ok(Listeners {
            tcp: bind(config.tcp).await?,
            ws: bind(config.ws).await?,
            tls,
            extra,
            teltonika: bind(config.teltonika.listen).await?,
            tickets,
        })
    }

    /// The Teltonika tracker listener's address, if it is on.
    pub fn teltonika_addr(&self) -> Option<SocketAddr> {
        self.teltonika.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws.as_ref().and_then(|l| l.local_addr().ok())
    }
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }
    /// The bound addresses of `[[mqtt.listeners]]`, in the order written (port 0 resolved).
    pub fn extra_addrs(&self) -> Vec<SocketAddr> {
        (self.extra.iter())
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }
}

/// Spawns one accept loop per listener.
pub(crate) fn spawn_listeners(core: &Arc<Core>, listeners: Listeners, tracker: &TaskTracker) {
    if let Some(l) = listeners.tcp {
        tracker.spawn(accept_loop(core.clone(), l, tracker.clone(), Kind::Tcp));
    }
    if let Some(l) = listeners.ws {
        tracker.spawn(accept_loop(core.clone(), l, tracker.clone(), Kind::Ws));
    }
    if let Some((l, acceptor)) = listeners.tls {
        tracker.spawn(accept_loop(
            core.clone(),
            l,
            tracker.clone(),
            Kind::Tls(acceptor),
        ));
    }
    for (l, kind) in listeners.extra {
        tracker.spawn(accept_loop(core.clone(), l, tracker.clone(), kind));
    }
    if let Some(l) = listeners.teltonika {
        let tasks = tracker.clone();
        tracker.spawn(crate::link::teltonika::accept_loop(core.clone(), l, tasks));
    }
}

#[derive(Clone)]
enum Kind {
    Tcp,
    Ws,
    Tls(TlsAcceptor),
    Wss(TlsAcceptor),
}

async fn accept_loop(core: Arc<Core>, listener: TcpListener, tracker: TaskTracker, kind: Kind) {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, listener = kind_name(&kind), "MQTT listener up");
    while let Some((socket, peer, pending)) = next_socket(&core, &listener).await {
        let accepted = Accepted {
            socket,
            peer,
            pending,
            deadline: Instant::now() + core.config.connect_timeout,
        };
        tracker.spawn(handshake(core.clone(), accepted, kind.clone()));
    }
}

/// The next socket of `listener`, with TCP_NODELAY, and its slot of
/// `mqtt.max_pending_connects` (taken before accepting, so at the limit the kernel's
/// backlog waits); `None` at shutdown. Every listener, MQTT's and the trackers', accepts
/// through it.
pub(crate) async fn next_socket(
    core: &Core,
    listener: &TcpListener,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let pending = tokio::select! {
        _ = core.shutdown.cancelled() => return None,
        pending = core.pending.clone().acquire_owned() => pending.ok()?,
    };
    loop {
        let accepted = tokio::select! {
            _ = core.shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                // Without TCP_NODELAY a QoS 1 round trip waits ~40 ms on delayed ACKs.
                let _ = socket.set_nodelay(true);
                return Some((socket, peer, pending));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off a little instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Tcp => "tcp",
        Kind::Ws => "ws",
        Kind::Tls(_) => "tls",
        Kind::Wss(_) => "wss",
    }
}

/// A socket taken off a listener, not yet through CONNECT.
struct Accepted {
    socket: TcpStream,
    peer: SocketAddr,
    /// Its slot of `mqtt.max_pending_connects`.
    pending: OwnedSemaphorePermit,
    /// When its CONNECT must have arrived (`mqtt.connect_timeout_s` after accept).
    deadline: Instant,
}

async fn handshake(core: Arc<Core>, accepted: Accepted, kind: Kind) {
    let Accepted {
        socket,
        peer,
        pending,
        deadline,
    } = accepted;
    let transport = match kind {
        Kind::Tcp => Transport::Tcp,
        Kind::Ws => Transport::Ws,
        Kind::Tls(_) => Transport::Tls,
        Kind::Wss(_) => Transport::Wss,
    };
    let upgraded = tokio::time::timeout_at(deadline, async {
        match kind {
            Kind::Tcp => Ok((Stream::Tcp(socket), Transport::Tcp, None)),
            Kind::Ws => ws_upgrade(socket, core.max_packet())
                .await
                .map(|ws| (Stream::Ws(Box::new(ws)), Transport::Ws, None)),
            Kind::Tls(acceptor) => {
                let tls = acceptor.accept(socket).await?;
                let cn = crate::link::net::tls::client_cn(&tls);
                Ok((Stream::Tls(Box::new(tls)), Transport::Tls, cn))
            }
            Kind::Wss(acceptor) => {
                let tls = acceptor.accept(socket).await?;
                let cn = crate::link::net::tls::client_cn(&tls);
                let ws = ws_upgrade(tls, core.max_packet()).await?;
                Ok((Stream::Wss(Box::new(ws)), Transport::Wss, cn))
            }
        }
    })
    .await;
    match upgraded {
        Ok(Ok((stream, transport, cn))) => {
            let client = Client {
                peer,
                transport,
                cert_cn: cn,
                pending,
                deadline,
            };
            serve(core, stream, client).await
        }
        Ok(Err(e)) => {
            let failure = ConnectFailure::close(RefusalCause::HandshakeFailed, e.to_string());
            let attempt = Attempt::new(peer, transport);
            refusal::refuse(&core, None, attempt, failure).await;
        }
        Err(_) => {
            let why = "handshake not done within mqtt.connect_timeout_s";
            let failure = ConnectFailure::close(RefusalCause::ConnectTimeout, why);
            let attempt = Attempt::new(peer, transport);
            refusal::refuse(&core, None, attempt, failure).await;
        }
    }
}

#[allow(
    clippy::result_large_err,
    reason = "the handshake callback's signature is tungstenite's"
)]
async fn ws_upgrade<S>(socket: S, max_packet: usize) -> io::Result<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let path = req.uri().path();
        if path != "/mqtt" && path != "/" {
            let mut err =
                ErrorResponse::new(Some(format!("no MQTT endpoint at {path}; use /mqtt")));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        let offered = req.headers().get_all("sec-websocket-protocol");
        let mqtt = offered
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == "mqtt");
        if mqtt {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(resp)
    };
    // Room above the MQTT limit, so that a moderately oversized packet reaches the MQTT
    // layer and gets its DISCONNECT 0x95 instead of a bare WebSocket close.
    let ws_limit = max_packet.saturating_mul(2);
    let config = WebSocketConfig::default()
        .max_message_size(Some(ws_limit))
        .max_frame_size(Some(ws_limit));
    tokio_tungstenite::accept_hdr_async_with_config(socket, check, Some(config))
        .await
        .map_err(io::Error::other)
}

/// A client past its transport handshake.
struct Client {
    peer: SocketAddr,
    transport: Transport,
    cert_cn: Option<String>,
    pending: OwnedSemaphorePermit,
    deadline: Instant,
}

/// Runs one client: CONNECT by the deadline, then the connection loop.
async fn serve(core: Arc<Core>, mut stream: Stream, client: Client) {
    let Client {
        peer,
        transport,
        cert_cn,
        pending,
        deadline,
    } = client;
    let mut buf = BytesMut::with_capacity(1024);
    let request = match tokio::time::timeout_at(
        deadline,
        connect::read_connect(&mut stream, &mut buf, core.max_packet()),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ConnectFailure::close(
            RefusalCause::ConnectTimeout,
            "no CONNECT within mqtt.connect_timeout_s",
        )),
    };
    let mut attempt = Attempt::new(peer, transport);
    let established = match request {
        Ok(req) => {
            attempt.client_id = Some(req.connect.client_id.clone()).filter(|c| !c.is_empty());
            attempt.username = (req.login.as_ref())
                .map(|l| l.username.clone())
                .filter(|u| !u.is_empty());
            attempt.version = Some(req.version);
            connect::establish(&core, req, peer, transport, cert_cn.as_deref()).await
        }
        Err(e) => Err(e),
    };
    // Answered (or about to be): the next socket may be accepted.
    drop(pending);
    match established {
        Ok((session, connack)) => {
            // A task of its own: the handshake's and CONNECT's states (~32 KB of future)
            // are not kept for the connection's life.
            let tracker = core.tracker.clone();
            let run = Box::new(Connection::new(core, stream, session, buf)).run(Box::new(connack));
            tracker.spawn(run);
        }
        Err(failure) => refusal::refuse(&core, Some(stream), attempt, failure).await,
    }
}
