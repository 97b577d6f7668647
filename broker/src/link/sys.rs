//! `$SYS` topics, served by the link layer: rumqttd's router disconnects a link that
//! subscribes to a `$` filter and never matches a `$` topic (`protocol/mod.rs`
//! `matches`), so the values never pass through it. A ticker publishes a fresh snapshot
//! every `mqtt.sys_interval_s` on a watch channel; each connection with `$SYS`
//! subscriptions writes the topics its filters match and its ACL lets it read.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::link::Core;

/// One `$SYS` topic and its value.
pub(crate) type SysValues = Arc<Vec<(&'static str, String)>>;

/// The current values of every `$SYS` topic fleetmq publishes.
pub(crate) fn snapshot(core: &Core) -> SysValues {
    let s = core.stats.snapshot();
    Arc::new(vec![
        (
            "$SYS/broker/clients/connected",
            s.connections.current.to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            s.messages.received.to_string(),
        ),
        ("$SYS/broker/messages/sent", s.messages.sent.to_string()),
        ("$SYS/broker/uptime", format!("{} seconds", s.uptime_s)),
        (
            "$SYS/broker/version",
            format!("fleetmq {}", env!("CARGO_PKG_VERSION")),
        ),
    ])
}

/// The channel connections watch; the ticker is its only writer.
pub(crate) fn channel() -> (watch::Sender<SysValues>, watch::Receiver<SysValues>) {
    watch::channel(Arc::new(Vec::new()))
}

/// Publishes a snapshot every `interval` until shutdown (`None`: `$SYS` is only answered
/// at subscribe time, never refreshed).
pub(crate) fn spawn_ticker(core: &Arc<Core>, tracker: &TaskTracker) {
    let Some(interval) = core.config.sys_interval else {
        return;
    };
    let weak: Weak<Core> = Arc::downgrade(core);
    let shutdown: CancellationToken = core.shutdown.clone();
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(core) = weak.upgrade() else { return };
            core.sys.send_replace(snapshot(&core));
        }
    });
}

impl crate::link::connection::Connection {
    /// Writes the `$SYS` values this connection's filters match and its ACL lets it read,
    /// at QoS 0 (`retain`: the answer to a new subscription, as Mosquitto marks it).
    pub(super) fn write_sys(&mut self, values: &[(&'static str, String)], retain: bool) {
        let filters: Vec<String> = self.subs.sys_filters().map(str::to_owned).collect();
        for (topic_name, value) in values {
            let wanted = filters
                .iter()
                .any(|f| crate::link::codec::topic::matches(f, topic_name));
            if !wanted || !self.s.principal.may_read(topic_name) {
                continue;
            }
            let meta = crate::link::codec::framing::PublishMeta {
                qos: 0,
                dup: false,
                retain,
                pkid: 0,
            };
            let publish = crate::link::codec::framing::build_publish(
                meta,
                topic_name.as_bytes(),
                value.as_bytes(),
            );
            self.write_packet(rumqttd::protocol::Packet::Publish(publish, None));
            crate::stats::Stats::add(&self.core.stats.sent, 1);
        }
    }
}
