//! `fleetmq subscribe FILTER...`: prints the messages of topic filters, one line each.
//!
//! By default an MQTT client of its own (rumqttc, MQTT 3.1.1 over TCP) with the
//! credentials of a service client (`--username`/`--password`), or none on a broker that
//! allows anonymous clients. The broker's ACL applies as to any client: a filter it
//! refuses is an error. It resubscribes after the connection drops.
//!
//! `--api` reads the admin API's live message stream instead (`GET /api/v1/subscribe`,
//! `subscribe_api.rs`): an `operator` key, no MQTT credentials, one filter.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode,
};
use serde_json::json;

use super::error::CliError;
use super::output::outln;

/// How long to wait before reconnecting after the connection dropped.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// Topic filters (`+` and `#` wildcards)
    #[arg(value_name = "FILTER", required = true)]
    filters: Vec<String>,
    /// The broker's MQTT TCP address [default: `mqtt.tcp` from the config, 0.0.0.0 as 127.0.0.1]
    #[arg(long, env = "FLEETMQ_MQTT_ADDR", value_name = "HOST:PORT")]
    mqtt: Option<String>,
    /// MQTT username: a service client's name (`fleetmq service-client add`)
    #[arg(long, short = 'u', env = "FLEETMQ_MQTT_USERNAME")]
    username: Option<String>,
    /// MQTT password of that service client
    #[arg(
        long,
        short = 'P',
        env = "FLEETMQ_MQTT_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    password: Option<String>,
    /// MQTT client id [default: fleetmq-sub-<pid>]
    #[arg(long, short = 'i')]
    client_id: Option<String>,
    /// Subscription QoS 0, 1 or 2
    #[arg(long, short = 'q', default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Exit after this many messages
    #[arg(long, short = 'C', value_name = "N")]
    pub(super) count: Option<u64>,
    /// Watch through the admin API (`GET /api/v1/subscribe`, an operator key) instead of MQTT: one FILTER, every message the broker routes
    #[arg(long, conflicts_with_all = ["mqtt", "username", "client_id"])]
    api: bool,
    /// The admin API (with --api); `--json`: one JSON object per message (topic, qos,
    /// retain, payload (text) or payload_hex); `--config`: also where `mqtt.tcp` is read
    #[command(flatten)]
    conn: super::client::ConnArgs,
}

impl SubscribeArgs {
    /// `--mqtt`, else the config's `mqtt.tcp` as a client reaches it.
    fn address(&self) -> Result<(String, u16), CliError> {
        if let Some(text) = &self.mqtt {
            let bad = || CliError::Usage(format!("--mqtt {text:?}: expected HOST:PORT"));
            let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
            let port = port.parse().map_err(|_| bad())?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            return Ok((host.to_owned(), port));
        }
        let config = crate::config::load(self.conn.config.as_deref(), std::env::vars(), Vec::new())
            .map_err(CliError::Config)?;
        let tcp = config.broker.tcp.ok_or_else(|| {
            CliError::Usage("mqtt.tcp is disabled in the config: give --mqtt HOST:PORT".into())
        })?;
        let ip = match tcp.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let addr = SocketAddr::new(ip, tcp.port());
        Ok((addr.ip().to_string(), addr.port()))
    }
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Prints messages until `--count` of them came or the process is stopped.
pub async fn run(args: SubscribeArgs) -> Result<(), CliError> {
    if args.api {
        let [filter] = args.filters.as_slice() else {
            return Err(CliError::Usage(
                "--api follows one topic filter; use a wildcard (`a/+/c`, `a/#`) for more".into(),
            ));
        };
        let admin = super::client::Admin::connect(&args.conn).await?;
        return super::subscribe_api::run(&admin, filter, args.conn.json, args.count).await;
    }
    let (host, port) = args.address()?;
    let target = format!("mqtt://{host}:{port}");
    let client_id =
        (args.client_id.clone()).unwrap_or_else(|| format!("fleetmq-sub-{}", std::process::id()));
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    if let Some(user) = &args.username {
        options.set_credentials(user.clone(), args.password.clone().unwrap_or_default());
    }
    let (client, mut events) = AsyncClient::new(options, 64);
    let mut printed = 0u64;
    let mut connected = false;
    loop {
        if args.count.is_some_and(|n| printed >= n) {
            disconnect(&client, &mut events).await;
            return Ok(());
        }
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                subscribe(&client, &args).await?;
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                refused_filters(&args.filters, &ack.return_codes)?;
                if printed == 0 {
                    eprintln!("note: subscribed at {target} to {}", args.filters.join(" "));
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                print_message(
                    &publish.topic,
                    publish.qos as u8,
                    publish.retain,
                    &publish.payload,
                    args.conn.json,
                );
                printed += 1;
            }
            Ok(_) => {}
            Err(err) if connected => {
                eprintln!("note: the connection to {target} dropped ({err}); reconnecting");
                tokio::time::sleep(RETRY).await;
                reconnect(&mut events);
            }
            Err(err) => return Err(connect_error(&target, args.username.as_deref(), err)),
        }
    }
}

async fn subscribe(client: &AsyncClient, args: &SubscribeArgs) -> Result<(), CliError> {
    let filters = args
        .filters
        .iter()
        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos(args.qos)));
    client
        .subscribe_many(filters)
        .await
        .map_err(|e| CliError::Usage(format!("cannot subscribe: {e}")))
}

/// Sends what is owed (PUBACKs) and a DISCONNECT, for at most a second.
async fn disconnect(client: &AsyncClient, events: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let flushed = async {
        while let Ok(event) = events.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), flushed).await;
}

/// rumqttc reconnects on the next poll; a stale queue of our own requests would be
/// sent first, so it is dropped (the subscription is sent again on CONNACK).
fn reconnect(events: &mut EventLoop) {
    events.clean();
}

/// A SUBACK failure code for any filter is an error naming the filters.
fn refused_filters(filters: &[String], codes: &[SubscribeReasonCode]) -> Result<(), CliError> {
    let refused: Vec<&str> = (filters.iter().zip(codes))
        .filter(|(_, code)| matches!(code, SubscribeReasonCode::Failure))
        .map(|(f, _)| f.as_str())
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(CliError::Api {
        status: 403,
        code: "subscription_refused".into(),
        message: format!(
            "the broker refused the subscription to {} (its ACL does not allow this client to subscribe there)",
            refused.join(" ")
        ),
    })
}

fn connect_error(target: &str, user: Option<&str>, err: ConnectionError) -> CliError {
    let who = user.map_or("without credentials".to_owned(), |u| format!("as {u:?}"));
    match err {
        ConnectionError::ConnectionRefused(code) => CliError::MqttRefused(format!(
            "the broker at {target} refused the connection {who}: {code:?}"
        )),
        other => CliError::Connect {
            url: target.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// One message, as a line: `topic payload` (or `topic <n bytes> hex`), or JSON.
pub(super) fn print_message(topic: &str, qos: u8, retain: bool, payload: &[u8], json: bool) {
    let text = std::str::from_utf8(payload).ok();
    if json {
        let mut line = json!({ "topic": topic, "qos": qos, "retain": retain });
        match text {
            Some(text) => line["payload"] = text.into(),
            None => line["payload_hex"] = hex(payload).into(),
        }
        outln!("{line}");
        return;
    }
    match text {
        Some(text) => outln!("{topic} {text}"),
        None => outln!("{topic} <{} bytes> {}", payload.len(), hex(payload)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_filters_are_named() {
        let filters = ["a/#".to_owned(), "b/#".to_owned()];
        let codes = [
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
        ];
        let err = refused_filters(&filters, &codes).unwrap_err();
        assert!(err.to_string().contains("to b/#"), "{err}");
        assert!(refused_filters(&filters, &codes[..1]).is_ok());
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}
