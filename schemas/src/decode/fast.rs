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

use super::{Decoder, FieldValue, Slot};
use crate::event::{Event, FieldType, Value};

/// The event in `text`, or `None` when the input is not in the fast path's shape.
pub(super) fn decode<'a>(decoder: &Decoder, text: &'a str) -> Option<Event<'a>> {
    let schema = &decoder.schema;
    let time_slot = schema.fields.len();
    if time_slot >= 128 {
        return None;
    }
    let mut scan = Scanner { text, at: 0 };
    let mut values = vec![Value::Null; schema.fields.len()];
    let mut time = None;
    let mut seen = 0u128;
    scan.whitespace();
    scan.expect(b'{')?;
    scan.whitespace();
    if !scan.eat(b'}') {
        loop {
            let key = scan.string()?;
            scan.whitespace();
            scan.expect(b':')?;
            scan.whitespace();
            match decoder.slots.get(key) {
                None => scan.skip_scalar()?,
                Some(&slot) => {
                    let (position, field, ty) = match slot {
                        Slot::Time => (time_slot, &schema.time_field, FieldType::Timestamp),
                        Slot::Field(i) => (i, &schema.fields[i].name, schema.fields[i].ty),
                    };
                    if seen & (1 << position) != 0 {
                        return None;
                    }
                    seen |= 1 << position;
                    let value = scan.value(FieldValue { field, ty })?;
                    match slot {
                        Slot::Time => time = Some(value),
                        Slot::Field(i) => values[i] = value,
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
        Some(Value::Timestamp(time_ms)) => Some(Event { time_ms, values }),
        _ => None,
    }
}

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
        self.expect(b'"')?;
        let start = self.at;
        let bytes = self.text.as_bytes();
        let length = bytes[start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        let end = start + length;
        if bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        // Quotes are ASCII, so both ends are character boundaries of the (valid UTF-8) text.
        self.text.get(start..end)
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let found = self.text[self.at..].starts_with(word);
        self.at += if found { word.len() } else { 0 };
        found.then_some(())
    }

    /// A number in JSON's grammar without an exponent: its text, and whether it has a fraction.
    fn number(&mut self) -> Option<(&'a str, bool)> {
        let start = self.at;
        self.eat(b'-');
        let digits = self.digits();
        if digits == 0 || (digits > 1 && self.text.as_bytes()[self.at - digits] == b'0') {
            return None;
        }
        let fraction = self.eat(b'.');
        if fraction && self.digits() == 0 {
            return None;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            return None;
        }
        Some((&self.text[start..self.at], fraction))
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
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
                // serde reads "-0" as the float -0.0, not the integer 0. An integer beyond i64
                // does not parse here: serde's path reads it as u64 or f64 in its own ways.
                (text, false) if text != "-0" => target.integer(text.parse().ok()?),
                (_, false) => return None,
                (text, true) => {
                    let value: f64 = text.parse().ok()?;
                    if !value.is_finite() {
                        return None;
                    }
                    target.float(value)
                }
            },
        };
        value.ok()
    }
}
