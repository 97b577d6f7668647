//! Broker counters. Every drop is counted by cause.

use serde::Serialize;

/// A point-in-time copy of the broker's counters, as `GET /api/v1/stats` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsSnapshot {
    pub uptime_s: u64,
    pub connections: ConnectionStats,
    pub messages: MessageStats,
    pub drops: DropStats,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionStats {
    pub current: u64,
    pub devices: u64,
    pub service_clients: u64,
    pub anonymous: u64,
    pub accepted_total: u64,
    pub refused_total: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MessageStats {
    pub received: u64,
    pub sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DropStats {
    pub acl_publish: u64,
    pub acl_subscribe: u64,
    pub acl_delivery: u64,
    pub decrypt_failed: u64,
    pub encrypt_failed: u64,
    pub malformed: u64,
    pub too_large: u64,
    pub queue_full: u64,
}
