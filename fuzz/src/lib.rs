//! The checks behind fleetmq's fuzz targets, one module per codec; each target in
//! `fuzz_targets/` is one line that hands libFuzzer's input to a module's `check`
//! (rustls's style), so the checks also run as plain tests over the seed corpus.
//!
//! - [`framing`]: the guarded MQTT framing (peek, CONNECT version, decode with
//!   rumqttd's v4/v5 codecs) as a connection drives it.
//! - [`envelope`]: the SPEC §4 payload envelope, opening arbitrary bytes and sealing
//!   then opening arbitrary plaintexts.
//! - [`device_json`]: the json plugin's decoders for telemetry, command responses,
//!   status and events.
//! - [`storage_records`]: the decoders of every record the store reads back from redb.
//! - [`teltonika`]: the Teltonika tracker codec: IMEI login, frames over a stream,
//!   Codec 8/8E/16 records and their telemetry, Codec 12 messages.
//!
//! Every check panics when an invariant fails, not only when a codec panics: what
//! decodes must encode and decode back to the same value, and two paths that must
//! agree (the telemetry scanner and serde_json, the raw PUBLISH header reader and
//! rumqttd) are compared.

#![forbid(unsafe_code)]

pub mod device_json;
pub mod envelope;
pub mod framing;
pub mod storage_records;
pub mod teltonika;

#[cfg(test)]
mod seeds;
