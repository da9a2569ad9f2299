//! The one event decoder every layer uses, so that all of them agree on what is valid.
//!
//! Bytes → [`Event`]: the input must be UTF-8 JSON holding one object; the configured time field is
//! required (RFC 3339 string or integer epoch milliseconds, years 0001–9999); configured fields are
//! type-checked and may be absent or `null`; unconfigured fields are skipped without being
//! materialised. A key that appears twice is an error (which value would win is ambiguous). Numbers
//! with no fractional part are accepted for `int64` and `timestamp` fields (`3.0` is `3`), since many
//! JSON producers cannot tell integers from floats.
//!
//! Every failure is a [`DecodeError`] saying what is wrong and where; the decoder never panics,
//! whatever the bytes (property-tested below).
//!
//! The JSON is walked once. Events of the usual shape (a flat object of unescaped strings, plain
//! numbers, booleans and nulls) take a hand-written scan ([`fast`]); everything else, and every
//! error, takes a serde visitor. Both write straight into typed slots through the same conversions,
//! and unescaped strings are borrowed from the input, so a typical event costs one allocation (its
//! value vector), or none when decoded into a buffer a poll's events share ([`Decoder::decode_into`]).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use chrono::DateTime;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::event::{Event, EventSchema, FieldType, Value};

mod fast;
mod names;
mod strings;

/// 0001-01-01T00:00:00Z in epoch milliseconds.
pub const MIN_TIME_MS: i64 = -62_135_596_800_000;
/// 9999-12-31T23:59:59.999Z in epoch milliseconds.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// Why an event was rejected. [`DecodeError::code`] is a stable machine-readable name for metrics,
/// quarantine rows and DLQ headers; the `Display` text is for people.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("event is empty")]
    Empty,
    #[error("event is not valid UTF-8 (first invalid byte at offset {offset})")]
    InvalidUtf8 { offset: usize },
    #[error("event is not valid JSON: {detail}")]
    NotJson { detail: String },
    #[error("event must be a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("event has no time field '{field}' (missing or null)")]
    MissingTime { field: String },
    #[error("field '{field}' must be {expected}, found {found}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: String,
    },
    #[error(
        "field '{field}': cannot read {value:?} as an RFC 3339 timestamp such as 2026-11-21T10:00:00Z ({reason})"
    )]
    BadTimestamp {
        field: String,
        value: String,
        reason: String,
    },
    #[error("field '{field}': {value} is outside the supported time range (years 0001 to 9999)")]
    TimeOutOfRange { field: String, value: String },
    #[error("field '{field}' appears more than once")]
    DuplicateField { field: String },
}

impl DecodeError {
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::NotAnObject { .. } => "not_an_object",
            DecodeError::MissingTime { .. } => "missing_time",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::BadTimestamp { .. } => "bad_timestamp",
            DecodeError::TimeOutOfRange { .. } => "time_out_of_range",
            DecodeError::DuplicateField { .. } => "duplicate_field",
        }
    }
}

/// Field name → slot, looked up for every key of every event. foldhash rather than SipHash: the
/// map is fixed at start and only read, and its seed is random, so keys chosen by a sender can cost
/// a string comparison at most.
type SlotMap = HashMap<String, Slot, foldhash::fast::RandomState>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Time,
    Field(usize),
}

/// Decodes events of one [`EventSchema`]. Cheap to share: decoding takes `&self`.
#[derive(Debug, Clone)]
pub struct Decoder {
    schema: EventSchema,
    slots: SlotMap,
    /// The fast path's lookup of the same names (`None`: it uses `slots`).
    names: Option<names::NameTable>,
    /// The fast path's guess at each next key.
    order: names::KeyOrder,
}

impl Decoder {
    pub fn new(schema: EventSchema) -> Self {
        let mut slots: SlotMap = schema
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), Slot::Field(i)))
            .collect();
        slots.insert(schema.time_field.clone(), Slot::Time);
        let names = names::NameTable::new(slots.iter().map(|(name, &slot)| (name.as_str(), slot)));
        let positions = schema.fields.iter().map(|f| f.name.as_str());
        let order = names::KeyOrder::new(positions.chain([schema.time_field.as_str()]));
        Self {
            schema,
            slots,
            names,
            order,
        }
    }

    pub fn schema(&self) -> &EventSchema {
        &self.schema
    }

    /// A configured key's position as the duplicate check and the fast path's key order count
    /// them: a field's index, the time field after the fields.
    fn position(&self, slot: Slot) -> usize {
        match slot {
            Slot::Time => self.schema.fields.len(),
            Slot::Field(i) => i,
        }
    }

    /// How the value of the key at `position` converts.
    fn target(&self, position: usize) -> FieldValue<'_> {
        match self.schema.fields.get(position) {
            Some(field) => FieldValue {
                field: &field.name,
                ty: field.ty,
            },
            None => FieldValue {
                field: &self.schema.time_field,
                ty: FieldType::Timestamp,
            },
        }
    }

    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Event<'a>, DecodeError> {
        let mut values = Vec::with_capacity(self.schema.fields.len());
        let time_ms = self.decode_into(bytes, &mut values)?;
        Ok(Event { time_ms, values })
    }

    /// [`Self::decode`] into a buffer many events share: appends the event's field values (one per
    /// configured field, in schema order) to `values` and returns its time. On an error `values` is
    /// left as it was. The speed layer decodes a poll this way, with no allocation per event.
    pub fn decode_into<'a>(
        &self,
        bytes: &'a [u8],
        values: &mut Vec<Value<'a>>,
    ) -> Result<i64, DecodeError> {
        let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::InvalidUtf8 {
            offset: e.valid_up_to(),
        })?;
        if let Some(time_ms) = fast::decode(self, text, values) {
            return Ok(time_ms);
        }
        let event = self.decode_with_serde(text)?;
        values.extend(event.values);
        Ok(event.time_ms)
    }

    /// The general path: every input the fast path leaves, and every error.
    fn decode_with_serde<'a>(&self, text: &'a str) -> Result<Event<'a>, DecodeError> {
        if text.trim_ascii().is_empty() {
            return Err(DecodeError::Empty);
        }
        let failure = RefCell::new(None);
        let mut json = serde_json::Deserializer::from_str(text);
        let seed = EventSeed {
            decoder: self,
            failure: &failure,
        };
        let result = seed.deserialize(&mut json).and_then(|event| {
            json.end()?;
            Ok(event)
        });
        result.map_err(|error| {
            failure.take().unwrap_or_else(|| DecodeError::NotJson {
                detail: error.to_string(),
            })
        })
    }
}

/// Carries a structured error out of serde, whose own errors are strings.
type Failure = RefCell<Option<DecodeError>>;

fn fail<E: de::Error>(failure: &Failure, error: DecodeError) -> E {
    let message = error.to_string();
    *failure.borrow_mut() = Some(error);
    E::custom(message)
}

struct EventSeed<'d> {
    decoder: &'d Decoder,
    failure: &'d Failure,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Event<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Remembers which slots a JSON object has set, to reject duplicates without allocating for the
/// common case of up to 128 configured fields.
enum Seen {
    Small(u128),
    Large(Vec<bool>),
}

impl Seen {
    fn new(slots: usize) -> Self {
        if slots <= 128 {
            Seen::Small(0)
        } else {
            Seen::Large(vec![false; slots])
        }
    }

    /// Marks `slot`; false if it was already marked.
    fn mark(&mut self, slot: usize) -> bool {
        match self {
            Seen::Small(bits) => {
                let fresh = *bits & (1 << slot) == 0;
                *bits |= 1 << slot;
                fresh
            }
            Seen::Large(flags) => !std::mem::replace(&mut flags[slot], true),
        }
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = Event<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let schema = &self.decoder.schema;
        let mut time_ms = None;
        let mut values = vec![Value::Null; schema.fields.len()];
        let mut seen = Seen::new(schema.fields.len() + 1);
        while let Some(slot) = map.next_key_seed(KeySeed(&self.decoder.slots))? {
            let Some(slot) = slot else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let position = self.decoder.position(slot);
            let target = self.decoder.target(position);
            if !seen.mark(position) {
                let field = target.field.to_owned();
                return Err(fail(self.failure, DecodeError::DuplicateField { field }));
            }
            let value = map.next_value_seed(ValueSeed {
                target,
                failure: self.failure,
            })?;
            match slot {
                Slot::Time => time_ms = Some(value),
                Slot::Field(i) => values[i] = value,
            }
        }
        let time_ms = match time_ms {
            Some(Value::Timestamp(ms)) => ms,
            _ => {
                let field = schema.time_field.clone();
                return Err(fail(self.failure, DecodeError::MissingTime { field }));
            }
        };
        Ok(Event { time_ms, values })
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(self.not_an_object("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(self.not_an_object("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(self.not_an_object("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(self.not_an_object("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(self.not_an_object("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(self.not_an_object("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(self.not_an_object("an array"))
    }
}

impl EventSeed<'_> {
    fn not_an_object<E: de::Error>(&self, found: &'static str) -> E {
        fail(self.failure, DecodeError::NotAnObject { found })
    }
}

/// Resolves a key to its slot without allocating (`None` for unconfigured keys).
struct KeySeed<'d>(&'d SlotMap);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<Slot>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<Slot>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.get(key).copied())
    }
}

/// What a JSON value of one configured field becomes: the one place field types are checked, for
/// both the fast path ([`fast`]) and serde's.
#[derive(Clone, Copy)]
struct FieldValue<'d> {
    field: &'d str,
    ty: FieldType,
}

/// A converted value, or why the value does not fit the field. The error is boxed so that the
/// result is no larger than a [`Value`]: unboxed, its 72 bytes were copied through the stack after
/// every conversion of the fast path, where the copy's wide loads waited on the narrow stores
/// that wrote it (a quarter of the fast path's samples sat on one such load).
type Converted<'de> = Result<Value<'de>, Box<DecodeError>>;

/// The conversions are inlined into both paths; their errors are built out of line.
impl FieldValue<'_> {
    #[cold]
    fn wrong_type(&self, found: String) -> Box<DecodeError> {
        let expected = match self.ty {
            FieldType::String => "a string",
            FieldType::Int64 => "an integer (int64)",
            FieldType::Float64 => "a number (float64)",
            FieldType::Bool => "true or false",
            FieldType::Timestamp => "an RFC 3339 string or integer epoch milliseconds",
        };
        Box::new(DecodeError::WrongType {
            field: self.field.to_owned(),
            expected,
            found,
        })
    }

    #[inline]
    fn timestamp(&self, ms: i64) -> Converted<'static> {
        if (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms) {
            Ok(Value::Timestamp(ms))
        } else {
            Err(Box::new(DecodeError::TimeOutOfRange {
                field: self.field.to_owned(),
                value: ms.to_string(),
            }))
        }
    }

    #[inline]
    fn string<'de>(&self, text: Cow<'de, str>) -> Converted<'de> {
        match self.ty {
            FieldType::String => Ok(Value::Str(text)),
            FieldType::Timestamp => match fast::rfc3339_millis(&text) {
                Some(ms) => self.timestamp(ms),
                None => self.chrono_timestamp(&text),
            },
            _ => Err(self.wrong_type(format!("the string {:?}", truncate(&text)))),
        }
    }

    /// Any RFC 3339 spelling chrono reads, and the error for what it does not.
    #[inline(never)]
    fn chrono_timestamp(&self, text: &str) -> Converted<'static> {
        match DateTime::parse_from_rfc3339(text) {
            Ok(time) => self.timestamp(time.timestamp_millis()),
            Err(reason) => Err(Box::new(DecodeError::BadTimestamp {
                field: self.field.to_owned(),
                value: truncate(text),
                reason: reason.to_string(),
            })),
        }
    }

    #[inline]
    fn integer(&self, value: i64) -> Converted<'static> {
        match self.ty {
            FieldType::Int64 => Ok(Value::Int(value)),
            FieldType::Float64 => Ok(Value::Float(value as f64)),
            FieldType::Timestamp => self.timestamp(value),
            _ => Err(self.wrong_type(format!("the number {value}"))),
        }
    }

    fn unsigned(&self, value: u64) -> Converted<'static> {
        match i64::try_from(value) {
            Ok(value) => self.integer(value),
            Err(_) if self.ty == FieldType::Float64 => Ok(Value::Float(value as f64)),
            Err(_) => Err(self.wrong_type(format!("{value}, which is larger than int64"))),
        }
    }

    #[inline]
    fn float(&self, value: f64) -> Converted<'static> {
        let integral = value.fract() == 0.0 && value >= -(2f64.powi(63)) && value < 2f64.powi(63);
        match self.ty {
            FieldType::Float64 => Ok(Value::Float(value)),
            FieldType::Int64 | FieldType::Timestamp if integral => self.integer(value as i64),
            _ => Err(self.wrong_type(format!("the number {value}"))),
        }
    }

    #[inline]
    fn boolean(&self, value: bool) -> Converted<'static> {
        match self.ty {
            FieldType::Bool => Ok(Value::Bool(value)),
            _ => Err(self.wrong_type(format!("{value}"))),
        }
    }
}

/// Reads one configured field's value with serde and checks it with [`FieldValue`].
struct ValueSeed<'d> {
    target: FieldValue<'d>,
    failure: &'d Failure,
}

impl ValueSeed<'_> {
    fn check<'de, E: de::Error>(&self, value: Converted<'de>) -> Result<Value<'de>, E> {
        value.map_err(|error| fail(self.failure, *error))
    }
}

/// Quotes at most 64 characters of a bad value back to the caller.
fn truncate(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} value", self.target.ty)
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        self.check(self.target.string(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        self.check(self.target.string(Cow::Owned(text.to_owned())))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        self.check(self.target.integer(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        self.check(self.target.unsigned(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        self.check(self.target.float(value))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        self.check(self.target.boolean(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        self.check(Err(self.target.wrong_type("an array".to_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        self.check(Err(self.target.wrong_type("an object".to_owned())))
    }
}

#[cfg(test)]
mod tests;
