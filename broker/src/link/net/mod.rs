//! Bytes in and out: the TCP, WebSocket and TLS accept loops (`listener`), one
//! byte-stream type over all three (`transport`), and TLS settings (`tls`).

pub(crate) mod listener;
pub(crate) mod tls;
pub(crate) mod transport;
