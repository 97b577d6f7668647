//! What the wire and the router carry: guarded MQTT framing with rumqttd's v4/v5 codecs
//! (`framing`), MQTT topic rules (`topic`), and the header that carries what the router
//! forgets about a message through it (`origin`).

pub(crate) mod framing;
pub(crate) mod origin;
pub(crate) mod topic;
