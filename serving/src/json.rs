//! Query answers as JSON: `{"columns": [{name, type}], "rows": [{column: value}]}`.
//!
//! Timestamps are RFC 3339 in UTC with milliseconds (ARCHITECTURE.md §6); integers stay JSON
//! integers; a float that JSON cannot hold (NaN, ±∞) becomes `null`. Types a SQL query may produce
//! beyond the views' own are written as Arrow displays them.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, Schema,
    TimeUnit, TimestampMillisecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, SecondsFormat};
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: &'static str,
}

/// The API's name for an Arrow type.
pub fn type_name(ty: &DataType) -> &'static str {
    match ty {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
        DataType::Boolean => "bool",
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => "timestamp",
        t if t.is_integer() => "int64",
        t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => "float64",
        _ => "other",
    }
}

pub fn columns(schema: &Schema) -> Vec<Column> {
    schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            ty: type_name(f.data_type()),
        })
        .collect()
}

/// Formats epoch milliseconds as RFC 3339 UTC.
pub fn timestamp(ms: i64) -> Value {
    DateTime::from_timestamp_millis(ms).map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))
    })
}

/// Appends one JSON object per row of `batch`.
pub fn rows(batch: &RecordBatch, out: &mut Vec<Value>) -> Result<(), ArrowError> {
    let columns: Vec<Vec<Value>> = batch
        .columns()
        .iter()
        .map(|c| values(c.as_ref()))
        .collect::<Result<_, _>>()?;
    let names: Vec<&String> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect();
    for row in 0..batch.num_rows() {
        let mut object = Map::with_capacity(names.len());
        for (name, column) in names.iter().zip(&columns) {
            object.insert((*name).clone(), column[row].clone());
        }
        out.push(Value::Object(object));
    }
    Ok(())
}

fn values(array: &dyn Array) -> Result<Vec<Value>, ArrowError> {
    macro_rules! numbers {
        ($ty:ty) => {
            array
                .as_primitive::<$ty>()
                .iter()
                .map(|v| v.map_or(Value::Null, Value::from))
                .collect()
        };
    }
    let floats = |values: Vec<Option<f64>>| {
        values
            .into_iter()
            .map(|v| {
                v.and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            })
            .collect()
    };
    Ok(match array.data_type() {
        DataType::Int8 => numbers!(Int8Type),
        DataType::Int16 => numbers!(Int16Type),
        DataType::Int32 => numbers!(Int32Type),
        DataType::Int64 => numbers!(Int64Type),
        DataType::UInt8 => numbers!(UInt8Type),
        DataType::UInt16 => numbers!(UInt16Type),
        DataType::UInt32 => numbers!(UInt32Type),
        DataType::UInt64 => numbers!(UInt64Type),
        DataType::Float64 => floats(array.as_primitive::<Float64Type>().iter().collect()),
        DataType::Float32 => floats(
            (array.as_primitive::<Float32Type>().iter())
                .map(|v| v.map(f64::from))
                .collect(),
        ),
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Bool))
            .collect(),
        DataType::Utf8 => strings(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => strings(array.as_string::<i64>().iter()),
        DataType::Utf8View => strings(array.as_string_view().iter()),
        DataType::Timestamp(TimeUnit::Millisecond, _) => (array
            .as_primitive::<TimestampMillisecondType>())
        .iter()
        .map(|v| v.map_or(Value::Null, timestamp))
        .collect(),
        DataType::Timestamp(_, zone) => {
            let ms = cast(
                array,
                &DataType::Timestamp(TimeUnit::Millisecond, zone.clone()),
            )?;
            return values(ms.as_ref());
        }
        _ => {
            let formatter = ArrayFormatter::try_new(array, &FormatOptions::default())?;
            (0..array.len())
                .map(|row| match array.is_null(row) {
                    true => Value::Null,
                    false => Value::String(formatter.value(row).to_string()),
                })
                .collect()
        }
    })
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Vec<Value> {
    values
        .map(|v| v.map_or(Value::Null, |s| Value::String(s.to_owned())))
        .collect()
}
