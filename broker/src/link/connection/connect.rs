//! CONNECT: read it within the connect timeout, authenticate, check the will, take over an
//! existing session, build the router link, and answer with the right CONNACK.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use fleetmq_storage::{now_ms, AclRule};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, LastWill,
    LastWillProperties, Login, Packet,
};
use tokio::sync::OwnedSemaphorePermit;

use crate::client::{ClientInfo, ClientKind, Transport};
use crate::link::codec::framing::{self, FrameError, Version};
pub(crate) use crate::link::connection::refusal::ConnectFailure;
use crate::link::connection::router_link::RouterLink;
use crate::link::net::transport::Stream;
use crate::link::security::acl::Principal;
use crate::link::security::auth::{Identity, Presented, Refusal};
use crate::link::security::backoff::Blocked;
use crate::link::session::live::LiveEnds;
use crate::link::Core;
use crate::stats::{DropCause, RefusalCause};

/// A decoded CONNECT.
pub(crate) struct ConnectRequest {
    pub(crate) version: Version,
    pub(crate) connect: Connect,
    pub(crate) props: Option<ConnectProperties>,
    pub(crate) will: Option<LastWill>,
    pub(crate) will_props: Option<LastWillProperties>,
    pub(crate) login: Option<Login>,
}

/// Reads the first packet, which must be a CONNECT.
pub(crate) async fn read_connect(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<ConnectRequest, ConnectFailure> {
    let frame = loop {
        match framing::peek(buf, max_packet) {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            Err(e) => return Err(malformed(e)),
        }
        match stream.read(buf).await {
            Ok(0) => return Err(closed("closed before CONNECT")),
            Ok(_) => {}
            Err(e) => return Err(closed(e.to_string())),
        }
    };
    if frame.packet_type() != 1 {
        return Err(malformed(format!(
            "first packet has type {}, not CONNECT",
            frame.packet_type()
        )));
    }
    let version = match framing::connect_version(buf, frame.header_len) {
        Ok(v) => v,
        Err(FrameError::UnsupportedProtocol(level)) => {
            return Err(refuse(
                Version::V4,
                ConnectReturnCode::RefusedProtocolVersion,
                RefusalCause::UnsupportedProtocol,
                format!("protocol level {level}"),
            ))
        }
        Err(e) => return Err(malformed(e)),
    };
    let bytes = buf.split_to(frame.len);
    match framing::decode(version, frame, bytes, max_packet) {
        Ok(Packet::Connect(connect, props, will, will_props, login)) => Ok(ConnectRequest {
            version,
            connect,
            props,
            will,
            will_props,
            login,
        }),
        Ok(_) => Err(malformed("not a CONNECT")),
        Err(e) => {
            let code = match version {
                Version::V5 => ConnectReturnCode::MalformedPacket,
                Version::V4 => return Err(malformed(e)),
            };
            let cause = RefusalCause::MalformedConnect;
            Err(refuse(version, code, cause, e.to_string()))
        }
    }
}

/// Everything a connection needs once its CONNECT is accepted.
pub(crate) struct Established {
    pub(crate) version: Version,
    pub(crate) principal: Principal,
    pub(crate) identity: Identity,
    pub(crate) client_id: String,
    pub(crate) router_key: String,
    pub(crate) conn_id: u64,
    pub(crate) keep_alive: u16,
    /// Whether the router drops the session state when this link ends.
    pub(crate) clean: bool,
    /// Boxed: most devices connect without one.
    pub(crate) will: Option<Box<crate::link::connection::will::Will>>,
    /// The client's CONNECT properties (v5): its limits for what we send it.
    /// Boxed: most clients send none, and few are MQTT 5.
    pub(crate) connect_props: Option<Box<ConnectProperties>>,
    pub(crate) peer: SocketAddr,
    pub(crate) transport: Transport,
    pub(crate) session_present: bool,
    /// Whether the session persists, and the stored one it resumes.
    pub(crate) session: crate::link::session::resume::SessionStart,
    /// Its way to and from the router (devices share links, `link::device_links`).
    pub(crate) link: crate::link::connection::router_link::RouterLink,
    /// Commands to write (device connections only).
    pub(crate) mailbox: std::sync::Arc<crate::link::session::live::Mailbox>,
    pub(crate) _permit: OwnedSemaphorePermit,
}

fn refuse(
    version: Version,
    code: ConnectReturnCode,
    cause: RefusalCause,
    why: impl Into<String>,
) -> ConnectFailure {
    ConnectFailure::refuse(version, code, cause, why)
}

fn malformed(why: impl ToString) -> ConnectFailure {
    ConnectFailure::close(RefusalCause::MalformedConnect, why.to_string())
}

fn closed(why: impl Into<String>) -> ConnectFailure {
    ConnectFailure::close(RefusalCause::ClosedBeforeConnect, why)
}

fn v4_or_v5(version: Version, v4: ConnectReturnCode, v5: ConnectReturnCode) -> ConnectReturnCode {
    if version == Version::V4 {
        v4
    } else {
        v5
    }
}

/// The router client id, which is also the session's key. Router client ids may not
/// contain `+ $ # /`, and a client id belongs to the identity that uses it: devices are
/// `d:{id}`, a service client's are `s:{name}:{client id}`, anonymous clients' are
/// `a:{client id}` (escaped). So an anonymous client, or another service client, that
/// connects with a service client's client id neither takes its connection over nor
/// resumes its stored session and queue (issue 18).
///
/// Sessions stored by earlier builds are `c:{client id}`: a service client whose client
/// id has one (parked or live) goes on using it, so nothing queued for it is lost in an
/// upgrade; anonymous clients never get one.
fn router_key(core: &Core, identity: &Identity, client_id: &str) -> String {
    match identity {
        Identity::Device(d) => crate::link::session::live::device_key(d.id.as_str()),
        Identity::Service(s) => {
            let legacy = format!("c:{}", escape(client_id, false));
            let kept = core.session_store.is_parked(&legacy) || core.sessions.is_live(&legacy);
            if kept {
                return legacy;
            }
            format!("s:{}:{}", escape(&s.name, true), escape(client_id, true))
        }
        Identity::Anonymous => format!("a:{}", escape(client_id, true)),
    }
}

/// `text` with `+ $ # / %` (and `:` when `colon`, which separates parts of a key) as
/// `%XX`.
fn escape(text: &str, colon: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '+' | '$' | '#' | '/' | '%' => out.push_str(&format!("%{:02X}", ch as u32)),
            ':' if colon => out.push_str("%3A"),
            ch => out.push(ch),
        }
    }
    out
}

fn assigned_client_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("fleetmq-{hex}")
}

fn principal_for(
    identity: &Identity,
    client_id: &str,
    anonymous_rules: &Arc<[AclRule]>,
) -> Principal {
    match identity {
        Identity::Device(d) => Principal::Device(d.id.clone()),
        Identity::Service(s) => Principal::Service {
            name: s.name.clone(),
            client_id: client_id.to_owned(),
            rules: s.rules.clone().into(),
        },
        Identity::Anonymous => Principal::Anonymous {
            client_id: client_id.to_owned(),
            rules: anonymous_rules.clone(),
        },
    }
}

fn refusal_code(version: Version, refusal: Refusal) -> ConnectReturnCode {
    match refusal {
        Refusal::Unavailable => v4_or_v5(
            version,
            ConnectReturnCode::ServiceUnavailable,
            ConnectReturnCode::ServerUnavailable,
        ),
        Refusal::Busy => v4_or_v5(
            version,
            ConnectReturnCode::ServiceUnavailable,
            ConnectReturnCode::ServerBusy,
        ),
        _ => ConnectReturnCode::NotAuthorized,
    }
}

/// Authenticates the CONNECT and registers the session with the router.
pub(crate) async fn establish(
    core: &Arc<Core>,
    mut req: ConnectRequest,
    peer: SocketAddr,
    transport: Transport,
    cert_cn: Option<&str>,
) -> Result<(Established, Packet), ConnectFailure> {
    core.stats.packet_in(1);
    let version = req.version;
    let admitted = admit(core, &mut req, peer.ip(), cert_cn).await?;
    let router_key = router_key(core, &admitted.identity, &admitted.client_id);

    // Setup per router client id is serialised, from the takeover to the new entry in
    // the live table.
    let slot = core.sessions.slot(&router_key);
    let _setup = slot.lock().await;
    core.sessions.take_over(&router_key).await;
    let session = crate::link::session::store::start(
        core,
        &router_key,
        version,
        &req.connect,
        req.props.as_ref(),
    )
    .await;
    let identity = &admitted.identity;
    let link = join_router(core, &router_key, identity, version).await?;
    let session_present = session.resumed.is_some();
    let username = (req.login.as_ref())
        .map(|l| l.username.clone())
        .filter(|u| !u.is_empty());
    let client_id = &admitted.client_id;
    let live = go_live(
        core,
        &router_key,
        identity,
        client_id,
        username,
        version,
        transport,
        peer,
    );
    let Admitted {
        client_id,
        assigned,
        identity,
        principal,
        keep_alive,
        server_keep_alive,
        will,
        permit,
    } = admitted;
    let ack = connack(core, version, assigned, server_keep_alive, session_present);
    let established = Established {
        version,
        principal,
        identity,
        client_id,
        router_key,
        conn_id: live.conn_id,
        keep_alive,
        // Router links are always clean: sessions are fleetmq's (`session::store`).
        clean: true,
        will: will.map(Box::new),
        connect_props: req.props.map(Box::new),
        peer,
        transport,
        session_present,
        session,
        link,
        mailbox: live.mailbox,
        _permit: permit,
    };
    Ok((established, ack))
}

/// A CONNECT accepted, before its session is set up.
struct Admitted {
    client_id: String,
    /// The client id the broker assigned (MQTT 5), if the client sent none.
    assigned: Option<String>,
    identity: Identity,
    principal: Principal,
    keep_alive: u16,
    server_keep_alive: Option<u16>,
    will: Option<crate::link::connection::will::Will>,
    permit: OwnedSemaphorePermit,
}

/// Who the client is and what it may do: client id, authentication, a slot of
/// `mqtt.max_connections`, Keep Alive and will. Takes the will off `req`.
async fn admit(
    core: &Core,
    req: &mut ConnectRequest,
    ip: IpAddr,
    cert_cn: Option<&str>,
) -> Result<Admitted, ConnectFailure> {
    let version = req.version;
    let (client_id, assigned) = client_id_of(req)?;
    let identity = authenticate(core, req, &client_id, ip, cert_cn).await?;
    // Only an authenticated client takes a slot: a flood of wrong passwords cannot make
    // the broker "busy" for the fleet.
    let permit = connection_permit(core, version)?;
    let principal = principal_for(&identity, &client_id, &core.anonymous_rules);
    let (keep_alive, server_keep_alive) =
        capped_keep_alive(core.config.max_keepalive, version, req.connect.keep_alive)?;
    let session_expiry = (req.props.as_ref())
        .and_then(|p| p.session_expiry_interval)
        .unwrap_or(0);
    let will = crate::link::connection::will::check(
        core,
        &principal,
        &identity,
        req.will.take(),
        version,
    )?
    .map(|w| crate::link::connection::will::Will::new(w, req.will_props.take(), session_expiry));
    Ok(Admitted {
        client_id,
        assigned,
        identity,
        principal,
        keep_alive,
        server_keep_alive,
        will,
        permit,
    })
}

/// The successful CONNACK, with the v5 properties that announce the broker's limits.
fn connack(
    core: &Core,
    version: Version,
    assigned: Option<String>,
    server_keep_alive: Option<u16>,
    session_present: bool,
) -> Packet {
    let mut props = connack_properties(core, version, assigned);
    if let Some(props) = props.as_mut() {
        props.server_keep_alive = server_keep_alive;
    }
    Packet::ConnAck(
        ConnAck {
            session_present,
            code: ConnectReturnCode::Success,
        },
        props,
    )
}

/// The client id to use, and the one assigned when the client sent none (to announce in
/// a v5 CONNACK).
fn client_id_of(req: &ConnectRequest) -> Result<(String, Option<String>), ConnectFailure> {
    let client_id = &req.connect.client_id;
    if !client_id.is_empty() {
        return Ok((client_id.clone(), None));
    }
    if req.version == Version::V4 && !req.connect.clean_session {
        return Err(refuse(
            req.version,
            ConnectReturnCode::ClientIdentifierNotValid,
            RefusalCause::InvalidClientId,
            "empty client id needs a clean session [MQTT-3.1.3-7]",
        ));
    }
    let assigned = assigned_client_id();
    Ok((assigned.clone(), Some(assigned)))
}

/// A slot of `mqtt.max_connections`, held for the connection's life.
fn connection_permit(
    core: &Core,
    version: Version,
) -> Result<OwnedSemaphorePermit, ConnectFailure> {
    core.permits.clone().try_acquire_owned().map_err(|_| {
        core.stats.dropped(DropCause::Limit);
        refuse(
            version,
            v4_or_v5(
                version,
                ConnectReturnCode::ServiceUnavailable,
                ConnectReturnCode::QuotaExceeded,
            ),
            RefusalCause::ConnectionLimit,
            "mqtt.max_connections reached",
        )
    })
}

/// Who the client is, from its username, password and certificate; unchecked and
/// refused while its identity or address is backed off (`mqtt.auth_backoff`), whose
/// failures and successes it reports.
async fn authenticate(
    core: &Core,
    req: &ConnectRequest,
    client_id: &str,
    ip: IpAddr,
    cert_cn: Option<&str>,
) -> Result<Identity, ConnectFailure> {
    let version = req.version;
    let username = (req.login.as_ref())
        .map(|l| l.username.as_str())
        .filter(|u| !u.is_empty());
    // What a guesser repeats: the username, or the client id without one.
    let guessed = Some(username.unwrap_or(client_id));
    if let Some(blocked) = core.backoff.check(guessed, ip, Instant::now()) {
        let why = match blocked {
            Blocked::Identity => "this identity failed too often from this address",
            Blocked::Address => "this address failed too often",
        };
        let code = ConnectReturnCode::NotAuthorized;
        let failure = refuse(version, code, RefusalCause::Backoff, why);
        return Err(failure.telling("NotAuthorized"));
    }
    let presented = Presented {
        client_id,
        username,
        password: req.login.as_ref().map(|l| l.password.as_bytes()),
        cert_cn,
        peer: ip,
    };
    match core.auth.authenticate(presented).await {
        Ok(identity) => {
            core.backoff.succeeded(guessed, ip);
            Ok(identity)
        }
        Err(r) => {
            let cause = r.cause();
            if cause.is_bad_credentials() {
                core.backoff.failed(guessed, ip, Instant::now());
            }
            let failure = refuse(version, refusal_code(version, r), cause, r.detail());
            Err(failure.telling(r.told()))
        }
    }
}

/// Builds the connection's router link; a device gets none (`link::device_links`).
async fn join_router(
    core: &Core,
    router_key: &str,
    identity: &Identity,
    version: Version,
) -> Result<RouterLink, ConnectFailure> {
    if matches!(identity, Identity::Device(_)) {
        return Ok(RouterLink::Device);
    }
    let built = core.links.build(router_key, true).await;
    let (link_tx, link_rx, _connack) = built.map_err(|e| {
        refuse(
            version,
            v4_or_v5(
                version,
                ConnectReturnCode::ServiceUnavailable,
                ConnectReturnCode::ServerUnavailable,
            ),
            RefusalCause::ServerUnavailable,
            format!("router link: {e}"),
        )
    })?;
    Ok(RouterLink::Own(Box::new(
        crate::link::connection::router_link::OwnLink {
            tx: link_tx,
            rx: link_rx,
        },
    )))
}

/// Enters the connection in the live table (listing, kick, takeover, commands) and
/// counts it.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one live-table entry"
)]
fn go_live(
    core: &Core,
    router_key: &str,
    identity: &Identity,
    client_id: &str,
    username: Option<String>,
    version: Version,
    transport: Transport,
    peer: SocketAddr,
) -> LiveEnds {
    let kind = match identity {
        Identity::Device(_) => ClientKind::Device,
        Identity::Service(_) => ClientKind::Service,
        Identity::Anonymous => ClientKind::Anonymous,
    };
    let info = ClientInfo {
        client_id: client_id.to_owned(),
        kind,
        username,
        protocol: version.label(),
        transport,
        peer,
        connected_at_ms: now_ms(),
    };
    let service = match identity {
        Identity::Service(s) => Some(s.name.clone()),
        _ => None,
    };
    crate::link::session::live::enter_live(core, router_key, info, service)
}

/// `mqtt.max_keepalive_s` (0: no cap), as Mosquitto's `max_keepalive`: the Keep Alive
/// the connection is held to, and the Server Keep Alive to announce. An MQTT 5 client
/// asking for more than the cap, or for none (0), is told to use the cap (§3.2.2.3.14,
/// [MQTT-3.2.2-21]); a 3.1.1 client cannot be told, so it is refused with CONNACK 2
/// ("identifier rejected", what Mosquitto answers) rather than timed out unawares.
fn capped_keep_alive(
    cap: u16,
    version: Version,
    asked: u16,
) -> Result<(u16, Option<u16>), ConnectFailure> {
    if cap == 0 || (asked != 0 && asked <= cap) {
        return Ok((asked, None));
    }
    match version {
        Version::V5 => Ok((cap, Some(cap))),
        Version::V4 => Err(refuse(
            version,
            ConnectReturnCode::ClientIdentifierNotValid,
            RefusalCause::KeepAliveTooLong,
            format!("keep alive {asked} s is not within mqtt.max_keepalive_s = {cap}"),
        )),
    }
}

fn connack_properties(
    core: &Core,
    version: Version,
    assigned: Option<String>,
) -> Option<ConnAckProperties> {
    if version == Version::V4 {
        return None;
    }
    Some(ConnAckProperties {
        assigned_client_identifier: assigned,
        max_packet_size: u32::try_from(core.max_packet()).ok(),
        receive_max: Some(core.config.max_inflight),
        retain_available: Some(1),
        shared_subscription_available: Some(1),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        topic_alias_max: Some(core.config.topic_alias_max),
        ..ConnAckProperties::default()
    })
}
