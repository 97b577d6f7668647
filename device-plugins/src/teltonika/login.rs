//! The login: the first thing a tracker sends on a new TCP connection is its IMEI as a
//! 2-byte big-endian length (15) and that many ASCII digits; the server answers one
//! byte, `0x01` to accept or `0x00` to refuse ([`login_answer`]).
//!
//! [`decode_login`] is incremental: it says "more bytes" until the whole login is in
//! the buffer, and refuses as soon as the bytes present can no longer be a login.

use std::fmt;
use std::str::FromStr;

/// How many digits an IMEI has.
pub const IMEI_LEN: usize = 15;

/// How many bytes a login takes on the wire: the length and the digits.
pub const LOGIN_LEN: usize = 2 + IMEI_LEN;

/// A tracker's IMEI: exactly 15 ASCII digits (its check digit is not verified: the
/// tracker's own word is what the device registry is keyed by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Imei([u8; IMEI_LEN]);

impl Imei {
    /// The IMEI as text, e.g. `"356307042441013"`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits get in (`from_digits`), so this never fails.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The 15 digits, checked.
    fn from_digits(digits: &[u8]) -> Result<Self, LoginError> {
        if let Some(at) = digits.iter().position(|b| !b.is_ascii_digit()) {
            return Err(LoginError::NotADigit {
                at,
                byte: digits[at],
            });
        }
        let digits: [u8; IMEI_LEN] = digits
            .try_into()
            .map_err(|_| LoginError::BadLength { len: digits.len() })?;
        Ok(Self(digits))
    }
}

impl fmt::Display for Imei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Imei {
    type Err = LoginError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_digits(s.as_bytes())
    }
}

/// Why bytes are not a tracker's login (or text is not an IMEI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The length prefix (or the text) is not 15.
    #[error("an IMEI has {IMEI_LEN} digits, the login announces {len}")]
    BadLength {
        /// The announced length.
        len: usize,
    },
    /// A byte of the IMEI is not an ASCII digit.
    #[error("IMEI byte {at} is {byte:#04x}, not an ASCII digit")]
    NotADigit {
        /// Its position among the digits.
        at: usize,
        /// The byte.
        byte: u8,
    },
}

/// Reads a login from the front of `buf`: `Ok(None)` while it is incomplete,
/// `Ok(Some((imei, LOGIN_LEN)))` once it is whole (the bytes after it are the tracker's
/// first packet), `Err` as soon as the bytes present cannot be a login.
pub fn decode_login(buf: &[u8]) -> Result<Option<(Imei, usize)>, LoginError> {
    let Some((len, digits)) = buf.split_first_chunk::<2>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes(*len));
    if len != IMEI_LEN {
        return Err(LoginError::BadLength { len });
    }
    let present = &digits[..digits.len().min(IMEI_LEN)];
    if present.len() < IMEI_LEN {
        // Refuse early what can never become digits; else wait for the rest.
        return match Imei::from_digits(present) {
            Err(e @ LoginError::NotADigit { .. }) => Err(e),
            _ => Ok(None),
        };
    }
    Imei::from_digits(present).map(|imei| Some((imei, LOGIN_LEN)))
}

/// The login a tracker sends for `imei` (for simulators and tests).
pub fn encode_login(imei: &Imei) -> [u8; LOGIN_LEN] {
    let mut out = [0u8; LOGIN_LEN];
    out[..2].copy_from_slice(&(IMEI_LEN as u16).to_be_bytes());
    out[2..].copy_from_slice(&imei.0);
    out
}

/// The server's one-byte answer to a login: `0x01` accepts the tracker, `0x00`
/// refuses it (the server then closes the connection).
pub fn login_answer(accepted: bool) -> [u8; 1] {
    [u8::from(accepted)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IMEI login of Teltonika's examples: 000F followed by "356307042441013"
    /// (https://wiki.teltonika-gps.com/view/Codec, "Communication with server").
    const LOGIN_HEX: &str = "000F333536333037303432343431303133";

    fn hex(s: &str) -> Vec<u8> {
        crate::teltonika::tests::hex(s)
    }

    #[test]
    fn published_login_decodes_and_encodes_back() {
        let bytes = hex(LOGIN_HEX);
        let (imei, used) = decode_login(&bytes).unwrap().unwrap();
        assert_eq!(imei.as_str(), "356307042441013");
        assert_eq!(imei.to_string(), "356307042441013");
        assert_eq!(used, LOGIN_LEN);
        assert_eq!(encode_login(&imei).as_slice(), bytes.as_slice());
        assert_eq!("356307042441013".parse::<Imei>(), Ok(imei));
    }

    #[test]
    fn every_prefix_wants_more_and_the_rest_is_left() {
        let mut bytes = hex(LOGIN_HEX);
        for end in 0..bytes.len() {
            assert_eq!(decode_login(&bytes[..end]), Ok(None), "prefix {end}");
        }
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode_login(&bytes).unwrap().unwrap().1, LOGIN_LEN);
    }

    #[test]
    fn refusals_name_the_problem_as_early_as_possible() {
        assert_eq!(
            decode_login(&[0, 16]),
            Err(LoginError::BadLength { len: 16 })
        );
        assert_eq!(decode_login(&[0, 0]), Err(LoginError::BadLength { len: 0 }));
        assert_eq!(
            decode_login(&[0, 15, b'3', b'x']),
            Err(LoginError::NotADigit { at: 1, byte: b'x' })
        );
        assert_eq!(
            "35630704244101".parse::<Imei>(),
            Err(LoginError::BadLength { len: 14 })
        );
        assert_eq!(
            "35630704244101a".parse::<Imei>(),
            Err(LoginError::NotADigit { at: 14, byte: b'a' })
        );
        assert_eq!(
            LoginError::BadLength { len: 16 }.to_string(),
            "an IMEI has 15 digits, the login announces 16"
        );
    }

    #[test]
    fn login_answers() {
        assert_eq!(login_answer(true), [1]);
        assert_eq!(login_answer(false), [0]);
    }
}
