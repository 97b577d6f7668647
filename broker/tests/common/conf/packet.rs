//! What the test client sends: CONNECT contents, v5 property and filter builders, and
//! hand-made PUBLISH frames for what rumqttc will not encode.

use bytes::{BufMut, BytesMut};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS;

use super::{ConnectProperties, LastWillProperties, PublishProperties, Ver};

/// What goes into a CONNECT.
#[derive(Debug, Clone)]
pub struct Conn {
    pub id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub props: Option<ConnectProperties>,
    pub login: Option<(String, String)>,
}

/// A last will.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Option<LastWillProperties>,
}

impl Conn {
    pub fn new(id: &str) -> Conn {
        Conn {
            id: id.to_owned(),
            clean: true,
            keep_alive: 60,
            will: None,
            props: None,
            login: None,
        }
    }

    /// A session that outlives the connection and resumes a stored one: Clean Session 0
    /// (3.1.1); Clean Start 0 and a Session Expiry Interval of `expiry` seconds (5).
    pub fn persistent(id: &str, ver: Ver, expiry: u32) -> Conn {
        let mut c = Conn::new(id);
        c.clean = false;
        if ver == Ver::V5 {
            c = c.props(connect_props(|p| p.session_expiry_interval = Some(expiry)));
        }
        c
    }

    pub fn keep_alive(mut self, secs: u16) -> Conn {
        self.keep_alive = secs;
        self
    }

    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8) -> Conn {
        self.will = Some(Will {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            qos,
            retain: false,
            props: None,
        });
        self
    }

    pub fn will_props(mut self, props: LastWillProperties) -> Conn {
        if let Some(w) = self.will.as_mut() {
            w.props = Some(props);
        }
        self
    }

    pub fn props(mut self, props: ConnectProperties) -> Conn {
        self.props = Some(props);
        self
    }
}

/// Will properties with nothing set.
pub fn will_props() -> LastWillProperties {
    LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    }
}

/// Default connect properties with one field changed.
pub fn connect_props(f: impl FnOnce(&mut ConnectProperties)) -> ConnectProperties {
    let mut p = ConnectProperties::new();
    f(&mut p);
    p
}

pub(super) fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

pub(super) fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

/// A PUBLISH in the wire format of `ver`, with a raw property block for v5 (for
/// properties rumqttc will not encode, such as a topic alias with an empty topic).
pub fn raw_publish(
    ver: Ver,
    topic: &str,
    payload: &[u8],
    q: u8,
    pkid: u16,
    props: &[u8],
) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(topic.len() as u16);
    body.put_slice(topic.as_bytes());
    if q > 0 {
        body.put_u16(pkid);
    }
    if ver == Ver::V5 {
        put_var_int(&mut body, props.len());
        body.put_slice(props);
    }
    body.put_slice(payload);
    let mut out = BytesMut::new();
    out.put_u8(0x30 | (q << 1));
    put_var_int(&mut out, body.len());
    out.put_slice(&body);
    out.to_vec()
}

pub fn put_var_int(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

/// Publish properties with one field set.
pub fn publish_props(f: impl FnOnce(&mut PublishProperties)) -> Option<PublishProperties> {
    let mut p = PublishProperties::default();
    f(&mut p);
    Some(p)
}

/// A subscription filter with v5 options.
pub fn filter(path: &str, q: u8) -> p5::Filter {
    let mut f = p5::Filter::new(path, qos(q));
    f.preserve_retain = false;
    f
}
