//! A connection attempt that ends without a session: why ([`ConnectFailure`], with its
//! [`RefusalCause`]), and its end: counted by cause, logged once with who the client
//! said it was (never its password), kept in the recent refusals, answered with the
//! CONNACK of before if it gets one, and closed.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use fleetmq_storage::now_ms;
use rumqttd::protocol::{ConnAck, ConnectReturnCode, Packet};

use crate::client::{RefusedConnect, Transport};
use crate::link::codec::framing::{self, Version};
use crate::link::net::transport::Stream;
use crate::link::security::refusals::Recorded;
use crate::link::Core;
use crate::stats::RefusalCause;

/// Why no session was established.
#[derive(Debug)]
pub(crate) struct ConnectFailure {
    pub(crate) cause: RefusalCause,
    /// What happened, for the log; never a secret.
    pub(crate) detail: String,
    /// The CONNACK to answer with and its v5 reason string; `None`: just close
    /// (timeout, garbage, I/O error).
    pub(crate) answer: Option<(Version, ConnectReturnCode, String)>,
}

impl ConnectFailure {
    /// Close without a CONNACK.
    pub(crate) fn close(cause: RefusalCause, detail: impl Into<String>) -> ConnectFailure {
        ConnectFailure {
            cause,
            detail: detail.into(),
            answer: None,
        }
    }

    /// Answer with `code`; a v5 client reads `detail` as the reason string.
    pub(crate) fn refuse(
        version: Version,
        code: ConnectReturnCode,
        cause: RefusalCause,
        detail: impl Into<String>,
    ) -> ConnectFailure {
        let detail = detail.into();
        ConnectFailure {
            cause,
            answer: Some((version, code, detail.clone())),
            detail,
        }
    }

    /// The v5 reason string the client reads instead of the detail (which would tell a
    /// password guesser which guesses are worth going on with).
    pub(crate) fn telling(mut self, reason: &str) -> ConnectFailure {
        if let Some((_, _, told)) = self.answer.as_mut() {
            *told = reason.to_owned();
        }
        self
    }
}

/// Who the client said it was, as far as it got.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub(crate) peer: SocketAddr,
    pub(crate) transport: Transport,
    /// `None` until a CONNECT was read; an empty client id is `None` too.
    pub(crate) client_id: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) version: Option<Version>,
}

impl Attempt {
    pub(crate) fn new(peer: SocketAddr, transport: Transport) -> Attempt {
        Attempt {
            peer,
            transport,
            client_id: None,
            username: None,
            version: None,
        }
    }
}

/// Counts, logs and keeps a failed attempt; writes its CONNACK if it gets one; closes.
pub(crate) async fn refuse(
    core: &Core,
    stream: Option<Stream>,
    attempt: Attempt,
    failure: ConnectFailure,
) {
    record(core, &attempt, &failure);
    let Some(mut stream) = stream else { return };
    if let Some((version, code, reason)) = failure.answer {
        let mut out = BytesMut::new();
        // v5 clients are told why (3.1.1 has no room for it).
        let props = rumqttd::protocol::ConnAckProperties {
            reason_string: Some(reason),
            ..Default::default()
        };
        let ack = Packet::ConnAck(
            ConnAck {
                session_present: false,
                code,
            },
            Some(props),
        );
        let packet = if version == Version::V4 {
            crate::link::strip_properties(ack)
        } else {
            ack
        };
        if framing::encode(version, packet, &mut out).is_ok() {
            let _ = stream.write_all(&out).await;
        }
    }
    stream.shutdown().await;
}

/// Counts it by cause, keeps it in the recent refusals and logs it once.
pub(crate) fn record(core: &Core, attempt: &Attempt, failure: &ConnectFailure) {
    let cause = failure.cause;
    core.stats.refused(cause);
    let entry = RefusedConnect {
        at_ms: now_ms(),
        first_at_ms: 0,
        peer: attempt.peer,
        client_id: attempt.client_id.clone(),
        username: attempt.username.clone(),
        protocol: attempt.version.map(Version::label),
        transport: attempt.transport,
        cause,
        count: 1,
    };
    let kept = core.refusals.record(entry, Instant::now());
    log(attempt, failure, kept);
}

/// One line per refusal: at info, except where a flood or a prober would fill the log
/// (a backed-off identity, a socket closed before CONNECT, past the rate of new ring
/// entries), which are at debug and still counted; our own fault at error.
fn log(attempt: &Attempt, failure: &ConnectFailure, kept: Recorded) {
    let peer = attempt.peer;
    let client_id = attempt.client_id.as_deref().unwrap_or("");
    let username = attempt.username.as_deref().unwrap_or("");
    let protocol = attempt.version.map_or("", Version::label);
    let transport = transport_name(attempt.transport);
    let cause = failure.cause.name();
    let detail = failure.detail.as_str();
    let code = failure.answer.as_ref().map(|(_, code, _)| *code);
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                %peer, client_id, username, protocol, transport, cause, detail, ?code,
                "CONNECT refused"
            )
        };
    }
    let quiet = matches!(
        failure.cause,
        RefusalCause::Backoff | RefusalCause::ClosedBeforeConnect | RefusalCause::AuthBusy
    ) || kept == Recorded::Suppressed;
    if failure.cause == RefusalCause::ServerUnavailable {
        line!(error);
    } else if quiet {
        line!(debug);
    } else {
        line!(info);
    }
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "tcp",
        Transport::Ws => "ws",
        Transport::Tls => "tls",
        Transport::Wss => "wss",
    }
}
