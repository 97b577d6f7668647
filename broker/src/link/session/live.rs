//! The table of live connections: entering it (MQTT and tracker connections alike),
//! listing, kicking, and takeover.
//!
//! A takeover is done by fleetmq, not by rumqttd's router: the new connection waits until
//! the old one has closed and told the router (`Disconnect`) before it builds its own
//! link. The router therefore never removes a link behind our back, and a late
//! `Disconnect` can never hit a reused router slot.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use fleetmq_storage::DeviceRecord;

use rumqttd::protocol::{Publish, PublishProperties};

use crate::client::{ClientInfo, ClientKind};
use crate::link::device_links::Routed;
use crate::link::Core;
use crate::stats::Stats;

/// The sessions table's (and the router's) key of a device's connection: `d:{id}`.
/// Other clients are `c:{escaped client id}`, so no client can take over a device's
/// session.
pub(crate) fn device_key(id: &str) -> String {
    format!("d:{id}")
}

/// Why the broker closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    TakenOver,
    Kicked,
    CredentialsRevoked,
    ShuttingDown,
}

/// Messages the broker sends a live connection.
#[derive(Debug)]
pub(crate) enum Control {
    Close(CloseReason),
    /// The device's record changed (keys rotated, encryption flag).
    Reload(Box<DeviceRecord>),
    /// The admin API asks for the connection's subscriptions and counters; a connection
    /// that keeps none (a tracker) drops the request.
    Snapshot(Box<SnapshotRequest>),
    /// A service client's ACL rules changed: they apply from its next packet on.
    Rules(std::sync::Arc<[fleetmq_storage::AclRule]>),
    /// Tests only: what the connection withheld from the router goes now
    /// (`testing::RouterHold`).
    #[cfg(feature = "testing")]
    RouterRelease,
}

/// What the connection answers a [`Control::Snapshot`] with, and where.
pub(crate) type SnapshotRequest = (
    ClientInfo,
    tokio::sync::oneshot::Sender<crate::client::ClientDetail>,
);

/// Commands waiting to be written by one device connection, and messages the router
/// dispatched to it (`link::device_links`). Separate from the control channel so a
/// burst of commands never crowds out a close, and bounded: when full, delivery reports
/// the connection as unavailable and the engine re-sends later. Both queues hold no
/// memory while empty.
#[derive(Default)]
pub(crate) struct Mailbox {
    queue: Mutex<VecDeque<(String, Bytes)>>,
    routed: Mutex<VecDeque<RoutedMessage>>,
    /// Whether the connection takes routed messages (MQTT devices, not trackers).
    takes_routed: std::sync::atomic::AtomicBool,
    pub(crate) ready: tokio::sync::Notify,
    /// What the broker tells the connection (at most [`CONTROL_CAPACITY`] waiting), and
    /// whether it has closed: plain fields rather than channels, whose shared state
    /// cost a kilobyte per idle connection.
    control: Mutex<VecDeque<Control>>,
    control_ready: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
    closed_notify: tokio::sync::Notify,
}

/// Control messages a connection may have waiting.
const CONTROL_CAPACITY: usize = 16;

/// A message the router routed to a device's topic.
pub(crate) type RoutedMessage = (Publish, Option<PublishProperties>);

/// Commands a connection may have waiting to be written.
const MAILBOX_CAPACITY: usize = 65_536;
/// Routed messages a device connection may have waiting for its task (it takes them
/// all at each wake-up; past its outbound bound it holds publishers back).
const ROUTED_CAPACITY: usize = 4096;

impl Mailbox {
    /// Queues a command; false when the mailbox is full.
    pub(crate) fn push(&self, command_id: String, payload: Bytes) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= MAILBOX_CAPACITY {
            return false;
        }
        queue.push_back((command_id, payload));
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// Everything queued, oldest first.
    pub(crate) fn take(&self) -> VecDeque<(String, Bytes)> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Queues a control message; gives it back when the queue is full.
    pub(crate) fn try_control(&self, control: Control) -> Result<(), Control> {
        let mut queue = self.control.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= CONTROL_CAPACITY {
            return Err(control);
        }
        queue.push_back(control);
        drop(queue);
        self.control_ready.notify_one();
        // A parked connection waits on `ready` alone (`connection/park.rs`).
        self.ready.notify_one();
        Ok(())
    }

    /// The next control message, if one is waiting.
    pub(crate) fn try_take_control(&self) -> Option<Control> {
        self.control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// The next control message (one receiver: the connection).
    pub(crate) async fn control(&self) -> Control {
        loop {
            if let Some(control) = self.try_take_control() {
                return control;
            }
            // `notify_one` keeps a permit when nobody waits: no wake-up is lost.
            self.control_ready.notified().await;
        }
    }

    /// The connection has closed (it left the router and the live table).
    pub(crate) fn set_closed(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.closed_notify.notify_waiters();
    }

    /// Waits until [`Mailbox::set_closed`].
    async fn wait_closed(&self) {
        loop {
            let notified = self.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// From now on routed messages are queued (else they are not for this connection).
    pub(crate) fn take_routed_messages(&self) {
        self.takes_routed.store(true, Relaxed);
    }

    /// Queues a routed message; false when the queue is full.
    fn push_routed(&self, message: RoutedMessage) -> Routed {
        if !self.takes_routed.load(Relaxed) {
            return Routed::NotConnected;
        }
        let mut routed = self.routed.lock().unwrap_or_else(|e| e.into_inner());
        if routed.len() >= ROUTED_CAPACITY {
            return Routed::Full;
        }
        routed.push_back(message);
        drop(routed);
        self.ready.notify_one();
        Routed::Queued
    }

    /// Every routed message queued, oldest first.
    pub(crate) fn take_routed(&self) -> VecDeque<RoutedMessage> {
        std::mem::take(&mut *self.routed.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

pub(crate) struct Live {
    pub(crate) conn_id: u64,
    /// Commands for a device connection.
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) info: ClientInfo,
    /// The service client name, for closing all of a service client's connections.
    pub(crate) service: Option<String>,
}

type SlotLock = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    slots: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

/// How long a takeover waits for the old connection to close before going ahead.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

impl Sessions {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock that serialises connection setup for one router client id.
    pub(crate) fn slot(&self, key: &str) -> SlotLock {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(key).and_then(Weak::upgrade) {
            return slot;
        }
        if slots.len() > 1024 && slots.len().is_power_of_two() {
            slots.retain(|_, w| w.strong_count() > 0);
        }
        let slot = SlotLock::default();
        slots.insert(key.to_owned(), Arc::downgrade(&slot));
        slot
    }

    /// Closes the live connection under `key`, if any, and waits until it is gone.
    /// Call with the key's slot lock held.
    /// Returns the connection id of the connection it closed.
    pub(crate) async fn take_over(&self, key: &str) -> Option<u64> {
        let old = self.live().get(key).map(|l| (l.mailbox.clone(), l.conn_id));
        let (mailbox, old_id) = old?;
        let _ = mailbox.try_control(Control::Close(CloseReason::TakenOver));
        let wait = mailbox.wait_closed();
        if tokio::time::timeout(TAKEOVER_WAIT, wait).await.is_err() {
            tracing::warn!(
                client = key,
                "old connection did not close in time for takeover"
            );
        }
        Some(old_id)
    }

    /// Whether a connection is live under `key`.
    pub(crate) fn is_live(&self, key: &str) -> bool {
        self.live().contains_key(key)
    }

    pub(crate) fn insert(&self, key: String, live: Live) {
        self.live().insert(key, live);
    }

    /// Removes the entry if it still belongs to connection `conn_id`.
    pub(crate) fn remove(&self, key: &str, conn_id: u64) {
        let mut live = self.live();
        if live.get(key).is_some_and(|l| l.conn_id == conn_id) {
            live.remove(key);
        }
    }

    pub(crate) fn clients(&self) -> Vec<ClientInfo> {
        let mut all: Vec<ClientInfo> = self.live().values().map(|l| l.info.clone()).collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    /// The first live connection (in key order) with this client id: what it is, and
    /// its mailbox.
    pub(crate) fn find(&self, client_id: &str) -> Option<(ClientInfo, Arc<Mailbox>)> {
        let live = self.live();
        let mut found: Vec<(&String, &Live)> = live
            .iter()
            .filter(|(_, l)| l.info.client_id == client_id)
            .collect();
        found.sort_by(|a, b| a.0.cmp(b.0));
        found
            .first()
            .map(|(_, l)| (l.info.clone(), l.mailbox.clone()))
    }

    /// Sends `control` to every live connection `select` picks; returns how many.
    pub(crate) fn send_where(
        &self,
        select: impl Fn(&Live) -> bool,
        control: impl Fn() -> Control,
    ) -> usize {
        let live = self.live();
        let mut n = 0;
        for l in live.values().filter(|l| select(l)) {
            if l.mailbox.try_control(control()).is_err() {
                tracing::warn!(client_id = %l.info.client_id, "control queue full; connection is already closing");
            }
            n += 1;
        }
        n
    }

    pub(crate) fn is_connected(&self, client_id: &str, kind: Option<ClientKind>) -> bool {
        self.live()
            .values()
            .any(|l| l.info.client_id == client_id && kind.is_none_or(|k| l.info.kind == k))
    }
}

impl Sessions {
    /// Queues a command for the device connection `conn_id` of `client_id`; false if
    /// that connection is gone or its mailbox is full.
    pub(crate) fn deliver(
        &self,
        client_id: &str,
        conn_id: u64,
        command_id: &str,
        payload: Bytes,
    ) -> bool {
        let key = device_key(client_id);
        let live = self.live();
        match live.get(&key) {
            Some(l)
                if l.conn_id == conn_id
                    && l.info.kind == ClientKind::Device
                    && l.info.client_id == client_id =>
            {
                l.mailbox.push(command_id.to_owned(), payload)
            }
            _ => false,
        }
    }
}

impl Sessions {
    /// Hands a message the router routed to `device/{id}/...` to that device's live
    /// connection (`link::device_links`).
    pub(crate) fn route_to_device(
        &self,
        id: &str,
        publish: Publish,
        props: Option<PublishProperties>,
    ) -> Routed {
        let key = device_key(id);
        let mailbox = match self.live().get(&key) {
            Some(l) if l.info.kind == ClientKind::Device => l.mailbox.clone(),
            _ => return Routed::NotConnected,
        };
        mailbox.push_routed((publish, props))
    }
}

/// Commands reach a device's live connection through its mailbox.
impl crate::fleet::CommandSink for Sessions {
    fn deliver(
        &self,
        id: &fleetmq_storage::DeviceId,
        generation: u64,
        command_id: &str,
        payload: Bytes,
    ) -> bool {
        Sessions::deliver(self, id.as_str(), generation, command_id, payload)
    }
}

/// The connection's ends of its entry in the live table.
pub(crate) struct LiveEnds {
    pub(crate) conn_id: u64,
    /// Commands, routed messages, control messages and the closed flag.
    pub(crate) mailbox: Arc<crate::link::session::live::Mailbox>,
}

/// Enters a connection described by `info` in the live table under `key` (a service
/// client's connections carry its name) and counts it; MQTT and tracker connections.
pub(crate) fn enter_live(
    core: &Core,
    key: &str,
    info: ClientInfo,
    service: Option<String>,
) -> LiveEnds {
    let conn_id = core.next_conn_id.fetch_add(1, Relaxed);
    let kind = info.kind;
    let mailbox = Arc::new(crate::link::session::live::Mailbox::default());
    core.sessions.insert(
        key.to_owned(),
        Live {
            conn_id,
            mailbox: mailbox.clone(),
            info,
            service,
        },
    );
    count_connection(&core.stats, kind, 1);
    LiveEnds { conn_id, mailbox }
}

pub(crate) fn count_connection(stats: &Stats, kind: ClientKind, delta: i64) {
    let counter = match kind {
        ClientKind::Device => &stats.devices,
        ClientKind::Service => &stats.service_clients,
        ClientKind::Anonymous => &stats.anonymous,
    };
    if delta > 0 {
        counter.fetch_add(1, Relaxed);
        stats.accepted_total.fetch_add(1, Relaxed);
    } else {
        counter.fetch_sub(1, Relaxed);
    }
}
