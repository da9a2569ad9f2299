//! Quarantine rows: what the archiver keeps of an event that failed decoding — its position, its raw
//! bytes untouched, and why it was rejected — so nothing is dropped silently and a fixed decoder or
//! a person can replay it.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use tributary_schemas::event::raw_rows::{
    KAFKA_TS_COLUMN, KafkaPosition, OFFSET_COLUMN, PARTITION_COLUMN,
};
use tributary_schemas::event::timestamp_type;

pub const RAW_COLUMN: &str = "raw";
pub const ERROR_CODE_COLUMN: &str = "error_code";
pub const ERROR_COLUMN: &str = "error";

pub fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(PARTITION_COLUMN, DataType::Int32, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
        Field::new(KAFKA_TS_COLUMN, timestamp_type(), true),
        Field::new(RAW_COLUMN, DataType::Binary, true),
        Field::new(ERROR_CODE_COLUMN, DataType::Utf8, false),
        Field::new(ERROR_COLUMN, DataType::Utf8, false),
    ]))
}

/// Accumulates quarantine rows of one partition.
#[derive(Debug)]
pub struct QuarantineBuilder {
    partition: Int32Builder,
    offset: Int64Builder,
    kafka_ts: TimestampMillisecondBuilder,
    raw: BinaryBuilder,
    code: StringBuilder,
    error: StringBuilder,
    rows: usize,
}

impl Default for QuarantineBuilder {
    fn default() -> Self {
        Self {
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            kafka_ts: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            raw: BinaryBuilder::new(),
            code: StringBuilder::new(),
            error: StringBuilder::new(),
            rows: 0,
        }
    }
}

impl QuarantineBuilder {
    /// `raw` is `None` for a message without a payload (a tombstone).
    pub fn append(&mut self, position: KafkaPosition, raw: Option<&[u8]>, code: &str, error: &str) {
        self.partition.append_value(position.partition);
        self.offset.append_value(position.offset);
        self.kafka_ts.append_option(position.timestamp_ms);
        self.raw.append_option(raw);
        self.code.append_value(code);
        self.error.append_value(error);
        self.rows += 1;
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.kafka_ts.finish()),
            Arc::new(self.raw.finish()),
            Arc::new(self.code.finish()),
            Arc::new(self.error.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(quarantine_schema(), columns)
    }
}
