//! Presence (SPEC §6): online/offline from the link layer, one event per transition.
//!
//! Every connection has a generation that grows with each accepted connection. The
//! current generation of a device is the one that connected last; a disconnect of any
//! other generation (a connection that was taken over, or lost a race with a fast
//! reconnect) changes nothing, so a device can never be shown offline while connected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use fleetmq_storage::DeviceId;

use crate::client::Transport;

/// What a connect or disconnect changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The device went from offline to online.
    Online,
    /// The device went from online to offline.
    Offline,
    /// Nothing a user can see changed (a takeover, or an old connection going away).
    None,
}

#[derive(Debug, Clone)]
struct Live {
    generation: u64,
    connected_at_ms: u64,
    last_seen_ms: u64,
    peer: SocketAddr,
    protocol: &'static str,
    transport: Transport,
}

/// The live presence of every connected device.
#[derive(Default)]
pub struct Presence {
    live: Mutex<HashMap<DeviceId, Live>>,
}

/// A connected device's live details.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveView {
    pub generation: u64,
    pub connected_at_ms: u64,
    pub last_seen_ms: u64,
    pub ip: String,
    pub protocol: &'static str,
    pub transport: Transport,
}

impl Presence {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection of `id` was accepted.
    pub fn connected(
        &self,
        id: &DeviceId,
        generation: u64,
        peer: SocketAddr,
        protocol: &'static str,
        transport: Transport,
        at_ms: u64,
    ) -> Transition {
        let mut live = self.live();
        let entry = Live {
            generation,
            connected_at_ms: at_ms,
            last_seen_ms: at_ms,
            peer,
            protocol,
            transport,
        };
        match live.get_mut(id) {
            Some(current) if current.generation > generation => Transition::None,
            Some(current) => {
                *current = entry;
                Transition::None
            }
            None => {
                live.insert(id.clone(), entry);
                Transition::Online
            }
        }
    }

    /// A connection of `id` ended.
    /// A connection that was `taken_over` is about to be replaced by a newer one, which
    /// announces itself next: the device stays online.
    pub fn disconnected(&self, id: &DeviceId, generation: u64, taken_over: bool) -> Transition {
        let mut live = self.live();
        match live.get(id) {
            Some(current) if current.generation == generation && !taken_over => {
                live.remove(id);
                Transition::Offline
            }
            _ => Transition::None,
        }
    }

    /// Something arrived from the device.
    pub fn seen(&self, id: &DeviceId, at_ms: u64) {
        if let Some(current) = self.live().get_mut(id) {
            current.last_seen_ms = current.last_seen_ms.max(at_ms);
        }
    }

    /// The device's live details, if it is connected.
    pub fn get(&self, id: &DeviceId) -> Option<LiveView> {
        self.live().get(id).map(|l| LiveView {
            generation: l.generation,
            connected_at_ms: l.connected_at_ms,
            last_seen_ms: l.last_seen_ms,
            ip: l.peer.ip().to_string(),
            protocol: l.protocol,
            transport: l.transport,
        })
    }

    /// Whether the device `id` is connected.
    pub fn is_online(&self, id: &str) -> bool {
        id.parse::<DeviceId>()
            .is_ok_and(|id| self.live().contains_key(&id))
    }

    /// The current generation of a connected device.
    pub fn generation(&self, id: &DeviceId) -> Option<u64> {
        self.live().get(id).map(|l| l.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> DeviceId {
        "dev-1".parse().unwrap()
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    #[test]
    fn one_event_per_transition_under_takeover_and_races() {
        let p = Presence::default();
        assert_eq!(
            p.connected(&id(), 1, peer(), "5", Transport::Tcp, 10),
            Transition::Online
        );
        // Takeover: gen 2 connects while gen 1 is still current, then gen 1 goes away.
        assert_eq!(
            p.connected(&id(), 2, peer(), "5", Transport::Tcp, 20),
            Transition::None
        );
        assert_eq!(p.disconnected(&id(), 1, false), Transition::None);
        assert_eq!(p.generation(&id()), Some(2));
        // A late connect event of an older generation changes nothing.
        assert_eq!(
            p.connected(&id(), 1, peer(), "5", Transport::Tcp, 30),
            Transition::None
        );
        assert_eq!(p.disconnected(&id(), 2, false), Transition::Offline);
        assert_eq!(p.disconnected(&id(), 2, false), Transition::None);
        assert!(p.get(&id()).is_none());
        // Fast reconnect where the old disconnect is seen after the new connect.
        assert_eq!(
            p.connected(&id(), 3, peer(), "3.1.1", Transport::Ws, 40),
            Transition::Online
        );
        assert_eq!(
            p.connected(&id(), 4, peer(), "3.1.1", Transport::Ws, 41),
            Transition::None
        );
        assert_eq!(p.disconnected(&id(), 3, false), Transition::None);
        assert_eq!(p.get(&id()).unwrap().generation, 4);
        // A takeover seen in the order the broker produces it: the old connection closes
        // first, then the new one announces itself. No event either way.
        assert_eq!(p.disconnected(&id(), 4, true), Transition::None);
        assert_eq!(
            p.connected(&id(), 5, peer(), "5", Transport::Tcp, 50),
            Transition::None
        );
        assert_eq!(p.generation(&id()), Some(5));
    }
}
