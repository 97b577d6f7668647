//! Identifiers with invariants checked once, at the edge.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest device id, in bytes (all valid ids are ASCII).
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// A device id, valid per SPEC §2: `[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}`.
///
/// The only ways to build one check the rule ([`FromStr`], [`TryFrom`],
/// deserialization), so a `DeviceId` is always safe to splice into a topic
/// (`device/{id}/...`): it never contains `/`, `+`, `#` or `$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

/// A string that is not a valid [`DeviceId`]; the message names the rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device id: {reason}; a device id must match [A-Za-z0-9][A-Za-z0-9_.:-]{{0,127}}")]
pub struct InvalidDeviceId {
    reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    Empty,
    TooLong(usize),
    BadFirst(char),
    BadChar { index: usize, ch: char },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Empty => f.write_str("it is empty"),
            Reason::TooLong(len) => {
                write!(
                    f,
                    "it is {len} bytes long, the limit is {MAX_DEVICE_ID_LEN}"
                )
            }
            Reason::BadFirst(ch) => {
                write!(
                    f,
                    "it starts with {ch:?}, which is not an ASCII letter or digit"
                )
            }
            Reason::BadChar { index, ch } => write!(f, "{ch:?} at byte {index} is not allowed"),
        }
    }
}

fn validate(s: &str) -> Result<(), InvalidDeviceId> {
    let fail = |reason| Err(InvalidDeviceId { reason });
    let mut chars = s.char_indices();
    let Some((_, first)) = chars.next() else {
        return fail(Reason::Empty);
    };
    if s.len() > MAX_DEVICE_ID_LEN {
        return fail(Reason::TooLong(s.len()));
    }
    if !first.is_ascii_alphanumeric() {
        return fail(Reason::BadFirst(first));
    }
    for (index, ch) in chars {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | ':' | '-')) {
            return fail(Reason::BadChar { index, ch });
        }
    }
    Ok(())
}

impl DeviceId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the id, returning the inner string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for DeviceId {
    type Err = InvalidDeviceId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate(s)?;
        Ok(DeviceId(s.to_owned()))
    }
}

impl TryFrom<String> for DeviceId {
    type Error = InvalidDeviceId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate(&s)?;
        Ok(DeviceId(s))
    }
}

impl TryFrom<&str> for DeviceId {
    type Error = InvalidDeviceId;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Eq/Ord/Hash are derived from the inner String, so they agree with str's.
impl Borrow<str> for DeviceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_examples() {
        for ok in [
            "a",
            "Z",
            "0",
            "sensor-1",
            "disp_01.lobby:east",
            &"x".repeat(128),
        ] {
            let id: DeviceId = ok.parse().unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.to_string(), ok);
        }
    }

    #[test]
    fn rejects_examples() {
        for bad in [
            "",
            "-a",
            "_a",
            ".a",
            ":a",
            "a/b",
            "a+b",
            "a#",
            "$SYS",
            "a b",
            "é",
            "aé",
            &"x".repeat(129),
        ] {
            assert!(bad.parse::<DeviceId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn error_names_the_rule() {
        let e = "a/b".parse::<DeviceId>().unwrap_err().to_string();
        assert!(e.contains("'/'"), "{e}");
        assert!(e.contains("[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"), "{e}");
        let e = "".parse::<DeviceId>().unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn serde_is_a_validated_string() {
        let id: DeviceId = "dev-1".parse().unwrap();
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes, b"\x05dev-1");
        let back: DeviceId = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, id);
        assert!(postcard::from_bytes::<DeviceId>(b"\x03a/b").is_err());
    }

    proptest! {
        #[test]
        fn valid_strings_accepted(s in "[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}") {
            let id: DeviceId = s.parse().unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
        }

        #[test]
        fn wildcards_and_dollar_rejected(
            prefix in "[A-Za-z0-9][A-Za-z0-9_.:-]{0,60}",
            bad in "[/+#$]",
            suffix in "[A-Za-z0-9_.:-]{0,60}",
        ) {
            let s = format!("{prefix}{bad}{suffix}");
            prop_assert!(s.parse::<DeviceId>().is_err());
            let s = format!("{bad}{suffix}");
            prop_assert!(s.parse::<DeviceId>().is_err());
        }

        #[test]
        fn too_long_rejected(s in "[A-Za-z0-9][A-Za-z0-9_.:-]{128,300}") {
            prop_assert!(s.parse::<DeviceId>().is_err());
        }

        #[test]
        fn never_panics(s in ".*") {
            let _ = s.parse::<DeviceId>();
        }
    }
}
