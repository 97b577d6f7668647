//! MQTT: one face over rumqttc's 3.1.1 and 5 clients, and the network task that drives
//! a device's connection.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::Identity;
use crate::rng::Rng;
use crate::Settings;

/// MQTT keep-alive of every device.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Largest MQTT packet a device sends or accepts (the broker's default `max_payload`).
const MAX_PACKET: usize = 256 * 1024;
/// Requests a device may queue in its MQTT client before a publish is dropped.
const REQUEST_CAPACITY: usize = 64;
/// Reconnect backoff: first wait, and the cap it doubles up to.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where the devices connect.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    Tcp { host: String, port: u16 },
    Ws(String),
}

impl Endpoint {
    /// The `--ws` URL if there is one, else the `--mqtt` address.
    pub(crate) fn parse(mqtt: &str, ws: Option<&str>) -> anyhow::Result<Endpoint> {
        if let Some(url) = ws {
            if !url.starts_with("ws://") {
                bail!("--ws must be a ws:// URL, got {url:?}");
            }
            return Ok(Endpoint::Ws(url.to_owned()));
        }
        let (host, port) = mqtt
            .rsplit_once(':')
            .with_context(|| format!("--mqtt must be HOST:PORT, got {mqtt:?}"))?;
        let port = port
            .parse()
            .with_context(|| format!("--mqtt port {port:?} is not a port number"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Endpoint::Tcp { host, port })
    }

    /// Host, port and transport for rumqttc: a WebSocket endpoint is its whole URL.
    fn parts(&self) -> (String, u16, rumqttc::Transport) {
        match self {
            Endpoint::Tcp { host, port } => (host.clone(), *port, rumqttc::Transport::Tcp),
            Endpoint::Ws(url) => (url.clone(), 0, rumqttc::Transport::Ws),
        }
    }
}

pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

pub(crate) enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What the network task tells its device.
#[derive(Debug)]
pub(crate) enum Incoming {
    Connected,
    Lost(String),
    SubscribeRefused(usize),
    Message { topic: String, payload: Vec<u8> },
}

/// One poll of the event loop, as the device sees it.
enum Polled {
    Event(Incoming),
    SentDisconnect,
    Nothing,
}

fn v4_qos(qos: u8) -> rumqttc::QoS {
    if qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    }
}

fn v5_qos(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    if qos == 0 {
        rumqttc::v5::mqttbytes::QoS::AtMostOnce
    } else {
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce
    }
}

/// A client for `identity` with a retained QoS 1 last will on `will_topic`.
pub(crate) fn mqtt_client(
    settings: &Settings,
    identity: &Identity,
    will_topic: &str,
    will: Vec<u8>,
) -> (Client, EventLoop) {
    let (host, port, transport) = settings.endpoint.parts();
    let id = identity.id.as_str();
    if settings.v5 {
        let mut options = rumqttc::v5::MqttOptions::new(id, host, port);
        options
            .set_transport(transport)
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_start(true)
            .set_credentials(id, identity.token.as_str())
            .set_max_packet_size(u32::try_from(MAX_PACKET).ok())
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                will_topic,
                will,
                v5_qos(1),
                true,
                None,
            ));
        let (client, events) = rumqttc::v5::AsyncClient::new(options, REQUEST_CAPACITY);
        (Client::V5(client), EventLoop::V5(Box::new(events)))
    } else {
        let mut options = rumqttc::MqttOptions::new(id, host, port);
        options
            .set_transport(transport)
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_credentials(id, identity.token.as_str())
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_last_will(rumqttc::LastWill::new(will_topic, will, v4_qos(1), true));
        let (client, events) = rumqttc::AsyncClient::new(options, REQUEST_CAPACITY);
        (Client::V4(client), EventLoop::V4(Box::new(events)))
    }
}

impl Client {
    /// Queues a PUBLISH without waiting: the device task must never block on its own
    /// network task.
    pub(crate) fn publish(
        &self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
    ) -> anyhow::Result<()> {
        match self {
            Client::V4(c) => c.try_publish(topic, v4_qos(qos), retain, payload)?,
            Client::V5(c) => c.try_publish(topic, v5_qos(qos), retain, payload)?,
        }
        Ok(())
    }

    pub(crate) fn subscribe(&self, filter: &str) -> anyhow::Result<()> {
        match self {
            Client::V4(c) => c.try_subscribe(filter, v4_qos(1))?,
            Client::V5(c) => c.try_subscribe(filter, v5_qos(1))?,
        }
        Ok(())
    }

    pub(crate) fn disconnect(&self) -> anyhow::Result<()> {
        match self {
            Client::V4(c) => c.try_disconnect()?,
            Client::V5(c) => c.try_disconnect()?,
        }
        Ok(())
    }
}

impl EventLoop {
    async fn poll(&mut self) -> Result<Polled, String> {
        match self {
            EventLoop::V4(events) => events.poll().await.map(v4_event).map_err(|e| e.to_string()),
            EventLoop::V5(events) => events.poll().await.map(v5_event).map_err(|e| e.to_string()),
        }
    }
}

fn v4_event(event: rumqttc::Event) -> Polled {
    use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};
    match event {
        Event::Incoming(Packet::ConnAck(_)) => Polled::Event(Incoming::Connected),
        Event::Incoming(Packet::Publish(p)) => Polled::Event(Incoming::Message {
            topic: p.topic,
            payload: p.payload.to_vec(),
        }),
        Event::Incoming(Packet::SubAck(ack)) => {
            let refused = ack
                .return_codes
                .iter()
                .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                .count();
            refused_or_nothing(refused)
        }
        Event::Outgoing(Outgoing::Disconnect) => Polled::SentDisconnect,
        _ => Polled::Nothing,
    }
}

fn v5_event(event: rumqttc::v5::Event) -> Polled {
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
    use rumqttc::v5::Event;
    use rumqttc::Outgoing;
    match event {
        Event::Incoming(Packet::ConnAck(_)) => Polled::Event(Incoming::Connected),
        Event::Incoming(Packet::Publish(p)) => Polled::Event(Incoming::Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
        }),
        Event::Incoming(Packet::SubAck(ack)) => {
            let refused = ack
                .return_codes
                .iter()
                .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                .count();
            refused_or_nothing(refused)
        }
        Event::Outgoing(Outgoing::Disconnect) => Polled::SentDisconnect,
        _ => Polled::Nothing,
    }
}

fn refused_or_nothing(refused: usize) -> Polled {
    if refused == 0 {
        Polled::Nothing
    } else {
        Polled::Event(Incoming::SubscribeRefused(refused))
    }
}

/// Drives one device's connection: forwards what matters and reconnects with jittered
/// exponential backoff. Ends once DISCONNECT went out, the device is gone, or the run is
/// cancelled while the connection is down.
pub(crate) async fn pump(
    mut events: EventLoop,
    tx: mpsc::Sender<Incoming>,
    cancel: CancellationToken,
) {
    let mut rng = Rng::seeded();
    let mut backoff = MIN_BACKOFF;
    loop {
        let incoming = match events.poll().await {
            Ok(Polled::Event(incoming)) => incoming,
            Ok(Polled::Nothing) => continue,
            Ok(Polled::SentDisconnect) => return,
            Err(_) if cancel.is_cancelled() => return,
            Err(error) => {
                if tx.send(Incoming::Lost(error)).await.is_err() {
                    return;
                }
                let wait = backoff + rng.duration(backoff / 2);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancel.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if matches!(incoming, Incoming::Connected) {
            backoff = MIN_BACKOFF;
        }
        if tx.send(incoming).await.is_err() {
            return;
        }
    }
}
