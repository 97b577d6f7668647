//! Real MQTT clients (rumqttc, 3.1.1 and 5, over TCP and WebSocket) against a real broker.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, Transport,
};

pub use fleetmq_broker::testing::TestBroker;

pub const WAIT: Duration = Duration::from_secs(5);

/// Which listener and protocol a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Tcp,
    Ws,
}

pub fn options_v4(
    broker: &TestBroker,
    via: Via,
    id: &str,
    creds: Option<(&str, &str)>,
) -> MqttOptions {
    let mut opts = match via {
        Via::Tcp => MqttOptions::new(id, "127.0.0.1", broker.tcp.port()),
        Via::Ws => {
            let mut o = MqttOptions::new(
                id,
                format!("ws://127.0.0.1:{}/mqtt", broker.ws.port()),
                broker.ws.port(),
            );
            o.set_transport(Transport::Ws);
            o
        }
    };
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    opts
}

/// Connects a 3.1.1 client and waits for CONNACK.
pub async fn connect_v4(
    broker: &TestBroker,
    via: Via,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut el) = AsyncClient::new(options_v4(broker, via, id, creds), 100);
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("CONNACK in time")?
        {
            Event::Incoming(Packet::ConnAck(_)) => return Ok((client, el)),
            _ => continue,
        }
    }
}

pub fn options_v5(
    broker: &TestBroker,
    via: Via,
    id: &str,
    creds: Option<(&str, &str)>,
) -> v5::MqttOptions {
    let mut opts = match via {
        Via::Tcp => v5::MqttOptions::new(id, "127.0.0.1", broker.tcp.port()),
        Via::Ws => {
            let mut o = v5::MqttOptions::new(
                id,
                format!("ws://127.0.0.1:{}/mqtt", broker.ws.port()),
                broker.ws.port(),
            );
            o.set_transport(Transport::Ws);
            o
        }
    };
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    opts
}

/// Connects an MQTT 5 client and waits for CONNACK.
pub async fn connect_v5(
    broker: &TestBroker,
    via: Via,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(v5::AsyncClient, v5::EventLoop), v5::ConnectionError> {
    let (client, mut el) = v5::AsyncClient::new(options_v5(broker, via, id, creds), 100);
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("CONNACK in time")?
        {
            v5::Event::Incoming(v5::mqttbytes::v5::Packet::ConnAck(_)) => return Ok((client, el)),
            _ => continue,
        }
    }
}

/// Polls until a packet matching `pick` arrives (within [`WAIT`]).
pub async fn next_v4<T>(el: &mut EventLoop, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(p) = el.poll().await.expect("connection stays up") {
                if let Some(t) = pick(&p) {
                    return t;
                }
            }
        }
    })
    .await
    .expect("expected packet in time")
}

/// Polls for `d`, collecting every incoming PUBLISH (topic, payload).
pub async fn publishes_v4(el: &mut EventLoop, d: Duration) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(d, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    got.push((p.topic.clone(), p.payload.to_vec()))
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    got
}

pub async fn next_v5<T>(
    el: &mut v5::EventLoop,
    mut pick: impl FnMut(&v5::mqttbytes::v5::Packet) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let v5::Event::Incoming(p) = el.poll().await.expect("connection stays up") {
                if let Some(t) = pick(&p) {
                    return t;
                }
            }
        }
    })
    .await
    .expect("expected packet in time")
}

/// Subscribes and waits for the SUBACK; returns its return codes as bytes.
pub async fn subscribe_v4(
    client: &AsyncClient,
    el: &mut EventLoop,
    filter: &str,
    qos: QoS,
) -> Vec<u8> {
    client
        .subscribe(filter, qos)
        .await
        .expect("queue subscribe");
    next_v4(el, |p| match p {
        Packet::SubAck(a) => Some(
            a.return_codes
                .iter()
                .map(|c| match c {
                    rumqttc::SubscribeReasonCode::Success(q) => *q as u8,
                    rumqttc::SubscribeReasonCode::Failure => 0x80,
                })
                .collect(),
        ),
        _ => None,
    })
    .await
}

/// Keeps an event loop polling in the background (acks, pings).
pub fn drive_v4(mut el: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while el.poll().await.is_ok() {} })
}

pub fn drive_v5(mut el: v5::EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while el.poll().await.is_ok() {} })
}

/// A service client that may read and write everything.
pub fn allow_all() -> Vec<fleetmq_storage::AclRule> {
    vec![fleetmq_storage::AclRule {
        action: fleetmq_storage::AclAction::All,
        topic: "#".into(),
        allow: true,
    }]
}

pub fn addr(broker: &TestBroker) -> SocketAddr {
    broker.tcp
}
