//! Bytes in and out: the TCP, WebSocket, TLS and WebSocket-over-TLS accept loops
//! (`listener`), one byte-stream type over all four (`transport`), TLS settings (`tls`),
//! and the listener config sections (`settings`).

pub(crate) mod listener;
pub(crate) mod settings;
pub(crate) mod tickets;
pub(crate) mod tls;
pub(crate) mod transport;
