//! Simulated Teltonika trackers, shared by the `tracker_sim` example and the `fleet`
//! benchmark's tracker scenario (`benches/fleet/trackers.rs` includes this folder), so
//! the numbers in `docs/benchmarks.md` come from the trackers the example runs.
//!
//! - `tracker`: one tracker's connection: login, packets at its pace, acks, commands,
//!   reconnects.
//! - `wire`: the server's byte stream (record-count acks and Codec 12 commands
//!   interleaved), sans-IO.
//! - `records`: the drive a tracker reports and its Codec 8 Extended packets.
//! - `answers`: the text a tracker answers each command with.
//! - `stats`: shared counters and the ack latency histogram.

#![allow(
    dead_code,
    reason = "shared by the example and a benchmark, each uses part of it"
)]

pub mod answers;
pub mod records;
pub mod stats;
pub mod tracker;
pub mod wire;
