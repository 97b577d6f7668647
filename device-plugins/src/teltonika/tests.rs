//! Tests of the Teltonika codec across its modules: `golden` (Teltonika's published
//! examples, field by field, and named errors) and `props` (round trips, truncation,
//! corruption and arbitrary bytes).

mod golden;
mod props;

/// Bytes from a hex string as the examples print them (no separators).
pub(crate) fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}
