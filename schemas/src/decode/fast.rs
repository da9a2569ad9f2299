//! The decoder's fast path: a single forward scan for the shape nearly every event has — one flat
//! object of unescaped strings, plain numbers, booleans and nulls.
//!
//! It either returns the event serde would return, or gives up (`None`) and leaves the input to the
//! serde path, which then decides: anything unusual (an escape, a nested value, an exponent, a
//! duplicate key, a wrong type, a missing time, any error at all) goes there. Values are checked by
//! the same [`FieldValue`] conversions, so the two paths cannot disagree on types; a property test
//! holds them to the same answers on valid and invalid input alike.
//!
//! Why: serde's visitor machinery was about half of the speed layer's time per event.

use std::borrow::Cow;

use super::names::Lookup;
use super::strings::string_end;
use super::{Decoder, FieldValue};
use crate::event::Value;

/// The time of the event in `text`, its field values appended to `values`; or `None`, with
/// `values` as it was, when the input is not in the fast path's shape.
pub(super) fn decode<'a>(
    decoder: &Decoder,
    text: &'a str,
    values: &mut Vec<Value<'a>>,
) -> Option<i64> {
    let base = values.len();
    values.resize(base + decoder.schema.fields.len(), Value::Null);
    let time = scan_event(decoder, text, &mut values[base..]);
    if time.is_none() {
        values.truncate(base);
    }
    time
}

fn scan_event<'a>(decoder: &Decoder, text: &'a str, values: &mut [Value<'a>]) -> Option<i64> {
    let schema = &decoder.schema;
    let time_slot = schema.fields.len();
    if time_slot >= 128 {
        return None;
    }
    let mut scan = Scanner { text, at: 0 };
    let mut time = None;
    let mut seen = 0u128;
    scan.whitespace();
    scan.expect(b'{')?;
    scan.whitespace();
    if !scan.eat(b'}') {
        // The position of the last configured key, from which the next one is predicted.
        let mut previous = decoder.order.start();
        loop {
            let predicted = decoder.order.predict(previous, text.as_bytes(), scan.at);
            let position = match predicted {
                Some((position, after_key)) => {
                    scan.at = after_key;
                    Some(position)
                }
                None => {
                    let (start, end) = scan.string_span()?;
                    let slot = match decoder
                        .names
                        .as_ref()
                        .map(|n| n.get(text.as_bytes(), start, end))
                    {
                        Some(Lookup::Found(slot)) => Some(slot),
                        Some(Lookup::Absent) => None,
                        Some(Lookup::TooLong) | None => {
                            decoder.slots.get(&text[start..end]).copied()
                        }
                    };
                    let position = slot.map(|slot| decoder.position(slot));
                    if let Some(position) = position {
                        decoder.order.learn(previous, position);
                    }
                    position
                }
            };
            scan.whitespace();
            scan.expect(b':')?;
            scan.whitespace();
            match position {
                None => scan.skip_scalar()?,
                Some(position) => {
                    if seen & (1 << position) != 0 {
                        return None;
                    }
                    seen |= 1 << position;
                    previous = position;
                    let value = scan.value(decoder.target(position))?;
                    match values.get_mut(position) {
                        Some(slot) => *slot = value,
                        None => time = Some(value),
                    }
                }
            }
            scan.whitespace();
            if scan.eat(b',') {
                scan.whitespace();
                continue;
            }
            scan.expect(b'}')?;
            break;
        }
    }
    scan.whitespace();
    if scan.at != text.len() {
        return None;
    }
    match time {
        Some(Value::Timestamp(time_ms)) => Some(time_ms),
        _ => None,
    }
}

/// A number as [`Scanner::number`] reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Integer(i64),
    Float(f64),
}

/// The powers of ten that are exact doubles: 1e0 to 1e22.
const POWERS: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string without escapes or control characters, borrowed; `None` for anything else.
    fn string(&mut self) -> Option<&'a str> {
        let (start, end) = self.string_span()?;
        // Quotes are ASCII, so both ends are character boundaries of the (valid UTF-8) text.
        self.text.get(start..end)
    }

    /// Where the contents of [`Self::string`] lie in the text.
    fn string_span(&mut self) -> Option<(usize, usize)> {
        self.expect(b'"')?;
        let start = self.at;
        let bytes = self.text.as_bytes();
        let end = start + string_end(&bytes[start..])?;
        if bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        Some((start, end))
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let found = self.text[self.at..].starts_with(word);
        self.at += if found { word.len() } else { 0 };
        found.then_some(())
    }

    /// A number in JSON's grammar without an exponent, read as serde reads it: an integer when it
    /// has no fraction, else a finite float; `None` for "-0" (serde reads it as the float -0.0)
    /// and for an integer beyond i64 (serde reads those as u64 or f64 in its own ways).
    ///
    /// The digits are summed as they are scanned. A float whose digits fit 2^53 with at most 22 of
    /// them after the point is that sum divided by a power of ten: both are exact doubles, so the
    /// one rounded division is the correctly rounded value `str::parse` returns (Clinger's fast
    /// path). Longer numbers are left to `str::parse`.
    fn number(&mut self) -> Option<Number> {
        let start = self.at;
        let negative = self.eat(b'-');
        let mut sum = 0u64;
        let whole = self.digits(&mut sum);
        if whole == 0 || (whole > 1 && self.text.as_bytes()[self.at - whole] == b'0') {
            return None;
        }
        let fraction = if self.eat(b'.') {
            match self.digits(&mut sum) {
                0 => return None,
                digits => Some(digits),
            }
        } else {
            None
        };
        if matches!(self.peek(), Some(b'e' | b'E')) {
            return None;
        }
        let text = &self.text[start..self.at];
        let signed = |value: f64| if negative { -value } else { value };
        match fraction {
            None if negative && sum == 0 => None,
            None if whole <= 18 => {
                let value = sum as i64;
                Some(Number::Integer(if negative { -value } else { value }))
            }
            None => text.parse().ok().map(Number::Integer),
            Some(digits) if whole + digits <= 19 && sum <= 1 << 53 && digits < POWERS.len() => {
                Some(Number::Float(signed(sum as f64 / POWERS[digits])))
            }
            Some(_) => {
                let value: f64 = text.parse().ok()?;
                value.is_finite().then_some(Number::Float(value))
            }
        }
    }

    /// Skips ASCII digits, adding each to `sum` (wrapping: callers use `sum` only for counts
    /// that cannot overflow); returns how many there were.
    fn digits(&mut self, sum: &mut u64) -> usize {
        let start = self.at;
        while let Some(digit) = self.peek().filter(u8::is_ascii_digit) {
            *sum = sum.wrapping_mul(10).wrapping_add(u64::from(digit - b'0'));
            self.at += 1;
        }
        self.at - start
    }

    /// Skips the value of a key the schema does not name: scalars only.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.number().map(drop),
        }
    }

    /// The value of a configured field, converted as serde's path converts it.
    fn value(&mut self, target: FieldValue<'_>) -> Option<Value<'a>> {
        let value = match self.peek()? {
            b'"' => target.string(Cow::Borrowed(self.string()?)),
            b't' => {
                self.literal("true")?;
                target.boolean(true)
            }
            b'f' => {
                self.literal("false")?;
                target.boolean(false)
            }
            b'n' => {
                self.literal("null")?;
                Ok(Value::Null)
            }
            _ => match self.number()? {
                Number::Integer(value) => target.integer(value),
                Number::Float(value) => target.float(value),
            },
        };
        value.ok()
    }
}

/// Epoch milliseconds of an RFC 3339 time in its usual spelling,
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, read the way chrono reads it (the fraction truncated
/// to milliseconds). `None` for any other spelling, an impossible date, or a leap second: chrono
/// decides those.
pub(super) fn rfc3339_millis(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let at = |i: usize, byte: u8| (b.get(i) == Some(&byte)).then_some(());
    at(4, b'-')?;
    at(7, b'-')?;
    at(10, b'T')?;
    at(13, b':')?;
    at(16, b':')?;
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at_zone = 19;
    let mut millis = 0;
    if b.get(19) == Some(&b'.') {
        let digits = b[20..].iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let kept = digits.min(3);
        millis = number(20..20 + kept)? * [100, 10, 1][kept - 1];
        at_zone = 20 + digits;
    }
    let offset_minutes = match b.get(at_zone..)? {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (
                number(at_zone + 1..at_zone + 3)?,
                number(at_zone + 4..at_zone + 6)?,
            );
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 60 + minutes;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Number, Scanner, rfc3339_millis};

    /// A JSON number without exponent: short and long digit runs, leading zeros (invalid past
    /// the first digit), and digit strings near 2^53 and 10^19 with the point anywhere.
    fn numbers() -> impl Strategy<Value = String> {
        let sign = prop_oneof![Just(""), Just("-")];
        let random =
            ("[0-9]{1,24}", prop::option::of("[0-9]{0,26}")).prop_map(|(whole, fraction)| {
                match fraction {
                    Some(fraction) => format!("{whole}.{fraction}"),
                    None => whole,
                }
            });
        // A point before the digits (with up to 23 zeros between) or inside them.
        let near = (pivot_digits(), 0usize..=44).prop_map(|(digits, at)| match at {
            0 => digits,
            at if at < digits.len() => format!("{}.{}", &digits[..at], &digits[at..]),
            at => format!("0.{}{digits}", "0".repeat(at - digits.len())),
        });
        (sign, prop_oneof![3 => random, 2 => near]).prop_map(|(s, n)| format!("{s}{n}"))
    }

    /// Digits within 3 of where the fast reading's limits lie: 2^53, 10^19, i64::MAX and 2^64
    /// (where a digit sum wraps).
    fn pivot_digits() -> impl Strategy<Value = String> {
        let pivot = prop_oneof![
            Just(1u128 << 53),
            Just(10_000_000_000_000_000_000),
            Just(i64::MAX as u128),
            Just(1 << 64),
        ];
        (pivot, -3i128..=3)
            .prop_map(|(pivot, delta)| pivot.saturating_add_signed(delta).to_string())
    }

    /// What serde's path makes of a number: an i64 integer ("-0" excepted) or a finite f64.
    fn parsed(text: &str) -> Option<Number> {
        let valid = text.trim_start_matches('-');
        let whole = valid.split('.').next().unwrap_or_default();
        if whole.is_empty() || (whole.len() > 1 && whole.starts_with('0')) || valid.ends_with('.') {
            return None;
        }
        if text.contains('.') {
            text.parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .map(Number::Float)
        } else if text == "-0" {
            None
        } else {
            text.parse().ok().map(Number::Integer)
        }
    }

    /// An RFC 3339-like time: valid ones in several spellings, and broken fields of every kind.
    fn times() -> impl Strategy<Value = String> {
        let field = |valid: std::ops::RangeInclusive<u32>, width: usize| {
            prop_oneof![
                8 => valid.prop_map(move |v| format!("{v:0width$}")),
                1 => (0u32..100).prop_map(move |v| format!("{v:0width$}")),
                1 => Just("x".repeat(width)),
            ]
        };
        let fraction = prop_oneof![Just(String::new()), "\\.[0-9]{0,11}"];
        let zone = prop_oneof![
            Just("Z".to_owned()),
            Just("z".to_owned()),
            Just("".to_owned()),
            (prop_oneof![Just('+'), Just('-')], 0u32..26, 0u32..62)
                .prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
        ];
        let separator = prop_oneof![8 => Just('T'), 1 => Just('t'), 1 => Just(' ')];
        (
            field(1..=9999, 4),
            field(1..=12, 2),
            field(1..=31, 2),
            separator,
            field(0..=23, 2),
            field(0..=59, 2),
            field(0..=60, 2),
            fraction,
            zone,
        )
            .prop_map(|(y, mo, d, t, h, mi, s, f, z)| format!("{y}-{mo}-{d}{t}{h}:{mi}:{s}{f}{z}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The scanner's number is the standard library's parse of the same text, bit for bit.
        #[test]
        fn number_reads_what_parse_reads(text in numbers()) {
            let mut scanner = Scanner { text: &text, at: 0 };
            let number = scanner.number();
            let bits = |n: Option<Number>| n.map(|n| match n {
                Number::Integer(v) => (0, v as u64),
                Number::Float(v) => (1, v.to_bits()),
            });
            prop_assert_eq!(bits(number), bits(parsed(&text)), "{}", text);
            if number.is_some() {
                prop_assert_eq!(scanner.at, text.len());
            }
        }

        /// Whenever the fast reading answers, chrono reads the same instant.
        #[test]
        fn rfc3339_millis_reads_what_chrono_reads(text in times()) {
            if let Some(ms) = rfc3339_millis(&text) {
                let chrono = chrono::DateTime::parse_from_rfc3339(&text).map_err(|e| e.to_string());
                prop_assert_eq!(Ok(ms), chrono.map(|t| t.timestamp_millis()));
            }
        }

        /// Any valid time in the usual spelling takes the fast reading.
        #[test]
        fn the_usual_spelling_is_read_fast(
            seconds in -62_135_596_800i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            digits in 0usize..=9,
            offset_minutes in -1439i32..=1439,
        ) {
            let zone = chrono::FixedOffset::east_opt(offset_minutes * 60).unwrap();
            let time = chrono::DateTime::from_timestamp(seconds, nanos).unwrap().with_timezone(&zone);
            let fraction = format!("{:09}", nanos)[..digits].to_owned();
            let mut text = time.format("%Y-%m-%dT%H:%M:%S").to_string();
            if digits > 0 {
                text = format!("{text}.{fraction}");
            }
            text.push_str(&if offset_minutes == 0 { "Z".to_owned() } else { time.format("%:z").to_string() });
            let chrono = chrono::DateTime::parse_from_rfc3339(&text).unwrap().timestamp_millis();
            prop_assert_eq!(rfc3339_millis(&text), Some(chrono), "{}", text);
        }
    }

    #[test]
    fn leap_days_follow_the_gregorian_rules() {
        for (text, valid) in [
            ("2000-02-29T00:00:00Z", true),
            ("2024-02-29T23:59:59.999+01:00", true),
            ("1900-02-29T00:00:00Z", false),
            ("2023-02-29T00:00:00Z", false),
            ("2023-04-31T00:00:00Z", false),
        ] {
            let chrono = chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis());
            assert_eq!(chrono.is_ok(), valid, "{text}");
            assert_eq!(rfc3339_millis(text), chrono.ok(), "{text}");
        }
    }
}
