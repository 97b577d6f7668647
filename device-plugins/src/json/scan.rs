//! A validating scanner for telemetry objects: one pass over the payload, no
//! allocation, accepting exactly what `serde_json::from_slice::<Value>` accepts as an
//! object (RFC 8259 with serde_json's limits: nesting at most 127 deep, paired UTF-16
//! surrogates in `\u` escapes, numbers that fit an `f64`).
//!
//! It finds what storing a payload as sent needs: the text of the last top-level `ts`
//! member's value and a *shape*, a hash of the top-level key names in order, which the
//! store uses to tell payloads with the same keys apart without parsing them.
//!
//! Anything it refuses is handed to serde_json by the caller for the error message, so
//! a scanner stricter than serde_json would cost speed, never a payload; the tests
//! compare both on valid and invalid input.
//!
//! Why hand-written: against serde_json's borrowing deserializer giving the same answer
//! it is 1.2–1.96x faster (geometric mean 1.4x) on realistic device payloads
//! (`examples/telemetry_check.rs`, numbers in `docs/perf-log/session-9.md`), on the
//! path every telemetry message takes.

/// serde_json's nesting limit: 127 arrays or objects deep, the outer object included
/// (its budget of 128 must stay above zero).
const MAX_DEPTH: usize = 127;

/// What one scan found in a valid object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned<'a> {
    /// The last top-level `ts` member's value, as its JSON text.
    pub(crate) ts: Option<&'a [u8]>,
    /// A hash of the top-level key names (as written, `ts` included) in order.
    pub(crate) shape: u64,
}

/// Scans `payload` as one JSON object (whitespace around it allowed). `None`: it is not
/// one, or the scanner cannot tell (then serde_json decides).
pub(crate) fn scan_object(payload: &[u8]) -> Option<Scanned<'_>> {
    let mut s = Scanner {
        b: payload,
        pos: 0,
        depth: 0,
    };
    s.ws();
    let found = s.top_object()?;
    s.ws();
    (s.pos == payload.len()).then_some(found)
}

/// Calls `f(key, escaped, value)` for each top-level member of `object`, one JSON
/// object, in order, allocating nothing: `key` is the name's text between its quotes
/// (`escaped`: with `\` escapes as written), `value` the member's JSON text. `None`
/// when `object` is not valid JSON (calls already made stand). Lets a reader of a
/// stored object pick the few members it needs without building a map.
pub fn object_members<'a>(object: &'a [u8], f: impl FnMut(&'a [u8], bool, &'a [u8])) -> Option<()> {
    let mut s = Scanner {
        b: object,
        pos: 0,
        depth: 0,
    };
    s.ws();
    s.top_members(f)?;
    s.ws();
    (s.pos == object.len()).then_some(())
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    depth: usize,
}

/// FNV-1a's prime and offset, applied per byte of each key and once between keys.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.pos += 1)
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// The outer object, recording its `ts` and its keys' shape.
    fn top_object(&mut self) -> Option<Scanned<'a>> {
        let mut found = Scanned {
            ts: None,
            shape: FNV_OFFSET,
        };
        self.top_members(|key, escaped, value| {
            for &c in key {
                found.shape = (found.shape ^ u64::from(c)).wrapping_mul(FNV_PRIME);
            }
            // A separator no key byte can be: `"` appears in a key only escaped.
            found.shape = (found.shape ^ u64::from(b'"')).wrapping_mul(FNV_PRIME);
            if key == b"ts" || (escaped && is_escaped_ts(key)) {
                found.ts = Some(value);
            }
        })?;
        Some(found)
    }

    /// The outer object: `f(key, escaped, value)` for each member in order, with the
    /// key's text between its quotes (escapes as written) and the value's JSON text.
    fn top_members(&mut self, mut f: impl FnMut(&'a [u8], bool, &'a [u8])) -> Option<()> {
        self.eat(b'{')?;
        self.enter()?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            let (start, escaped) = self.string()?;
            let key = &self.b[start..self.pos - 1];
            self.ws();
            self.eat(b':')?;
            self.ws();
            let value_start = self.pos;
            self.value()?;
            f(key, escaped, &self.b[value_start..self.pos]);
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn object(&mut self) -> Option<()> {
        self.pos += 1;
        self.enter()?;
        self.ws();
        if self.eat(b'}').is_none() {
            loop {
                self.ws();
                self.string()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
                self.value()?;
                self.ws();
                match self.peek()? {
                    b',' => self.pos += 1,
                    b'}' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn array(&mut self) -> Option<()> {
        self.pos += 1;
        self.enter()?;
        self.ws();
        if self.eat(b']').is_none() {
            loop {
                self.ws();
                self.value()?;
                self.ws();
                match self.peek()? {
                    b',' => self.pos += 1,
                    b']' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.b.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A string starting at `"`; returns where its text starts and whether it has
    /// escapes, leaving `pos` after the closing quote.
    fn string(&mut self) -> Option<(usize, bool)> {
        self.eat(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let c = self.peek()?;
            match c {
                b'"' => {
                    self.pos += 1;
                    return Some((start, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    self.escape()?;
                }
                0x00..=0x1f => return None,
                0x20..=0x7f => self.pos += 1,
                _ => self.utf8()?,
            }
        }
    }

    /// One escape after its backslash. A UTF-16 surrogate must be a leading one
    /// followed at once by `\u` and a trailing one, as serde_json requires of text
    /// it decodes into a `String`.
    fn escape(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                self.pos += 1;
                Some(())
            }
            b'u' => {
                self.pos += 1;
                let n = self.hex4()?;
                match n {
                    0xDC00..=0xDFFF => None,
                    0xD800..=0xDBFF => {
                        self.eat(b'\\')?;
                        self.eat(b'u')?;
                        (0xDC00..=0xDFFF).contains(&self.hex4()?).then_some(())
                    }
                    _ => Some(()),
                }
            }
            _ => None,
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = self.b.get(self.pos..self.pos + 4)?;
        let mut n = 0u16;
        for &d in digits {
            n = n << 4 | u16::from(char::from(d).to_digit(16)? as u8);
        }
        self.pos += 4;
        Some(n)
    }

    /// One multi-byte UTF-8 character (RFC 3629: no overlong forms, no surrogates,
    /// nothing above U+10FFFF), as `str::from_utf8` checks it.
    fn utf8(&mut self) -> Option<()> {
        let rest = &self.b[self.pos..];
        let len = match rest[0] {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return None,
        };
        let ch = std::str::from_utf8(rest.get(..len)?).ok()?;
        debug_assert_eq!(ch.chars().count(), 1);
        self.pos += len;
        Some(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, and finite as an `f64`
    /// (serde_json refuses a number out of range).
    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let int_len = self.pos - start;
        let mut plain = true;
        if self.eat(b'.').is_some() {
            plain = false;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            plain = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.some_digits()?;
        }
        // Up to 300 integer digits fit an f64 whatever they are; longer or with a
        // fraction or an exponent, ask the standard library (correctly rounded).
        if plain && int_len <= 300 {
            return Some(());
        }
        let text = std::str::from_utf8(&self.b[start..self.pos]).ok()?;
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|_| ())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }
}

/// Whether an escaped key's text decodes to `ts`.
#[cold]
fn is_escaped_ts(key: &[u8]) -> bool {
    let mut quoted = Vec::with_capacity(key.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(key);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == "ts")
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
