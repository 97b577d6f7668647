//! `GET /metrics`: the counters of `GET /api/v1/stats` and a few histograms in the
//! Prometheus text format (SPEC §8). Open like `/health`: it shows counts, never ids.

use fleetmq_broker::{ClientInfo, StatsSnapshot, Transport};
use http::{header, HeaderValue, Response, StatusCode};

use crate::error::ApiError;
use crate::prometheus::{Exposition, CONTENT_TYPE};
use crate::response::ApiResponse;
use crate::AppState;

/// `GET /metrics`.
pub(crate) async fn get(state: &AppState) -> Result<ApiResponse, ApiError> {
    let broker = &state.broker;
    let mut e = Exposition::default();
    let stats = broker.stats();
    connections(&mut e, &stats, &broker.clients());
    traffic(&mut e, &stats);
    commands(&mut e, state);
    telemetry(&mut e, state);
    device_events(&mut e, state);
    trackers(&mut e, &stats);
    let backlog = broker.events().backlog().await;
    webhooks(&mut e, state, backlog);
    audit(&mut e, state);
    e.histogram(
        "fleetmq_redb_commit_seconds",
        "Time to commit a redb write transaction.",
        &fleetmq_storage::metrics::commit_latency().snapshot(),
    );
    let mut response = Response::new(crate::response::full(e.finish()));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

fn connections(e: &mut Exposition, stats: &StatsSnapshot, clients: &[ClientInfo]) {
    e.gauge(
        "fleetmq_uptime_seconds",
        "Seconds since the broker started.",
        stats.uptime_s,
    );
    let listeners = [
        (Transport::Tcp, "tcp"),
        (Transport::Ws, "ws"),
        (Transport::Tls, "tls"),
        (Transport::Wss, "wss"),
    ];
    let mut by_listener = Vec::new();
    for (transport, listener) in listeners {
        for protocol in ["3.1.1", "5"] {
            let n = (clients.iter())
                .filter(|c| c.transport == transport && c.protocol == protocol)
                .count();
            by_listener.push((vec![listener, protocol], n as u64));
        }
    }
    e.gauge_by(
        "fleetmq_connections",
        "Connected MQTT clients by listener and protocol version.",
        &["listener", "protocol"],
        by_listener,
    );
    let c = &stats.connections;
    e.gauge_by(
        "fleetmq_connections_by_kind",
        "Connected MQTT clients by who they are.",
        &["kind"],
        [
            (vec!["device"], c.devices),
            (vec!["service"], c.service_clients),
            (vec!["anonymous"], c.anonymous),
        ],
    );
    e.counter(
        "fleetmq_connections_accepted_total",
        "MQTT connections accepted.",
        c.accepted_total,
    );
    e.counter(
        "fleetmq_connections_refused_total",
        "MQTT connections refused (bad credentials, bad CONNECT).",
        c.refused_total,
    );
    e.counter_by(
        "fleetmq_connect_refused_total",
        "MQTT connection attempts refused, by cause.",
        "cause",
        c.refused_by_cause.iter().map(|(cause, n)| (*cause, *n)),
    );
    e.gauge_by(
        "fleetmq_auth_backoff_blocked",
        "Identities (per address) and addresses refused unchecked after failed authentications.",
        &["scope"],
        [
            (vec!["identity"], c.backoff.identities as u64),
            (vec!["address"], c.backoff.addresses as u64),
        ],
    );
}

fn traffic(e: &mut Exposition, stats: &StatsSnapshot) {
    let packets = &stats.packets;
    e.counter_by(
        "fleetmq_packets_received_total",
        "MQTT packets read from clients, by packet type.",
        "type",
        packets.received.iter().map(|(k, v)| (*k, *v)),
    );
    e.counter_by(
        "fleetmq_packets_sent_total",
        "MQTT packets written to clients, by packet type.",
        "type",
        packets.sent.iter().map(|(k, v)| (*k, *v)),
    );
    let m = &stats.messages;
    e.counter(
        "fleetmq_messages_received_total",
        "PUBLISH messages received from clients.",
        m.received,
    );
    e.counter(
        "fleetmq_messages_sent_total",
        "PUBLISH messages sent to clients.",
        m.sent,
    );
    e.counter(
        "fleetmq_bytes_received_total",
        "Bytes read from MQTT clients.",
        m.bytes_received,
    );
    e.counter(
        "fleetmq_bytes_sent_total",
        "Bytes written to MQTT clients.",
        m.bytes_sent,
    );
    e.counter(
        "fleetmq_backpressure_pauses_total",
        "Times a slow client made the router pause its link.",
        m.backpressure_pauses,
    );
    e.counter(
        "fleetmq_publisher_pauses_total",
        "Times a publisher was paused because a subscriber of its topic was congested.",
        m.publisher_pauses,
    );
    e.counter(
        "fleetmq_slow_consumers_disconnected_total",
        "Clients disconnected because they did not take their messages.",
        m.slow_consumers_disconnected,
    );
    let d = &stats.drops;
    e.counter_by(
        "fleetmq_dropped_total",
        "Packets and messages dropped, by cause.",
        "cause",
        [
            ("acl_publish", d.acl_publish),
            ("acl_subscribe", d.acl_subscribe),
            ("acl_delivery", d.acl_delivery),
            ("decrypt", d.decrypt_failed),
            ("replayed", d.replayed),
            ("encrypt", d.encrypt_failed),
            ("malformed", d.malformed),
            ("too_large", d.too_large),
            ("queue_full", d.queue_full),
            ("expired", d.expired),
            ("limit", d.limit),
            ("session_queue_full", d.session_queue_full),
            ("slow_consumer", d.slow_consumer),
        ],
    );
}

fn commands(e: &mut Exposition, state: &AppState) {
    let engine = state.broker.commands();
    let stats = engine.stats();
    e.gauge_by(
        "fleetmq_commands",
        "Stored commands by status.",
        &["status"],
        stats.by_status.iter().map(|(s, n)| (vec![*s], *n)),
    );
    e.counter_by(
        "fleetmq_command_responses_dropped_total",
        "Command answers that changed nothing, by why.",
        "reason",
        [
            ("unknown", stats.unknown_responses),
            ("late", stats.late_responses),
            ("malformed", stats.malformed_responses),
        ],
    );
    e.counter(
        "fleetmq_commands_pruned_total",
        "Finished commands deleted as older than commands.history_days.",
        stats.pruned,
    );
    e.histogram(
        "fleetmq_command_round_trip_seconds",
        "From a command's first send to the device's answer.",
        &engine.round_trip(),
    );
}

fn device_events(e: &mut Exposition, state: &AppState) {
    let d = state.broker.device_events().stats();
    e.counter(
        "fleetmq_device_events_stored_total",
        "Device events (device/{id}/events) committed to the store.",
        d.stored,
    );
    e.counter_by(
        "fleetmq_device_events_not_stored_total",
        "Device events not stored, by cause.",
        "cause",
        [("refused", d.refused), ("write_failed", d.write_failed)],
    );
    e.counter(
        "fleetmq_device_events_swept_total",
        "Device events removed by retention.",
        d.swept,
    );
}

fn telemetry(e: &mut Exposition, state: &AppState) {
    let t = state.broker.telemetry().stats();
    e.counter(
        "fleetmq_telemetry_points_stored_total",
        "Telemetry points committed to the store.",
        t.stored,
    );
    e.counter_by(
        "fleetmq_telemetry_points_dropped_total",
        "Telemetry points not stored, by cause.",
        "cause",
        [
            ("queue_full", t.dropped_queue_full),
            ("shutdown", t.dropped_shutdown),
            ("write_failed", t.dropped_write_failed),
        ],
    );
    e.counter(
        "fleetmq_telemetry_rejected_total",
        "Telemetry payloads the device's plugin refused.",
        t.rejected,
    );
    e.counter(
        "fleetmq_telemetry_points_not_stored_total",
        "Telemetry points checked and not stored (telemetry.store = false).",
        t.not_stored,
    );
    e.counter(
        "fleetmq_telemetry_batches_total",
        "Telemetry write transactions committed.",
        t.batches,
    );
    e.counter(
        "fleetmq_telemetry_points_swept_total",
        "Telemetry points removed by retention.",
        t.swept,
    );
    e.gauge(
        "fleetmq_telemetry_queued",
        "Telemetry points waiting to be written.",
        t.queued,
    );
}

fn trackers(e: &mut Exposition, stats: &StatsSnapshot) {
    let t = &stats.teltonika;
    e.counter(
        "fleetmq_teltonika_logins_refused_total",
        "Teltonika logins answered 0x00 (unknown IMEI, not allowed, server full) or malformed.",
        t.logins_refused,
    );
    e.counter(
        "fleetmq_teltonika_packets_total",
        "Teltonika AVL packets stored and acknowledged.",
        t.packets,
    );
    e.counter(
        "fleetmq_teltonika_records_total",
        "Teltonika AVL records stored and acknowledged.",
        t.records,
    );
    e.counter_by(
        "fleetmq_teltonika_packets_unacknowledged_total",
        "Teltonika packets not acknowledged (the tracker sends them again), by cause.",
        "cause",
        [
            ("bad_packet", t.bad_packets),
            ("not_stored", t.acks_withheld),
        ],
    );
    e.counter(
        "fleetmq_teltonika_commands_sent_total",
        "Codec 12 commands written to trackers.",
        t.commands_sent,
    );
    e.counter(
        "fleetmq_teltonika_responses_total",
        "Codec 12 responses received from trackers.",
        t.responses,
    );
}

fn webhooks(e: &mut Exposition, state: &AppState, backlog: u64) {
    let w = state.broker.events().webhook_stats();
    e.counter_by(
        "fleetmq_webhook_deliveries_total",
        "Webhook delivery attempts by outcome.",
        "outcome",
        [
            ("delivered", w.delivered),
            ("failed", w.failed_attempts),
            ("given_up", w.given_up),
            ("discarded", w.discarded),
        ],
    );
    e.counter(
        "fleetmq_webhook_events_dropped_total",
        "Events not queued for a URL because its outbox queue was full.",
        w.dropped_full,
    );
    e.counter(
        "fleetmq_webhook_store_errors_total",
        "Events the webhook outbox could not record.",
        w.store_errors,
    );
    e.gauge(
        "fleetmq_webhook_backlog",
        "Webhook deliveries still owed (pending or failed).",
        backlog,
    );
}

fn audit(e: &mut Exposition, state: &AppState) {
    use std::sync::atomic::Ordering::Relaxed;
    e.counter(
        "fleetmq_audit_written_total",
        "Audit log entries written.",
        state.audit.written.load(Relaxed),
    );
    e.counter(
        "fleetmq_audit_dropped_total",
        "Audit log entries lost: the writer's queue was full or a write failed.",
        state.audit.dropped.load(Relaxed),
    );
}
