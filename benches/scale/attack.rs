//! `--attack`: a flood of CONNECTs with wrong credentials during the reconnect storm
//! (issue 15, "the fleet stays online under a flood").
//!
//! `in_flight` workers, each bound to one of [`SOURCES`] source addresses (Linux routes
//! all of 127/8 to loopback), open CONNECTs back to back: a third with a wrong token for
//! an existing device id, a third for an unknown id, a third for a service-client-like
//! name (the service client's username with a wrong password, which costs the broker a
//! PBKDF2 check unless its gate refuses it). Each connection is dropped as soon as its
//! CONNACK (or EOF) arrives; the CONNACK codes are counted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

use crate::broker::{Device, SERVICE_NAME};
use crate::mqtt::Client;

/// Source addresses the attacker connects from (the fleet uses 127.0.0.1).
pub const SOURCES: [Ipv4Addr; 4] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
];

/// What the flood did, counted by its workers.
#[derive(Default)]
pub struct Counts {
    pub sent: AtomicU64,
    pub not_authorized: AtomicU64,
    pub bad_credentials: AtomicU64,
    pub unavailable: AtomicU64,
    pub other_code: AtomicU64,
    pub accepted: AtomicU64,
    /// Closed without a CONNACK, or no CONNACK within 10 s.
    pub no_connack: AtomicU64,
    /// TCP connect or write failed.
    pub failed: AtomicU64,
}

/// A running flood; [`Flood::stop`] ends it.
pub struct Flood {
    stop: Arc<AtomicBool>,
    workers: JoinSet<()>,
    pub counts: Arc<Counts>,
}

impl Flood {
    pub fn start(addr: SocketAddr, devices: Arc<Vec<Device>>, in_flight: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut workers = JoinSet::new();
        for w in 0..in_flight {
            let source = IpAddr::V4(SOURCES[w % SOURCES.len()]);
            let (stop, counts, devices) = (stop.clone(), counts.clone(), devices.clone());
            workers.spawn(async move {
                let mut i = w;
                while !stop.load(Relaxed) {
                    let connect = wrong_connect(&devices, i);
                    counts.sent.fetch_add(1, Relaxed);
                    match attempt(addr, source, &connect).await {
                        Ok(Some(code)) => count_code(&counts, code),
                        Ok(None) => counts.no_connack.fetch_add(1, Relaxed),
                        Err(_) => {
                            counts.failed.fetch_add(1, Relaxed);
                            // Out of ports or descriptors: do not spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            0
                        }
                    };
                    i += in_flight;
                }
            });
        }
        Flood {
            stop,
            workers,
            counts,
        }
    }

    /// Stops the workers and waits until every attacker socket is closed.
    pub async fn stop(mut self) -> Arc<Counts> {
        self.stop.store(true, Relaxed);
        while self.workers.join_next().await.is_some() {}
        self.counts
    }
}

fn count_code(counts: &Counts, code: ConnectReturnCode) -> u64 {
    let counter = match code {
        ConnectReturnCode::NotAuthorized => &counts.not_authorized,
        ConnectReturnCode::BadUserNamePassword => &counts.bad_credentials,
        ConnectReturnCode::ServiceUnavailable => &counts.unavailable,
        ConnectReturnCode::Success => &counts.accepted,
        _ => &counts.other_code,
    };
    counter.fetch_add(1, Relaxed)
}

/// The `i`th wrong CONNECT: a wrong token for an existing device, an unknown id, or a
/// wrong service-client password.
fn wrong_connect(devices: &[Device], i: usize) -> Connect {
    let (client_id, user) = match i % 3 {
        0 => {
            let id = devices[i / 3 % devices.len()].id.clone();
            (id.clone(), id)
        }
        1 => {
            let id = format!("attacker-{i}");
            (id.clone(), id)
        }
        _ => (format!("attacker-service-{i}"), SERVICE_NAME.to_owned()),
    };
    let mut connect = Connect::new(client_id);
    connect.keep_alive = 60;
    connect.set_login(user, format!("wrong-password-{i}"));
    connect
}

/// One CONNECT from `source`: the CONNACK's code, `None` if the broker closed the
/// connection or did not answer within 10 s. The socket is closed on return.
async fn attempt(
    addr: SocketAddr,
    source: IpAddr,
    connect: &Connect,
) -> anyhow::Result<Option<ConnectReturnCode>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut client = Client {
        stream,
        buf: BytesMut::new(),
        chunk: 64,
    };
    let mut out = BytesMut::new();
    connect.write(&mut out)?;
    client.stream.write_all(&out).await?;
    Ok(client
        .expect::<ConnAck>(Duration::from_secs(10))
        .await
        .ok()
        .map(|c| c.code))
}

/// Open descriptors of a process (`/proc/PID/fd`).
pub fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}
