//! The event contract: which fields an event carries, their types, and the typed value of one field.
//!
//! Events are JSON objects. The configured time field (RFC 3339 string or integer epoch milliseconds)
//! is required; every configured field is optional (absent or `null` is SQL `NULL`); fields that are not
//! configured are ignored, so producers can add fields before the configuration names them.
//! [`crate::decode::Decoder`] turns bytes into an [`Event`]; [`raw_rows::RawBatchBuilder`] turns events
//! into the Arrow batches of the master dataset.

pub mod raw_rows;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// The type of a configured event field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Int64,
    Float64,
    Bool,
    /// RFC 3339 string or integer epoch milliseconds, stored as milliseconds.
    Timestamp,
}

impl FieldType {
    pub const ALL: [FieldType; 5] = [
        FieldType::String,
        FieldType::Int64,
        FieldType::Float64,
        FieldType::Bool,
        FieldType::Timestamp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int64 => "int64",
            FieldType::Float64 => "float64",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, FieldType::Int64 | FieldType::Float64)
    }

    pub fn data_type(self) -> DataType {
        match self {
            FieldType::String => DataType::Utf8,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Timestamp => timestamp_type(),
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every timestamp Tributary stores: milliseconds since the epoch, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// One configured field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDef {
    pub name: String,
    pub ty: FieldType,
}

/// The configured shape of events: the time field plus typed, optional fields in configuration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSchema {
    pub time_field: String,
    pub fields: Vec<FieldDef>,
}

impl EventSchema {
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Arrow schema of decoded events: the time column (non-null) followed by the fields (nullable).
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields = Vec::with_capacity(self.fields.len() + 1);
        fields.push(Field::new(&self.time_field, timestamp_type(), false));
        fields.extend(
            self.fields
                .iter()
                .map(|f| Field::new(&f.name, f.ty.data_type(), true)),
        );
        Arc::new(Schema::new(fields))
    }
}

/// The typed value of one field of one event. Strings borrow from the input when they contain no
/// escapes, so the decoder's hot path allocates nothing per string.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Epoch milliseconds.
    Timestamp(i64),
}

impl Value<'_> {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as `f64` for numeric aggregates (`sum`, `avg`, `quantile` over `int64` or `float64`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }

    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Null => Value::Null,
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
            Value::Int(v) => Value::Int(v),
            Value::Float(v) => Value::Float(v),
            Value::Bool(v) => Value::Bool(v),
            Value::Timestamp(v) => Value::Timestamp(v),
        }
    }
}

/// One decoded event: its time and one value per configured field, in [`EventSchema::fields`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub time_ms: i64,
    pub values: Vec<Value<'a>>,
}
