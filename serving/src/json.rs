//! Query answers as JSON: `{"columns": [{name, type}], "rows": [{column: value}]}`.
//!
//! Timestamps are RFC 3339 in UTC with milliseconds (ARCHITECTURE.md §6); integers stay JSON
//! integers; a float that JSON cannot hold (NaN, ±∞) becomes `null`. Types a SQL query may produce
//! beyond the views' own are written as Arrow displays them.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, Schema,
    TimeUnit, TimestampMillisecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, SecondsFormat};
use serde::Serialize;
use serde_json::Value;

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

/// Appends one JSON object per row of `batch` to the JSON array being written in `out` (the caller
/// writes the brackets; `written` counts the rows so far, to place the commas). Written straight
/// from the Arrow columns, with keys in the order and values in the spelling serde_json gives a
/// `Map` (sorted keys; a repeated name keeps the last column's value): building a `Value` per cell
/// first was a tenth of a dashboard query's time.
pub fn write_rows(
    batch: &RecordBatch,
    out: &mut Vec<u8>,
    written: &mut usize,
) -> Result<(), ArrowError> {
    let schema = batch.schema_ref();
    let mut order: Vec<usize> = (0..batch.num_columns()).collect();
    order.sort_by(|&a, &b| schema.field(a).name().cmp(schema.field(b).name()));
    order.dedup_by(|later, earlier| {
        let same = schema.field(*later).name() == schema.field(*earlier).name();
        if same {
            *earlier = *later;
        }
        same
    });
    let columns: Vec<(Vec<u8>, Cells)> = order
        .iter()
        .map(|&i| {
            let mut key = serde_json::to_vec(schema.field(i).name()).map_err(json_error)?;
            key.push(b':');
            Ok((key, Cells::new(batch.column(i))?))
        })
        .collect::<Result<_, ArrowError>>()?;
    for row in 0..batch.num_rows() {
        if *written > 0 {
            out.push(b',');
        }
        out.push(b'{');
        for (i, (key, cells)) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            cells.write(row, out)?;
        }
        out.push(b'}');
        *written += 1;
    }
    Ok(())
}

fn json_error(error: serde_json::Error) -> ArrowError {
    ArrowError::ExternalError(Box::new(error))
}

/// One column, ready to write a cell of any row.
enum Cells<'a> {
    Native(&'a ArrayRef),
    /// Timestamps of another unit, cast to milliseconds.
    Cast(ArrayRef),
    /// Types only SQL can produce, as Arrow displays them.
    Displayed(&'a ArrayRef, ArrayFormatter<'a>),
}

impl<'a> Cells<'a> {
    fn new(array: &'a ArrayRef) -> Result<Self, ArrowError> {
        Ok(match array.data_type() {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Boolean
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Timestamp(TimeUnit::Millisecond, _) => Cells::Native(array),
            DataType::Timestamp(_, zone) => Cells::Cast(cast(
                array,
                &DataType::Timestamp(TimeUnit::Millisecond, zone.clone()),
            )?),
            _ => Cells::Displayed(
                array,
                ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?,
            ),
        })
    }

    fn write(&self, row: usize, out: &mut Vec<u8>) -> Result<(), ArrowError> {
        let array = match self {
            Cells::Native(array) => array.as_ref(),
            Cells::Cast(array) => array.as_ref(),
            Cells::Displayed(array, formatter) => {
                return match array.is_null(row) {
                    true => put_null(out),
                    false => put(out, &formatter.value(row).to_string()),
                };
            }
        };
        if array.is_null(row) {
            return put_null(out);
        }
        match array.data_type() {
            DataType::Int8 => put(out, &array.as_primitive::<Int8Type>().value(row)),
            DataType::Int16 => put(out, &array.as_primitive::<Int16Type>().value(row)),
            DataType::Int32 => put(out, &array.as_primitive::<Int32Type>().value(row)),
            DataType::Int64 => put(out, &array.as_primitive::<Int64Type>().value(row)),
            DataType::UInt8 => put(out, &array.as_primitive::<UInt8Type>().value(row)),
            DataType::UInt16 => put(out, &array.as_primitive::<UInt16Type>().value(row)),
            DataType::UInt32 => put(out, &array.as_primitive::<UInt32Type>().value(row)),
            DataType::UInt64 => put(out, &array.as_primitive::<UInt64Type>().value(row)),
            DataType::Float64 => put_float(out, array.as_primitive::<Float64Type>().value(row)),
            DataType::Float32 => put_float(
                out,
                f64::from(array.as_primitive::<Float32Type>().value(row)),
            ),
            DataType::Boolean => put(out, &array.as_boolean().value(row)),
            DataType::Utf8 => put(out, array.as_string::<i32>().value(row)),
            DataType::LargeUtf8 => put(out, array.as_string::<i64>().value(row)),
            DataType::Utf8View => put(out, array.as_string_view().value(row)),
            _ => {
                let ms = array.as_primitive::<TimestampMillisecondType>().value(row);
                put(out, &timestamp(ms))
            }
        }
    }
}

fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), ArrowError> {
    serde_json::to_writer(out, value).map_err(json_error)
}

/// A float JSON cannot hold (NaN, ±∞) is `null`.
fn put_float(out: &mut Vec<u8>, value: f64) -> Result<(), ArrowError> {
    match value.is_finite() {
        true => put(out, &value),
        false => put_null(out),
    }
}

fn put_null(out: &mut Vec<u8>) -> Result<(), ArrowError> {
    out.extend_from_slice(b"null");
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The writer against the reference it replaced: a `Value` per cell in a `Map` per row, then
    //! serialized. The bytes must be the same.

    use std::sync::Arc;

    use arrow::array::{
        BooleanArray, Date32Array, Float32Array, Float64Array, Int8Array, Int64Array,
        LargeStringArray, StringArray, StringViewArray, TimestampMillisecondArray,
        TimestampNanosecondArray, UInt64Array,
    };
    use arrow::datatypes::Field;
    use serde_json::Map;

    use super::*;

    /// Appends one JSON object per row of `batch`.
    fn rows(batch: &RecordBatch, out: &mut Vec<Value>) -> Result<(), ArrowError> {
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

    fn written(batches: &[RecordBatch]) -> String {
        let mut out = b"[".to_vec();
        let mut written = 0;
        for batch in batches {
            write_rows(batch, &mut out, &mut written).unwrap();
        }
        out.push(b']');
        String::from_utf8(out).unwrap()
    }

    fn reference(batches: &[RecordBatch]) -> String {
        let mut rows_out = Vec::new();
        for batch in batches {
            rows(batch, &mut rows_out).unwrap();
        }
        serde_json::to_string(&rows_out).unwrap()
    }

    #[test]
    fn rows_are_written_as_a_json_map_of_values_would_be() {
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "z_last",
                Arc::new(Int64Array::from(vec![Some(i64::MIN), None, Some(7)])),
            ),
            (
                "time",
                Arc::new(
                    TimestampMillisecondArray::from(vec![Some(1_795_000_000_123), None, Some(-1)])
                        .with_timezone("UTC"),
                ),
            ),
            (
                "ns",
                Arc::new(TimestampNanosecondArray::from(vec![
                    Some(1_500_000_001),
                    Some(0),
                    None,
                ])),
            ),
            (
                "f",
                Arc::new(Float64Array::from(vec![
                    Some(f64::NAN),
                    Some(-0.0),
                    Some(0.1),
                ])),
            ),
            (
                "g",
                Arc::new(Float64Array::from(vec![
                    Some(f64::INFINITY),
                    Some(1e300),
                    Some(2.5e-8),
                ])),
            ),
            (
                "f32",
                Arc::new(Float32Array::from(vec![Some(0.1f32), None, Some(-3.5)])),
            ),
            (
                "Upper",
                Arc::new(Int8Array::from(vec![Some(-8), Some(0), None])),
            ),
            (
                "u",
                Arc::new(UInt64Array::from(vec![Some(u64::MAX), None, Some(1)])),
            ),
            (
                "b",
                Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![
                    Some("quote \" back \\ tab \t é €"),
                    None,
                    Some(""),
                ])),
            ),
            (
                "ls",
                Arc::new(LargeStringArray::from(vec![Some("\u{1}"), Some("x"), None])),
            ),
            (
                "sv",
                Arc::new(StringViewArray::from(vec![
                    Some("a view string longer than twelve"),
                    None,
                    Some("v"),
                ])),
            ),
            (
                "day",
                Arc::new(Date32Array::from(vec![Some(20_000), None, Some(0)])),
            ),
            ("ключ \"k\"", Arc::new(Int64Array::from(vec![1, 2, 3]))),
            (
                "s",
                Arc::new(Int64Array::from(vec![Some(10), Some(20), None])),
            ),
        ];
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
            .collect();
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a)| a).collect(),
            &Default::default(),
        )
        .unwrap();
        let batches = [batch.clone(), batch.slice(1, 2), batch.slice(0, 0)];
        assert_eq!(written(&batches), reference(&batches));
        assert_eq!(written(&[]), "[]");
        // The output is JSON, and the repeated name `s` kept its last column's values.
        let parsed: Vec<Value> = serde_json::from_str(&written(&batches)).unwrap();
        assert_eq!(parsed.len(), 5);
        assert_eq!(parsed[0]["s"], 10);
    }
}
