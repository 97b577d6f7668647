//! One tracker's connection (SPEC §10): its IMEI login, answered `0x01` for a
//! provisioned `teltonika` device and `0x00` otherwise; then, until it goes, AVL data
//! packets in (stored, then acknowledged with their record count, then published as
//! JSON), Codec 12 commands out from its mailbox, Codec 12 answers to the command
//! engine. A packet with a wrong CRC, length or count gets no answer (the tracker sends
//! it again); three in a row, or bytes that lose the framing, close the connection.
//! The read buffer exists only while bytes are waiting, so an idle tracker holds none.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use fleetmq_device_plugins::teltonika::{
    self as tk, AvlPacket, Codec12Kind, Frame, FrameDecoder, FrameError, Imei, TeltonikaPlugin,
};
use fleetmq_storage::{now_ms, DeviceId, DeviceRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::client::{ClientInfo, ClientKind, Transport};
use crate::fleet::LinkEvent;
use crate::link::session::live::{
    count_connection, device_key, enter_live, CloseReason, Control, LiveEnds,
};
use crate::link::Core;
use crate::stats::{DropCause, Stats};

/// Bad packets in a row after which the tracker is disconnected.
const MAX_BAD_IN_ROW: u8 = 3;
/// What one read asks for.
const READ_CHUNK: usize = 4096;
/// The protocol a tracker shows in presence and the client list.
const PROTOCOL: &str = "teltonika";

/// Serves one accepted tracker socket; `pending` is its slot until the login is answered.
pub(super) async fn serve(
    core: Arc<Core>,
    mut socket: TcpStream,
    peer: SocketAddr,
    pending: OwnedSemaphorePermit,
) {
    let deadline = Instant::now() + core.config.connect_timeout;
    let (imei, rest) = match tokio::time::timeout_at(deadline, read_login(&mut socket)).await {
        Ok(Ok(login)) => login,
        Ok(Err(why)) => return refuse(&core, socket, peer, None, &why).await,
        Err(_) => {
            tracing::debug!(%peer, "tracker sent no login within mqtt.connect_timeout_s");
            return;
        }
    };
    let admitted = admit(&core, &imei).await;
    drop(pending);
    match admitted {
        Ok((device, permit)) => Tracker::run(core, socket, peer, device, rest, permit).await,
        Err(why) => refuse(&core, socket, peer, Some(&imei), why).await,
    }
}

/// Reads the IMEI login; what follows it in the same reads is kept.
async fn read_login(socket: &mut TcpStream) -> Result<(Imei, BytesMut), String> {
    let mut buf = BytesMut::with_capacity(64);
    loop {
        match tk::decode_login(&buf) {
            Ok(Some((imei, used))) => {
                buf.advance(used);
                return Ok((imei, buf));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("malformed login: {e}")),
        }
        match socket.read_buf(&mut buf).await {
            Ok(0) => return Err("closed before its login".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// The tracker's device, if it is a provisioned `teltonika` one, and its slot of
/// `mqtt.max_connections`.
async fn admit(
    core: &Core,
    imei: &Imei,
) -> Result<(DeviceRecord, OwnedSemaphorePermit), &'static str> {
    let id: DeviceId = imei.as_str().parse().map_err(|_| "IMEI is no device id")?;
    let found = core.store.call(move |s| s.get_device(&id)).await;
    let device = found
        .map_err(|_| "store unavailable")?
        .ok_or("no device with this IMEI")?;
    if device.plugin != TeltonikaPlugin::NAME {
        return Err("the device's plugin is not teltonika");
    }
    let permit = core.permits.clone().try_acquire_owned().map_err(|_| {
        core.stats.dropped(DropCause::Limit);
        "mqtt.max_connections reached"
    })?;
    Ok((device, permit))
}

async fn refuse(
    core: &Core,
    mut socket: TcpStream,
    peer: SocketAddr,
    imei: Option<&Imei>,
    why: &str,
) {
    Stats::add(&core.stats.trackers.logins_refused, 1);
    Stats::add(&core.stats.refused_total, 1);
    let imei = imei.map(Imei::as_str);
    tracing::info!(%peer, imei, why, "tracker login refused");
    let _ = socket.write_all(&tk::login_answer(false)).await;
    let _ = socket.shutdown().await;
}

/// Why a tracker's connection ended.
#[derive(Debug)]
enum End {
    Shutdown,
    Closed(CloseReason),
    PeerClosed,
    Idle,
    Io(std::io::Error),
    /// Bytes that cannot start a frame, or too many bad packets in a row.
    Protocol(String),
}

struct Tracker {
    core: Arc<Core>,
    socket: TcpStream,
    id: DeviceId,
    topic: String,
    conn_id: u64,
    /// Bytes read and not yet framed; unallocated while empty.
    buf: BytesMut,
    decoder: FrameDecoder,
    bad_in_row: u8,
    last_read: Instant,
}

impl Tracker {
    /// Takes over the device's previous connection, goes live, answers the login, then
    /// serves the tracker until it goes.
    async fn run(
        core: Arc<Core>,
        socket: TcpStream,
        peer: SocketAddr,
        device: DeviceRecord,
        rest: BytesMut,
        _permit: OwnedSemaphorePermit,
    ) {
        let key = device_key(device.id.as_str());
        let slot = core.sessions.slot(&key);
        let setup = slot.lock().await;
        core.sessions.take_over(&key).await;
        let info = ClientInfo {
            client_id: device.id.to_string(),
            kind: ClientKind::Device,
            username: None,
            protocol: PROTOCOL,
            transport: Transport::Tcp,
            peer,
            connected_at_ms: now_ms(),
        };
        let mut live = enter_live(&core, &key, info, None);
        drop(setup);
        let mut t = Tracker {
            topic: format!("device/{}/telemetry", device.id),
            id: device.id,
            conn_id: live.conn_id,
            core,
            socket,
            buf: rest,
            decoder: FrameDecoder::new(),
            bad_in_row: 0,
            last_read: Instant::now(),
        };
        let end = match t.socket.write_all(&tk::login_answer(true)).await {
            Ok(()) => {
                // Boxed, like the packet path: run once, not carried by the idle task.
                Box::pin(t.announce(peer)).await;
                t.serve(&mut live).await
            }
            Err(e) => End::Io(e),
        };
        Box::pin(t.leave(&key, live, end)).await;
    }

    async fn announce(&self, peer: SocketAddr) {
        let at_ms = now_ms();
        let connected = LinkEvent::Connected {
            id: self.id.clone(),
            generation: self.conn_id,
            peer,
            protocol: PROTOCOL,
            transport: Transport::Tcp,
            session_present: false,
            at_ms,
        };
        self.core.fleet_event(connected).await;
        // Commands can be written from now on.
        let ready = LinkEvent::Subscribed {
            id: self.id.clone(),
            generation: self.conn_id,
        };
        self.core.fleet_event(ready).await;
    }

    /// Until the connection ends: control messages, commands, and the tracker's bytes.
    async fn serve(&mut self, live: &mut LiveEnds) -> End {
        let idle = self.core.config.teltonika.idle_timeout;
        if let Err(end) = self.frames().await {
            return end;
        }
        loop {
            let step = tokio::select! {
                biased;
                () = self.core.shutdown.cancelled() => Err(End::Shutdown),
                control = live.mailbox.control() => match control {
                    Control::Close(reason) => Err(End::Closed(reason)),
                    _ => Ok(()),
                },
                () = live.mailbox.ready.notified() => self.commands(live).await,
                readable = tokio::time::timeout_at(self.last_read + idle, self.socket.readable()) => {
                    match readable {
                        Err(_) => Err(End::Idle),
                        Ok(Err(e)) => Err(End::Io(e)),
                        Ok(Ok(())) => self.read().await,
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Writes the commands waiting in the mailbox, oldest first.
    async fn commands(&mut self, live: &LiveEnds) -> Result<(), End> {
        for (command_id, frame) in live.mailbox.take() {
            self.socket.write_all(&frame).await.map_err(End::Io)?;
            Stats::add(&self.core.stats.trackers.commands_sent, 1);
            tracing::debug!(imei = %self.id, command_id, "Codec 12 command written");
        }
        Ok(())
    }

    /// Takes what the socket has, then handles every whole frame in it.
    async fn read(&mut self) -> Result<(), End> {
        self.buf.reserve(READ_CHUNK);
        match self.socket.try_read_buf(&mut self.buf) {
            Ok(0) => return Err(End::PeerClosed),
            Ok(n) => {
                self.last_read = Instant::now();
                Stats::add(&self.core.stats.bytes_received, n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(End::Io(e)),
        }
        self.frames().await
    }

    /// Handles every whole frame in the buffer; keeps a partial one for the next read.
    async fn frames(&mut self) -> Result<(), End> {
        loop {
            match self.decoder.decode(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.advance(used);
                    self.frame(frame).await?;
                }
                Ok(None) => break,
                Err(e) => self.bad_frame(e)?,
            }
        }
        if self.buf.is_empty() {
            // Nothing waiting: give the memory back while the tracker is idle.
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// The packet and response paths are boxed: their futures (the durable store, the
    /// publish, the command engine) are kilobytes, and inline they would be part of
    /// every tracker's task for as long as it lives, also while it is idle.
    async fn frame(&mut self, frame: Frame) -> Result<(), End> {
        match frame {
            Frame::Avl(packet) => Box::pin(self.avl(packet)).await,
            Frame::Codec12(msg) if msg.kind == Codec12Kind::Response => {
                self.bad_in_row = 0;
                Stats::add(&self.core.stats.trackers.responses, 1);
                let text = Bytes::from(msg.text);
                let fleet = &self.core.fleet;
                Box::pin(fleet.command_response(&self.id, &text, now_ms())).await;
                Ok(())
            }
            Frame::Codec12(_) => {
                tracing::debug!(imei = %self.id, "Codec 12 command from a tracker ignored");
                Ok(())
            }
        }
    }

    /// A bad frame is skipped and counted (no answer: the tracker sends it again); bytes
    /// that cannot be framed, or the third bad frame in a row, end the connection.
    fn bad_frame(&mut self, e: FrameError) -> Result<(), End> {
        Stats::add(&self.core.stats.trackers.bad_packets, 1);
        let Some(skip) = e.skip_len() else {
            return Err(End::Protocol(e.to_string()));
        };
        tracing::warn!(imei = %self.id, error = %e, "bad Teltonika packet not acknowledged");
        self.buf.advance(skip.min(self.buf.len()));
        self.bad_in_row += 1;
        if self.bad_in_row >= MAX_BAD_IN_ROW {
            return Err(End::Protocol(format!(
                "{MAX_BAD_IN_ROW} bad packets in a row"
            )));
        }
        Ok(())
    }

    /// Stores the records, acknowledges them, then publishes them for MQTT subscribers.
    async fn avl(&mut self, packet: AvlPacket) -> Result<(), End> {
        self.bad_in_row = 0;
        let at_ms = now_ms();
        let points: Vec<(Vec<u8>, u64)> = (packet.records.iter())
            .map(|r| (tk::telemetry_json(r), at_ms))
            .collect();
        let stored = self.core.fleet.telemetry_durable(&self.id, &points).await;
        if let Err(e) = stored {
            Stats::add(&self.core.stats.trackers.acks_withheld, 1);
            tracing::warn!(imei = %self.id, error = %e, records = points.len(), "records not stored, not acknowledged");
            return Ok(());
        }
        self.socket
            .write_all(&packet.ack())
            .await
            .map_err(End::Io)?;
        let trackers = &self.core.stats.trackers;
        Stats::add(&trackers.packets, 1);
        Stats::add(&trackers.records, points.len() as u64);
        for (json, _) in &points {
            if let Err(e) = self.core.publish_system_wait(&self.topic, json, 1).await {
                tracing::debug!(imei = %self.id, error = %e, "tracker point not routed");
            }
        }
        Ok(())
    }

    /// Leaves the live table and tells the fleet, unless a newer connection took over.
    async fn leave(mut self, key: &str, live: LiveEnds, end: End) {
        self.core.sessions.remove(key, self.conn_id);
        live.mailbox.set_closed();
        count_connection(&self.core.stats, ClientKind::Device, -1);
        match &end {
            End::Io(e) => tracing::info!(imei = %self.id, error = %e, "tracker connection failed"),
            End::Protocol(why) => tracing::warn!(imei = %self.id, why, "tracker disconnected"),
            other => tracing::info!(imei = %self.id, end = ?other, "tracker disconnected"),
        }
        let event = LinkEvent::Disconnected {
            id: self.id.clone(),
            generation: self.conn_id,
            at_ms: now_ms(),
            taken_over: matches!(end, End::Closed(CloseReason::TakenOver)),
        };
        self.core.fleet_event(event).await;
        let _ = self.socket.shutdown().await;
    }
}
