//! Bytes in and out: the TCP, WebSocket, TLS and WebSocket-over-TLS accept loops
//! (`listener`), one byte-stream type over all four (`transport`), and TLS settings
//! (`tls`).

pub(crate) mod listener;
pub(crate) mod tls;
pub(crate) mod transport;
