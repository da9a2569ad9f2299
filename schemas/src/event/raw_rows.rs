//! Decoded events → Arrow: the rows of the master dataset (ARCHITECTURE.md §4).
//!
//! A raw row is the event's time column and configured fields (see [`EventSchema::arrow_schema`]),
//! then where it came from: `_partition`, `_offset` and `_kafka_ts` (the broker's timestamp, when the
//! message has one). Configured field names cannot start with `_`, so these never collide.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{
    Field, Float64Type, Int64Type, Schema, SchemaRef, TimestampMillisecondType,
};
use arrow::error::ArrowError;

use super::{Event, EventSchema, FieldType, Value, timestamp_type};

pub const PARTITION_COLUMN: &str = "_partition";
pub const OFFSET_COLUMN: &str = "_offset";
pub const KAFKA_TS_COLUMN: &str = "_kafka_ts";

/// The Arrow schema of the master dataset for events of `schema`.
pub fn raw_schema(schema: &EventSchema) -> SchemaRef {
    let mut fields: Vec<Field> = schema
        .arrow_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(
        PARTITION_COLUMN,
        arrow::datatypes::DataType::Int32,
        false,
    ));
    fields.push(Field::new(
        OFFSET_COLUMN,
        arrow::datatypes::DataType::Int64,
        false,
    ));
    fields.push(Field::new(KAFKA_TS_COLUMN, timestamp_type(), true));
    Arc::new(Schema::new(fields))
}

/// Where a message sat in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaPosition {
    pub partition: i32,
    pub offset: i64,
    /// The message timestamp (create or log-append time), epoch milliseconds.
    pub timestamp_ms: Option<i64>,
}

fn timestamps() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone("UTC")
}

/// Builds one Arrow column of a configured field's values (the type [`FieldType::data_type`] names).
#[derive(Debug)]
pub enum ValueColumnBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMillisecondBuilder),
}

impl ValueColumnBuilder {
    pub fn new(ty: FieldType) -> Self {
        match ty {
            FieldType::String => Self::Str(StringBuilder::new()),
            FieldType::Int64 => Self::Int(Int64Builder::new()),
            FieldType::Float64 => Self::Float(Float64Builder::new()),
            FieldType::Bool => Self::Bool(BooleanBuilder::new()),
            FieldType::Timestamp => Self::Timestamp(timestamps()),
        }
    }

    /// Appends `value`, or `NULL` where it is null (the decoder only yields values of the column's type).
    pub fn append(&mut self, value: &Value<'_>) {
        match (self, value) {
            (Self::Str(b), Value::Str(v)) => b.append_value(v),
            (Self::Int(b), Value::Int(v)) => b.append_value(*v),
            (Self::Float(b), Value::Float(v)) => b.append_value(*v),
            (Self::Bool(b), Value::Bool(v)) => b.append_value(*v),
            (Self::Timestamp(b), Value::Timestamp(v)) => b.append_value(*v),
            (Self::Str(b), _) => b.append_null(),
            (Self::Int(b), _) => b.append_null(),
            (Self::Float(b), _) => b.append_null(),
            (Self::Bool(b), _) => b.append_null(),
            (Self::Timestamp(b), _) => b.append_null(),
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Str(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

/// The value at `row` of a column written by [`ValueColumnBuilder`] for `ty` (`None` when the
/// column is not of that type).
pub fn read_value(ty: FieldType, column: &dyn Array, row: usize) -> Option<Value<'static>> {
    if column.is_null(row) {
        return Some(Value::Null);
    }
    Some(match ty {
        FieldType::String => {
            Value::Str(column.as_string_opt::<i32>()?.value(row).to_owned().into())
        }
        FieldType::Int64 => Value::Int(column.as_primitive_opt::<Int64Type>()?.value(row)),
        FieldType::Float64 => Value::Float(column.as_primitive_opt::<Float64Type>()?.value(row)),
        FieldType::Bool => Value::Bool(column.as_boolean_opt()?.value(row)),
        FieldType::Timestamp => Value::Timestamp(
            column
                .as_primitive_opt::<TimestampMillisecondType>()?
                .value(row),
        ),
    })
}

/// Accumulates decoded events with their Kafka positions into master-dataset batches.
#[derive(Debug)]
pub struct RawBatchBuilder {
    schema: SchemaRef,
    time: TimestampMillisecondBuilder,
    fields: Vec<ValueColumnBuilder>,
    partition: Int32Builder,
    offset: Int64Builder,
    kafka_ts: TimestampMillisecondBuilder,
    rows: usize,
}

impl RawBatchBuilder {
    pub fn new(schema: &EventSchema) -> Self {
        Self {
            schema: raw_schema(schema),
            time: timestamps(),
            fields: schema
                .fields
                .iter()
                .map(|f| ValueColumnBuilder::new(f.ty))
                .collect(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            kafka_ts: timestamps(),
            rows: 0,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn append(&mut self, event: &Event<'_>, position: KafkaPosition) {
        self.time.append_value(event.time_ms);
        for (column, value) in self.fields.iter_mut().zip(&event.values) {
            column.append(value);
        }
        self.partition.append_value(position.partition);
        self.offset.append_value(position.offset);
        self.kafka_ts.append_option(position.timestamp_ms);
        self.rows += 1;
    }

    /// The rows appended since the last call, as one batch; the builder is then empty.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.fields.len() + 4);
        columns.push(Arc::new(self.time.finish()));
        columns.extend(self.fields.iter_mut().map(ValueColumnBuilder::finish));
        columns.push(Arc::new(self.partition.finish()));
        columns.push(Arc::new(self.offset.finish()));
        columns.push(Arc::new(self.kafka_ts.finish()));
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::assert_batches_eq;

    use super::*;
    use crate::decode::Decoder;
    use crate::event::FieldDef;

    #[test]
    fn decoded_events_become_a_master_dataset_batch() {
        let schema = EventSchema {
            time_field: "ts".to_owned(),
            fields: vec![
                FieldDef {
                    name: "page".to_owned(),
                    ty: FieldType::String,
                },
                FieldDef {
                    name: "latency_ms".to_owned(),
                    ty: FieldType::Float64,
                },
            ],
        };
        let decoder = Decoder::new(schema.clone());
        let mut builder = RawBatchBuilder::new(&schema);
        let inputs = [
            (
                r#"{"ts":"2026-11-21T10:00:00Z","page":"/home","latency_ms":12.5}"#,
                Some(1_795_255_200_500),
            ),
            (r#"{"ts":1795255201000,"page":null}"#, None),
        ];
        for (offset, (json, kafka_ts)) in inputs.iter().enumerate() {
            let event = decoder.decode(json.as_bytes()).unwrap();
            let position = KafkaPosition {
                partition: 2,
                offset: 40 + offset as i64,
                timestamp_ms: *kafka_ts,
            };
            builder.append(&event, position);
        }
        assert_eq!(builder.len(), 2);
        let batch = builder.finish().unwrap();
        assert!(builder.is_empty());
        assert_batches_eq!(
            [
                "+----------------------+-------+------------+------------+---------+--------------------------+",
                "| ts                   | page  | latency_ms | _partition | _offset | _kafka_ts                |",
                "+----------------------+-------+------------+------------+---------+--------------------------+",
                "| 2026-11-21T10:00:00Z | /home | 12.5       | 2          | 40      | 2026-11-21T10:00:00.500Z |",
                "| 2026-11-21T10:00:01Z |       |            | 2          | 41      |                          |",
                "+----------------------+-------+------------+------------+---------+--------------------------+",
            ],
            &[batch]
        );
    }
}
