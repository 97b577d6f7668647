//! Taps: live copies of the messages the broker routes, for operators watching a topic
//! filter (the admin API's `GET /api/v1/subscribe`).
//!
//! A tap is not a router subscription: rumqttd never frees a filter's log, so every
//! filter an operator ever typed would stay in memory. Instead fleetmq's own routing
//! points offer each message here: every PUBLISH a connection routes (after the ACL and
//! the SPEC §4 envelope, so what subscribers get), every message the broker publishes
//! itself (`POST /api/v1/publish`, device config, wills, tracker records) and every
//! command delivered to a device.
//!
//! It costs one relaxed atomic load per message while nobody watches. With taps open,
//! a message is matched against at most [`MAX_TAPS`] filters under a read lock and
//! copied once for those that match; each tap's queue is bounded and a full one drops
//! (and counts) instead of slowing the publisher down.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use fleetmq_storage::now_ms;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::link::codec::topic;

/// The most taps open at once.
pub const MAX_TAPS: usize = 8;
/// Messages waiting for one tap's reader before further ones are dropped.
pub const TAP_QUEUE: usize = 512;

/// A message as a tap sees it.
#[derive(Debug, Clone)]
pub struct TappedMessage {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: u8,
    /// Whether its publisher set RETAIN.
    pub retain: bool,
    /// When the broker routed it (ms since the epoch).
    pub at_ms: u64,
    /// The client id of the MQTT connection that published it; `None`: the broker.
    pub client_id: Option<Arc<str>>,
}

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TapError {
    #[error("invalid topic filter {0:?}")]
    InvalidFilter(String),
    #[error("{open} taps are open, the most there may be; close one and try again")]
    TooMany { open: usize },
}

struct Entry {
    id: u64,
    filter: String,
    tx: mpsc::Sender<TappedMessage>,
    dropped: Arc<AtomicU64>,
}

/// The open taps.
#[derive(Default)]
pub(crate) struct Taps {
    /// How many are open: the only thing routing reads while none are.
    open: AtomicUsize,
    list: RwLock<Vec<Entry>>,
    next_id: AtomicU64,
}

/// One message offered to the taps.
pub(crate) struct Offer<'a> {
    pub(crate) topic: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) client_id: Option<&'a str>,
}

impl Taps {
    /// Copies the message to every open tap whose filter matches it.
    #[inline]
    pub(crate) fn offer(&self, offer: Offer<'_>) {
        if self.open.load(Ordering::Relaxed) != 0 {
            self.offer_slow(offer);
        }
    }

    #[cold]
    fn offer_slow(&self, offer: Offer<'_>) {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        let mut copy: Option<TappedMessage> = None;
        for entry in list.iter() {
            if !topic::matches(&entry.filter, offer.topic) {
                continue;
            }
            let msg = copy.get_or_insert_with(|| TappedMessage {
                topic: offer.topic.into(),
                payload: Bytes::copy_from_slice(offer.payload),
                qos: offer.qos,
                retain: offer.retain,
                at_ms: now_ms(),
                client_id: offer.client_id.map(Arc::from),
            });
            if let Err(TrySendError::Full(_)) = entry.tx.try_send(msg.clone()) {
                entry.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Opens a tap on `filter` (any valid MQTT filter but a shared one).
    pub(crate) fn open(self: &Arc<Self>, filter: &str) -> Result<Tap, TapError> {
        if !topic::valid_filter(filter) || topic::is_shared(filter) {
            return Err(TapError::InvalidFilter(filter.to_owned()));
        }
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        if list.len() >= MAX_TAPS {
            return Err(TapError::TooMany { open: list.len() });
        }
        let (tx, rx) = mpsc::channel(TAP_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        list.push(Entry {
            id,
            filter: filter.to_owned(),
            tx,
            dropped: dropped.clone(),
        });
        self.open.store(list.len(), Ordering::Relaxed);
        Ok(Tap {
            id,
            taps: self.clone(),
            rx,
            dropped,
        })
    }

    fn close(&self, id: u64) {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        list.retain(|e| e.id != id);
        self.open.store(list.len(), Ordering::Relaxed);
    }

    /// How many taps are open.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// An open tap; dropping it closes it.
pub struct Tap {
    id: u64,
    taps: Arc<Taps>,
    rx: mpsc::Receiver<TappedMessage>,
    dropped: Arc<AtomicU64>,
}

impl Tap {
    /// The next message (cancel-safe); `None` never happens while the tap is open.
    pub async fn recv(&mut self) -> Option<TappedMessage> {
        self.rx.recv().await
    }

    /// A message already waiting, if any.
    pub fn try_recv(&mut self) -> Option<TappedMessage> {
        self.rx.try_recv().ok()
    }

    /// Messages dropped because the queue was full since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.taps.close(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer<'a>(topic: &'a str, payload: &'a [u8]) -> Offer<'a> {
        Offer {
            topic,
            payload,
            qos: 1,
            retain: false,
            client_id: Some("c1"),
        }
    }

    #[test]
    fn taps_match_filters_bound_their_queue_and_close_on_drop() {
        let taps = Arc::new(Taps::default());
        taps.offer(offer("a/b", b"nobody"));
        let mut plus = taps.open("a/+").unwrap();
        let hash = taps.open("#").unwrap();
        assert_eq!(taps.count(), 2);
        taps.offer(offer("a/b", b"1"));
        taps.offer(offer("a/b/c", b"2"));
        let got = plus.rx.try_recv().unwrap();
        assert_eq!((&*got.topic, &got.payload[..]), ("a/b", &b"1"[..]));
        assert_eq!(got.client_id.as_deref(), Some("c1"));
        assert!(plus.rx.try_recv().is_err());
        for _ in 0..TAP_QUEUE + 5 {
            taps.offer(offer("x", b"y"));
        }
        // `#` had two messages queued before the flood.
        assert_eq!(hash.take_dropped(), 7);
        assert_eq!(hash.take_dropped(), 0);
        drop(hash);
        drop(plus);
        assert_eq!(taps.count(), 0);
        assert!(taps.list.read().unwrap().is_empty());
    }

    #[test]
    fn filters_are_checked_and_taps_are_limited() {
        let taps = Arc::new(Taps::default());
        for bad in ["", "a/#/b", "a+", "$share/g/a"] {
            assert!(matches!(taps.open(bad), Err(TapError::InvalidFilter(_))));
        }
        let open: Vec<Tap> = (0..MAX_TAPS).map(|_| taps.open("a").unwrap()).collect();
        assert!(matches!(
            taps.open("a"),
            Err(TapError::TooMany { open: MAX_TAPS })
        ));
        drop(open);
        assert!(taps.open("a").is_ok());
    }
}
