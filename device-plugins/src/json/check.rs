//! Checking a telemetry object without decoding it, on serde_json's borrowing
//! deserializer: it accepts exactly what `serde_json::from_slice::<Value>` accepts as
//! an object (its nesting limit, string and number checks are the same code), and
//! allocates nothing for a payload whose keys are written without escapes.
//!
//! It finds what storing a payload as sent needs: the last top-level `ts` read as unix
//! ms, and a *shape*, a hash of the top-level key names as written, in order, which the
//! store uses to tell payloads with the same keys apart without parsing them. The shape
//! is FNV-1a over each name's bytes followed by `"`, as the hand-written scanner this
//! replaced computed it: shapes are kept in stored summaries.
//!
//! The scanner was 1.2-1.9x faster (geometric mean 1.4x over seven device payloads,
//! 20-120 ns a payload, 42 ns on the fleet bench's: about 1 % of a paced message's
//! broker CPU), for 318 lines that had to agree with serde_json by hand
//! (docs/benchmarks.md, "Issue 14"; `examples/telemetry_check.rs` at `7bdf8a3`).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::rfc3339;

/// What one check found in a valid object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The last top-level `ts` as unix ms; `None` without one, or when it is neither an
    /// RFC 3339 string nor a non-negative number.
    pub(crate) ts_ms: Option<u64>,
    /// A hash of the top-level key names (as written, `ts` included) in order.
    pub(crate) shape: u64,
}

/// Checks `payload` as one JSON object (whitespace around it allowed). `None`: it is
/// not one.
pub(crate) fn check_object(payload: &[u8]) -> Option<Checked> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let (ts_ms, shape) = de.deserialize_map(Object).ok()?;
    de.end().ok()?;
    let shape = match shape {
        Some(shape) => shape,
        None => written_shape(payload)?,
    };
    Some(Checked { ts_ms, shape })
}

/// FNV-1a's prime and offset, applied per byte of each key and to a `"` after it.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// `shape` extended by one key name; the `"` that follows is a byte no name written
/// in JSON has unescaped.
fn add_key(shape: u64, name: &[u8]) -> u64 {
    (name.iter().chain(b"\"")).fold(shape, |h, &c| (h ^ u64::from(c)).wrapping_mul(FNV_PRIME))
}

/// The outer object: its last `ts`, and its shape (`None` when a key was written with
/// escapes: serde_json hands such a key over decoded, not as written).
struct Object;

impl<'de> Visitor<'de> for Object {
    type Value = (Option<u64>, Option<u64>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut ts_ms, mut shape) = (None, Some(FNV_OFFSET));
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let is_ts = match key {
                Key::AsWritten(name) => {
                    shape = shape.map(|h| add_key(h, name.as_bytes()));
                    name == "ts"
                }
                Key::Escaped { is_ts } => {
                    shape = None;
                    is_ts
                }
            };
            if is_ts {
                ts_ms = map.next_value_seed(Ts)?;
            } else {
                map.next_value::<Valid>()?;
            }
        }
        Ok((ts_ms, shape))
    }
}

/// A top-level key: borrowed from the payload (no escapes), or decoded from escapes.
enum Key<'a> {
    AsWritten(&'a str),
    Escaped { is_ts: bool },
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Key<'de>, E> {
        Ok(Key::AsWritten(name))
    }

    fn visit_str<E>(self, name: &str) -> Result<Key<'de>, E> {
        Ok(Key::Escaped {
            is_ts: name == "ts",
        })
    }
}

/// The shape of a payload [`Object`] accepted, from its keys as written: a second pass
/// with each key borrowed raw (quotes and escapes included), values skipped.
#[cold]
fn written_shape(payload: &[u8]) -> Option<u64> {
    struct Keys;

    impl<'de> Visitor<'de> for Keys {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
            let mut shape = FNV_OFFSET;
            while let Some(key) = map.next_key::<&'de RawValue>()? {
                let quoted = key.get().as_bytes();
                shape = add_key(shape, &quoted[1..quoted.len() - 1]);
                map.next_value::<IgnoredAny>()?;
            }
            Ok(shape)
        }
    }

    serde_json::Deserializer::from_slice(payload)
        .deserialize_map(Keys)
        .ok()
}

/// Any value, checked as `Value` checks it (strings decoded, numbers within `f64`),
/// then dropped.
struct Valid;

impl<'de> de::Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Valid)
    }
}

impl<'de> Visitor<'de> for Valid {
    type Value = Valid;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_key::<Valid>()?.is_some() {
            map.next_value::<Valid>()?;
        }
        Ok(self)
    }
}

/// A `ts` value as unix ms, read as [`device_ts_ms`](super::device_ts_ms) reads a
/// `Value` (an RFC 3339 string, a non-negative number); any other value is checked and
/// read as none. Apart from [`Valid`], though they differ only in what they return: one
/// visitor for both was ~5 % slower.
struct Ts;

impl<'de> DeserializeSeed<'de> for Ts {
    type Value = Option<u64>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Ts {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(n).ok())
    }
    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(n))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        // Float ms are accepted; `as` saturates, and the sanity window rejects extremes.
        Ok((f.is_finite() && f >= 0.0).then_some(f as u64))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(rfc3339::parse(s).ok().and_then(|ms| u64::try_from(ms).ok()))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Valid.visit_seq(seq).map(|_| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Valid.visit_map(map).map(|_| None)
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
