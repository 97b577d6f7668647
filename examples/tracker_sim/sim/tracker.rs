//! One simulated tracker: it connects, logs in with its IMEI, sends AVL packets at its
//! pace with at most one awaiting its ack (as FMB/FMC trackers do), answers Codec 12
//! commands, and when the connection fails or an ack does not come, reconnects and
//! sends the unacknowledged packet again: a record counts as delivered only once acked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetmq_device_plugins::teltonika::{encode_login, encode_response, Imei};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::answers::{self, State};
use super::records::Records;
use super::stats::Stats;
use super::wire::{Inbound, ServerStream, WireError};

/// When a tracker sends its packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Logged in and silent: answers commands only.
    Idle,
    /// A packet every interval; a packet acked late is followed at once by the next.
    Every(Duration),
    /// The next packet as soon as the previous one is acked.
    Unpaced,
}

/// What every tracker shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub pace: Pace,
    pub records_per_packet: u8,
    /// How far apart the records of one packet were taken.
    pub record_spacing: Duration,
    /// How long an ack may take before the tracker reconnects and sends again.
    pub ack_timeout: Duration,
    /// The wait before a reconnect.
    pub backoff: Duration,
}

/// Why one connection ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("login refused")]
    Refused,
    #[error("no ack within {0:?}")]
    AckTimeout(Duration),
    #[error("server closed the connection")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// The packet awaiting its ack.
#[derive(Debug)]
struct InFlight {
    bytes: Vec<u8>,
    records: u32,
    /// When it was written on the current connection; `None`: not written yet.
    written: Option<Instant>,
}

/// One tracker and what it keeps across reconnects.
pub struct Tracker {
    imei: Imei,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    records: Records,
    in_flight: Option<InFlight>,
    next_due: Instant,
    started: Instant,
    acked: u64,
    stream: ServerStream,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Tracker {
    /// The `index`th tracker; its first packet goes at `first_due`.
    pub fn new(
        index: usize,
        imei: Imei,
        settings: Arc<Settings>,
        stats: Arc<Stats>,
        first_due: Instant,
    ) -> Tracker {
        Tracker {
            imei,
            settings,
            stats,
            records: Records::new(index, unix_ms()),
            in_flight: None,
            next_due: first_due,
            started: Instant::now(),
            acked: 0,
            stream: ServerStream::default(),
        }
    }

    /// Connects, and reconnects after every failure, until `cancel`. `logins` bounds
    /// how many trackers are between connect and login answer at once.
    pub async fn run(mut self, logins: Arc<Semaphore>, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let session = tokio::select! {
                () = cancel.cancelled() => return,
                s = self.connect(&logins) => s,
            };
            let ended = match session {
                Ok(socket) => self.session(socket, &cancel).await,
                Err(e) => Err(e),
            };
            match ended {
                Ok(()) => return,
                Err(SessionError::Refused) => Stats::bump(&self.stats.logins_refused, 1),
                Err(SessionError::AckTimeout(_)) => Stats::bump(&self.stats.ack_timeouts, 1),
                Err(e) => {
                    Stats::bump(&self.stats.errors, 1);
                    tracing::debug!(imei = %self.imei, error = %e, "tracker connection ended");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.settings.backoff) => {}
            }
        }
    }

    /// TCP, the IMEI, the server's one-byte answer.
    async fn connect(&mut self, logins: &Semaphore) -> Result<TcpStream, SessionError> {
        let _permit = logins.acquire().await.map_err(|_| SessionError::Closed)?;
        let mut socket = TcpStream::connect(self.settings.addr).await?;
        socket.set_nodelay(true)?;
        socket.write_all(&encode_login(&self.imei)).await?;
        let mut answer = [0u8; 1];
        let read = tokio::time::timeout(self.settings.ack_timeout, socket.read_exact(&mut answer));
        match read.await {
            Err(_) => Err(SessionError::AckTimeout(self.settings.ack_timeout)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(SessionError::Closed)
            }
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(_)) if answer[0] == 0x01 => Ok(socket),
            Ok(Ok(_)) => Err(SessionError::Refused),
        }
    }

    /// One logged-in connection; `Ok` when cancelled.
    async fn session(
        &mut self,
        mut socket: TcpStream,
        cancel: &CancellationToken,
    ) -> Result<(), SessionError> {
        let _online = Online::new(self.stats.clone());
        self.stream.clear();
        if let Some(p) = &mut self.in_flight {
            p.written = None;
        }
        loop {
            self.send_due(&mut socket).await?;
            let ack_deadline = self.in_flight.as_ref().and_then(|p| p.written);
            let ack_deadline = ack_deadline.map(|at| at + self.settings.ack_timeout);
            let send_at = self.send_at();
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                read = socket.read_buf(self.stream.buffer()) => {
                    if read? == 0 {
                        return Err(SessionError::Closed);
                    }
                    self.handle_input(&mut socket).await?;
                }
                () = sleep_until(ack_deadline) => {
                    return Err(SessionError::AckTimeout(self.settings.ack_timeout));
                }
                () = sleep_until(send_at) => {}
            }
        }
    }

    /// When the next packet is to be written: `None` while one is in flight, or idle.
    fn send_at(&self) -> Option<Instant> {
        if self.in_flight.as_ref().is_some_and(|p| p.written.is_some()) {
            return None;
        }
        match self.settings.pace {
            Pace::Idle => None,
            Pace::Unpaced => Some(Instant::now()),
            Pace::Every(_) => Some(self.next_due),
        }
    }

    /// Writes the packet in flight if it is not written yet (after a reconnect), or a
    /// new one if it is time.
    async fn send_due(&mut self, socket: &mut TcpStream) -> Result<(), SessionError> {
        if self.send_at().is_none_or(|at| at > Instant::now()) {
            return Ok(());
        }
        if self.in_flight.is_none() {
            let n = self.settings.records_per_packet;
            let spacing = self.settings.record_spacing.as_millis() as u64;
            let bytes = self.records.packet(n, unix_ms(), spacing);
            self.in_flight = Some(InFlight {
                bytes,
                records: u32::from(n.max(1)),
                written: None,
            });
            if let Pace::Every(every) = self.settings.pace {
                self.next_due += every;
            }
        }
        let Some(p) = &mut self.in_flight else {
            return Ok(());
        };
        socket.write_all(&p.bytes).await?;
        p.written = Some(Instant::now());
        Stats::bump(&self.stats.packets_sent, 1);
        Stats::bump(&self.stats.records_sent, u64::from(p.records));
        Ok(())
    }

    /// Every whole item read so far: acks close the packet in flight, commands are
    /// answered.
    async fn handle_input(&mut self, socket: &mut TcpStream) -> Result<(), SessionError> {
        loop {
            let item = match self.stream.next_item() {
                Ok(Some(item)) => item,
                Ok(None) => return Ok(()),
                Err(e) if e.recoverable() => {
                    Stats::bump(&self.stats.errors, 1);
                    tracing::warn!(imei = %self.imei, error = %e, "frame from the server skipped");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match item {
                Inbound::Ack(count) => self.acked(count),
                Inbound::Command(text) => self.answer(socket, &text).await?,
            }
        }
    }

    fn acked(&mut self, count: u32) {
        let Some(p) = self.in_flight.take_if(|p| p.written.is_some()) else {
            Stats::bump(&self.stats.acks_unexpected, 1);
            return;
        };
        if count != p.records {
            // Not what was sent: a tracker sends the packet again.
            Stats::bump(&self.stats.acks_mismatched, 1);
            self.in_flight = Some(InFlight { written: None, ..p });
            return;
        }
        if let Some(written) = p.written {
            self.stats.ack_latency.record(written.elapsed());
        }
        self.acked += u64::from(count);
        Stats::bump(&self.stats.packets_acked, 1);
        Stats::bump(&self.stats.records_acked, u64::from(count));
    }

    async fn answer(&mut self, socket: &mut TcpStream, command: &str) -> Result<(), SessionError> {
        let state = State {
            imei: self.imei.as_str(),
            uptime_s: self.started.elapsed().as_secs(),
            gps: self.records.position(unix_ms()),
            records_acked: self.acked,
        };
        let text = answers::answer(command, &state);
        tracing::debug!(imei = %self.imei, command, answer = %text, "command answered");
        // The answers are ASCII and far below Codec 12's text limit.
        let frame = encode_response(text.as_bytes()).map_err(std::io::Error::other)?;
        socket.write_all(&frame).await?;
        Stats::bump(&self.stats.commands_answered, 1);
        Ok(())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Counts a tracker as connected while it lives.
struct Online(Arc<Stats>);

impl Online {
    fn new(stats: Arc<Stats>) -> Self {
        stats
            .connected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Online(stats)
    }
}

impl Drop for Online {
    fn drop(&mut self) {
        self.0
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
