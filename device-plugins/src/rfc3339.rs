//! A strict RFC 3339 `date-time` parser and a UTC formatter, in unix milliseconds.
//!
//! Grammar accepted (RFC 3339 §5.6): `YYYY-MM-DD` `T` `hh:mm:ss` [`.` 1*DIGIT]
//! (`Z` | (`+`|`-`) `hh:mm`), with `t`/`z` accepted in lower case as §5.6 allows. Nothing
//! else: no space separator, no missing seconds, no `+hhmm`, no trailing text.
//!
//! Fractions beyond milliseconds are truncated. A leap second (`:60`) is accepted, as
//! the grammar allows, and counted as the first second of the next minute, since unix
//! time has no leap seconds. `-00:00` ("offset unknown") is read as UTC.

const MS_PER_DAY: i64 = 86_400_000;

/// Why a string is not an RFC 3339 timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rfc3339Error {
    /// The text does not follow the grammar; `at` is the byte offset of the problem.
    #[error("not an RFC 3339 date-time (byte {at})")]
    Syntax {
        /// Byte offset where the grammar was broken.
        at: usize,
    },
    /// A field is syntactically fine but out of range (e.g. month 13, 31 April).
    #[error("RFC 3339 field `{0}` out of range")]
    OutOfRange(&'static str),
}

/// Parses an RFC 3339 `date-time` into unix milliseconds (negative before 1970).
pub fn parse(s: &str) -> Result<i64, Rfc3339Error> {
    let mut cur = Cursor {
        bytes: s.as_bytes(),
        pos: 0,
    };
    let year = cur.number(4)?;
    cur.expect(b"-")?;
    let month = cur.number(2)?;
    cur.expect(b"-")?;
    let day = cur.number(2)?;
    cur.expect(b"Tt")?;
    let hour = cur.number(2)?;
    cur.expect(b":")?;
    let minute = cur.number(2)?;
    cur.expect(b":")?;
    let second = cur.number(2)?;
    let millis = cur.fraction_ms()?;
    let offset_min = cur.offset()?;
    if cur.pos != cur.bytes.len() {
        return Err(Rfc3339Error::Syntax { at: cur.pos });
    }
    check_range("month", month, 1, 12)?;
    check_range("day", day, 1, days_in_month(year, month))?;
    check_range("hour", hour, 0, 23)?;
    check_range("minute", minute, 0, 59)?;
    check_range("second", second, 0, 60)?;
    let days = days_from_civil(year, month, day);
    let secs = hour * 3600 + minute * 60 + second - offset_min * 60;
    Ok(days * MS_PER_DAY + secs * 1000 + millis)
}

/// Formats unix milliseconds as `YYYY-MM-DDThh:mm:ss.mmmZ`; `None` outside years 0-9999.
pub fn format_utc_ms(ms: i64) -> Option<String> {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let (secs, millis) = (in_day / 1000, in_day % 1000);
    // Written digit by digit: every command record and API answer carries several of
    // these, and `format!` was ~3 % of the broker's CPU per command (docs/benchmarks.md).
    let mut out = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut out[0..4], year);
    put_digits(&mut out[5..7], month);
    put_digits(&mut out[8..10], day);
    put_digits(&mut out[11..13], secs / 3600);
    put_digits(&mut out[14..16], secs / 60 % 60);
    put_digits(&mut out[17..19], secs % 60);
    put_digits(&mut out[20..23], millis);
    std::str::from_utf8(&out).ok().map(str::to_owned)
}

/// Writes `value` (0 <= value < 10^len) as `len` decimal digits, zero-padded.
fn put_digits(out: &mut [u8], mut value: i64) {
    for slot in out.iter_mut().rev() {
        // `value % 10` is 0..=9 for the non-negative values callers pass.
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// A read position over the input bytes; every read checks the length first.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn syntax(&self) -> Rfc3339Error {
        Rfc3339Error::Syntax { at: self.pos }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Consumes one byte that must be one of `allowed`.
    fn expect(&mut self, allowed: &[u8]) -> Result<u8, Rfc3339Error> {
        match self.peek() {
            Some(b) if allowed.contains(&b) => {
                self.pos += 1;
                Ok(b)
            }
            _ => Err(self.syntax()),
        }
    }

    /// Consumes exactly `width` ASCII digits.
    fn number(&mut self, width: usize) -> Result<i64, Rfc3339Error> {
        let mut n = 0i64;
        for _ in 0..width {
            match self.peek() {
                Some(b @ b'0'..=b'9') => n = n * 10 + i64::from(b - b'0'),
                _ => return Err(self.syntax()),
            }
            self.pos += 1;
        }
        Ok(n)
    }

    /// Reads an optional `.` 1*DIGIT fraction as whole milliseconds (truncated).
    fn fraction_ms(&mut self) -> Result<i64, Rfc3339Error> {
        if self.peek() != Some(b'.') {
            return Ok(0);
        }
        self.pos += 1;
        let (mut ms, mut digits) = (0i64, 0usize);
        while let Some(b @ b'0'..=b'9') = self.peek() {
            if digits < 3 {
                ms = ms * 10 + i64::from(b - b'0');
            }
            digits += 1;
            self.pos += 1;
        }
        if digits == 0 {
            return Err(self.syntax());
        }
        for _ in digits..3 {
            ms *= 10;
        }
        Ok(ms)
    }

    /// Reads `Z` or `±hh:mm`, as minutes east of UTC.
    fn offset(&mut self) -> Result<i64, Rfc3339Error> {
        let sign = match self.expect(b"Zz+-")? {
            b'+' => 1,
            b'-' => -1,
            _ => return Ok(0),
        };
        let hours = self.number(2)?;
        self.expect(b":")?;
        let minutes = self.number(2)?;
        check_range("offset hour", hours, 0, 23)?;
        check_range("offset minute", minutes, 0, 59)?;
        Ok(sign * (hours * 60 + minutes))
    }
}

fn check_range(field: &'static str, value: i64, min: i64, max: i64) -> Result<(), Rfc3339Error> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Rfc3339Error::OutOfRange(field))
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` of `year`; 0 for a month outside 1-12 (so any day is out of range).
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: `(year, month, day)`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_valid_timestamps() {
        let cases: &[(&str, i64)] = &[
            ("1970-01-01T00:00:00Z", 0),
            ("1970-01-01T00:00:00.001Z", 1),
            ("1970-01-01T00:00:00.5Z", 500),
            ("1970-01-01T00:00:00.123456789Z", 123),
            ("2024-03-01T12:34:56Z", 1_709_296_496_000),
            ("2024-03-01T14:34:56+02:00", 1_709_296_496_000),
            ("2024-03-01T07:04:56-05:30", 1_709_296_496_000),
            ("2024-03-01t12:34:56z", 1_709_296_496_000),
            ("2024-03-01T12:34:56-00:00", 1_709_296_496_000),
            ("2024-02-29T00:00:00Z", 1_709_164_800_000),
            ("2000-02-29T00:00:00Z", 951_782_400_000),
            ("1969-12-31T23:59:59.999Z", -1),
            ("1600-01-01T00:00:00Z", -11_676_096_000_000),
            ("2016-12-31T23:59:60Z", 1_483_228_800_000),
            ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn rejects_syntax_errors() {
        let cases = [
            "",
            "2024",
            "2024-03-01",
            "2024-03-01 12:34:56Z",
            "2024-03-01T12:34Z",
            "2024-03-01T12:34:56",
            "2024-03-01T12:34:56.Z",
            "2024-03-01T12:34:56+0200",
            "2024-03-01T12:34:56+02",
            "2024-03-01T12:34:56Zjunk",
            "24-03-01T12:34:56Z",
            "2024-3-01T12:34:56Z",
            "+2024-03-01T12:34:56Z",
            "2024-03-01T12:34:56,5Z",
            "２０２４-03-01T12:34:56Z",
            " 2024-03-01T12:34:56Z",
        ];
        for text in cases {
            assert!(
                matches!(parse(text), Err(Rfc3339Error::Syntax { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_out_of_range_fields() {
        let cases = [
            ("2024-00-01T00:00:00Z", "month"),
            ("2024-13-01T00:00:00Z", "month"),
            ("2024-04-31T00:00:00Z", "day"),
            ("2023-02-29T00:00:00Z", "day"),
            ("1900-02-29T00:00:00Z", "day"),
            ("2024-01-00T00:00:00Z", "day"),
            ("2024-01-01T24:00:00Z", "hour"),
            ("2024-01-01T00:60:00Z", "minute"),
            ("2024-01-01T00:00:61Z", "second"),
            ("2024-01-01T00:00:00+24:00", "offset hour"),
            ("2024-01-01T00:00:00+01:60", "offset minute"),
        ];
        for (text, field) in cases {
            assert_eq!(parse(text), Err(Rfc3339Error::OutOfRange(field)), "{text}");
        }
    }

    #[test]
    fn syntax_error_names_the_byte() {
        assert_eq!(
            parse("2024-03-01X00:00:00Z"),
            Err(Rfc3339Error::Syntax { at: 10 })
        );
    }

    #[test]
    fn formats_utc_with_millis() {
        assert_eq!(
            format_utc_ms(0).as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(
            format_utc_ms(1_709_296_496_007).as_deref(),
            Some("2024-03-01T12:34:56.007Z")
        );
        assert_eq!(
            format_utc_ms(-1).as_deref(),
            Some("1969-12-31T23:59:59.999Z")
        );
        assert_eq!(format_utc_ms(253_402_300_800_000), None);
        assert_eq!(format_utc_ms(i64::MIN), None);
    }

    /// Timestamps that are almost, or exactly, RFC 3339.
    const NEAR_MISS: &str = "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}\
                             (\\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})?";

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_near_misses(s in NEAR_MISS) {
            let _ = parse(&s);
        }

        #[test]
        fn format_writes_what_format_macro_wrote(ms in -62_167_219_200_000i64..253_402_300_800_000) {
            let days = ms.div_euclid(MS_PER_DAY);
            let in_day = ms.rem_euclid(MS_PER_DAY);
            let (year, month, day) = civil_from_days(days);
            let secs = in_day / 1000;
            let expected = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
                secs / 3600,
                secs / 60 % 60,
                secs % 60,
                in_day % 1000
            );
            prop_assert_eq!(format_utc_ms(ms), Some(expected));
        }

        #[test]
        fn format_then_parse_round_trips(ms in -62_167_219_200_000i64..253_402_300_800_000) {
            let text = format_utc_ms(ms).expect("in range");
            prop_assert_eq!(parse(&text), Ok(ms));
        }
    }
}
