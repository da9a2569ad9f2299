//! `tributary backfill FILE...`: history that never went through Kafka (an export of the old
//! system, a replay of a lost day) added to the master dataset.
//!
//! Each file becomes a **closed generation of its own** (see
//! [`tributary_schemas::lake::generations`]): its events are numbered by their position in the
//! file (partition 0, offsets `0..n`), decoded by the archiver's decoder ([`Decoder`]) and written
//! as raw files of `[archiver] max_file_rows`, the malformed ones to quarantine with their error,
//! exactly as the archiver would. The generation is committed by adding it to the generations log
//! (one atomic put, under the lake's run lock, after its files): before that no reader sees any of
//! it, after it every recompute includes it whole, the next one incrementally. The speed layer
//! never sees it (it reads Kafka only), so nothing is counted twice.
//!
//! A file is identified by the SHA-256 of its content: the same content backfilled again (under
//! any name) is refused, so a retried or repeated command cannot double history.
//!
//! Formats, by content: newline-delimited JSON (one event per line, blank lines skipped), a JSON
//! array of events, or Parquet (by the `.parquet` extension) whose columns are named like the event
//! fields: each row becomes the JSON object an event would be, and goes through the same decoder.
//! Events are read one at a time ([`Payloads`]): a Parquet file of any size takes the memory of one
//! of its batches besides the file itself.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tributary_schemas::decode::Decoder;
use tributary_schemas::event::EventSchema;
use tributary_schemas::event::raw_rows::KafkaPosition;
use tributary_schemas::lake::generations::{BackfillSource, generation_topic};
use tributary_schemas::lake::{Area, Lake, LakeError};

use crate::archiver::partition::PartitionBuffer;
use crate::recompute::lock::{LockError, RunLock};

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(
        "{file} was already backfilled (generation {generation}, from {original}, at {at}): its content is in the master dataset"
    )]
    AlreadyBackfilled {
        file: String,
        generation: u32,
        original: String,
        at: String,
    },
    #[error("{file} is not JSON (an array of events, or one event per line): {message}")]
    NotJson { file: String, message: String },
    #[error("{file} is not a readable Parquet file")]
    NotParquet {
        file: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error(
        "{file}: column {column:?} has type {data_type}, which no event field type reads (string, int64, float64, bool, timestamp)"
    )]
    UnsupportedColumn {
        file: String,
        column: String,
        data_type: DataType,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("cannot encode a raw file")]
    Encode(#[from] parquet::errors::ParquetError),
    #[error("cannot build a raw file")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// What one file added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfilled {
    pub generation: u32,
    pub events: u64,
    pub quarantined: u64,
    /// Quarantined events per error code.
    pub reasons: Vec<(&'static str, u64)>,
}

/// The events of a file, one payload at a time, as the decoder reads them: a file of any size
/// takes the memory of one Parquet batch (or of the file itself, which is in memory already).
pub struct Payloads {
    file: String,
    /// How many events the file holds (for progress).
    pub total: u64,
    source: Source,
}

enum Source {
    Lines {
        content: Bytes,
        at: usize,
    },
    Array(std::vec::IntoIter<Box<serde_json::value::RawValue>>),
    Parquet {
        reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
        rows: std::vec::IntoIter<Vec<u8>>,
    },
}

impl std::fmt::Debug for Payloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payloads")
            .field("file", &self.file)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// Whether a line holds anything but whitespace.
fn is_event_line(line: &[u8]) -> bool {
    !line.iter().all(u8::is_ascii_whitespace)
}

/// The events of `file` (its name decides Parquet; the content decides a JSON array or lines).
pub fn payloads(file: &str, content: Bytes) -> Result<Payloads, BackfillError> {
    let (total, source) = if file.ends_with(".parquet") {
        let not_parquet = |source| BackfillError::NotParquet {
            file: file.to_owned(),
            source,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(content).map_err(not_parquet)?;
        let total = builder.metadata().file_metadata().num_rows() as u64;
        let reader = builder.build().map_err(not_parquet)?;
        let rows = Vec::new().into_iter();
        (total, Source::Parquet { reader, rows })
    } else if (content.iter().find(|b| !b.is_ascii_whitespace())) == Some(&b'[') {
        let events: Vec<Box<serde_json::value::RawValue>> = serde_json::from_slice(&content)
            .map_err(|error| BackfillError::NotJson {
                file: file.to_owned(),
                message: error.to_string(),
            })?;
        (events.len() as u64, Source::Array(events.into_iter()))
    } else {
        let total = content
            .split(|&b| b == b'\n')
            .filter(|l| is_event_line(l))
            .count();
        (total as u64, Source::Lines { content, at: 0 })
    };
    Ok(Payloads {
        file: file.to_owned(),
        total,
        source,
    })
}

impl Iterator for Payloads {
    type Item = Result<Vec<u8>, BackfillError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Lines { content, at } => loop {
                if *at >= content.len() {
                    return None;
                }
                let rest = &content[*at..];
                let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                let line = &rest[..end];
                *at += end + 1;
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if is_event_line(line) {
                    return Some(Ok(line.to_vec()));
                }
            },
            Source::Array(events) => events.next().map(|e| Ok(e.get().as_bytes().to_vec())),
            Source::Parquet { reader, rows } => loop {
                if let Some(row) = rows.next() {
                    return Some(Ok(row));
                }
                let batch = match reader.next()? {
                    Ok(batch) => batch,
                    Err(error) => return Some(Err(error.into())),
                };
                match rows_as_json(&self.file, &batch) {
                    Ok(json) => *rows = json.into_iter(),
                    Err(error) => return Some(Err(error)),
                }
            },
        }
    }
}

/// Each row of a Parquet batch as the JSON object of an event (nulls left out, times as epoch ms).
fn rows_as_json(
    file: &str,
    batch: &arrow::array::RecordBatch,
) -> Result<Vec<Vec<u8>>, BackfillError> {
    let mut rows = vec![Map::new(); batch.num_rows()];
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        for (row, object) in rows.iter_mut().enumerate() {
            if let Some(value) = json_value(file, field.name(), column.as_ref(), row)? {
                object.insert(field.name().clone(), value);
            }
        }
    }
    Ok(rows
        .into_iter()
        .map(|row| serde_json::to_vec(&Value::Object(row)).expect("JSON serializes"))
        .collect())
}

fn json_value(
    file: &str,
    name: &str,
    column: &dyn Array,
    row: usize,
) -> Result<Option<Value>, BackfillError> {
    if column.is_null(row) {
        return Ok(None);
    }
    let value = match column.data_type() {
        DataType::Utf8 => Value::from(column.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Value::from(column.as_string::<i64>().value(row)),
        DataType::Utf8View => Value::from(column.as_string_view().value(row)),
        DataType::Int64 => Value::from(column.as_primitive::<Int64Type>().value(row)),
        DataType::Int32 => Value::from(column.as_primitive::<Int32Type>().value(row)),
        DataType::Float64 => Value::from(column.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => Value::from(column.as_primitive::<Float32Type>().value(row)),
        DataType::Boolean => Value::from(column.as_boolean().value(row)),
        DataType::Timestamp(unit, _) => {
            let raw = match unit {
                TimeUnit::Second => column
                    .as_primitive::<arrow::datatypes::TimestampSecondType>()
                    .value(row)
                    .saturating_mul(1000),
                TimeUnit::Millisecond => column
                    .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                    .value(row),
                TimeUnit::Microsecond => column
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .value(row)
                    .div_euclid(1000),
                TimeUnit::Nanosecond => column
                    .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                    .value(row)
                    .div_euclid(1_000_000),
            };
            Value::from(raw)
        }
        other => {
            return Err(BackfillError::UnsupportedColumn {
                file: file.to_owned(),
                column: name.to_owned(),
                data_type: other.clone(),
            });
        }
    };
    Ok(Some(value))
}

/// SHA-256 of `content`, hex.
pub fn content_hash(content: &[u8]) -> String {
    Sha256::digest(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Adds the events of `file` (its name, for messages and the record) to `topic`'s master dataset
/// as a closed generation of its own. `progress` hears (events done, events total) as files are
/// written.
pub async fn backfill(
    lake: &Lake,
    topic: &str,
    events: &EventSchema,
    max_file_rows: usize,
    file: &str,
    content: Vec<u8>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Backfilled, BackfillError> {
    let content = Bytes::from(content);
    let sha256 = content_hash(&content);
    let refuse = |generations: &tributary_schemas::lake::generations::Generations| match generations
        .backfilled(&sha256)
    {
        Some(earlier) => Err(BackfillError::AlreadyBackfilled {
            file: file.to_owned(),
            generation: earlier.generation,
            original: (earlier.backfill.as_ref()).map_or_else(String::new, |b| b.file.clone()),
            at: earlier.closed_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }),
        None => Ok(()),
    };
    refuse(&lake.generations(topic).await?)?;
    let payloads = payloads(file, content)?;
    // One writer at a time: the lock also keeps recomputes and compaction out of the way.
    let lock = RunLock::acquire(Arc::clone(lake.store()), Duration::from_secs(120)).await?;
    let result = async {
        let mut generations = lake.generations(topic).await?;
        refuse(&generations)?;
        let generation = generations.next_backfill();
        let lake_topic = generation_topic(topic, generation);
        // Files a killed backfill left under this number: nothing reads them (not in the log).
        for area in [Area::Raw, Area::Quarantine] {
            for (range, _) in lake.listing(area, &lake_topic, 0).await?.files {
                lake.delete_partition_file(area, &lake_topic, 0, range)
                    .await?;
            }
        }
        let decoder = Decoder::new(events.clone());
        let mut buffer = PartitionBuffer::new(0, 0, events);
        let (mut done, mut quarantined) = (0u64, 0u64);
        let mut reasons: Vec<(&'static str, u64)> = Vec::new();
        let total = payloads.total;
        for (offset, payload) in payloads.enumerate() {
            let payload = payload?;
            let position = KafkaPosition {
                partition: 0,
                offset: offset as i64,
                timestamp_ms: None,
            };
            if let Err(code) = buffer.push(&decoder, position, Some(&payload)) {
                quarantined += 1;
                match reasons.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, n)) => *n += 1,
                    None => reasons.push((code, 1)),
                }
            }
            done += 1;
            if buffer.rows() >= max_file_rows || done == total {
                let Some(pending) = buffer.take()? else {
                    continue;
                };
                if let Some(rows) = &pending.quarantine {
                    let bytes = crate::parquet_io::encode(std::slice::from_ref(rows))?;
                    lake.put_partition_file(Area::Quarantine, &lake_topic, 0, pending.range, bytes)
                        .await?;
                }
                let bytes = crate::parquet_io::encode(std::slice::from_ref(&pending.raw))?;
                lake.put_partition_file(Area::Raw, &lake_topic, 0, pending.range, bytes)
                    .await?;
                progress(done, total);
            }
        }
        generations.add_backfill(
            generation,
            BackfillSource {
                file: file.to_owned(),
                sha256: sha256.clone(),
                events: total - quarantined,
                quarantined,
            },
        );
        lake.write_generations(topic, &generations).await?;
        Ok(Backfilled {
            generation,
            events: total - quarantined,
            quarantined,
            reasons,
        })
    }
    .await;
    lock.release_or_let_expire().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_and_arrays_give_one_payload_per_event() {
        let lines = Bytes::from_static(b"{\"a\":1}\r\n\n  \n{\"a\":2}\nnot json\n");
        let all = |file: &str, content: Bytes| -> Vec<Vec<u8>> {
            let payloads = payloads(file, content).unwrap();
            let total = payloads.total;
            let all: Vec<Vec<u8>> = payloads.map(Result::unwrap).collect();
            assert_eq!(all.len() as u64, total);
            all
        };
        assert_eq!(
            all("x.ndjson", lines),
            [&b"{\"a\":1}"[..], b"{\"a\":2}", b"not json"]
        );
        let array = Bytes::from_static(b" [{\"a\":1}, 3, {\"b\":\"x\"}]");
        assert_eq!(
            all("x.json", array),
            [&b"{\"a\":1}"[..], b"3", b"{\"b\":\"x\"}"]
        );
        let broken = payloads("x.json", Bytes::from_static(b"[{\"a\":1}")).unwrap_err();
        assert!(
            broken.to_string().starts_with("x.json is not JSON"),
            "{broken}"
        );
    }

    #[test]
    fn parquet_rows_become_the_json_objects_of_their_events() {
        use arrow::array::TimestampMicrosecondArray;
        use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("ts", Arc::new(Int64Array::from(vec![1_000, 2_000]))),
            ("page", Arc::new(StringArray::from(vec![Some("/a"), None]))),
            ("latency_ms", Arc::new(Float64Array::from(vec![1.5, 2.0]))),
            (
                "seen",
                Arc::new(TimestampMicrosecondArray::from(vec![3_000_999, -1]).with_timezone("UTC")),
            ),
        ];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut buffer = Vec::new();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(&mut buffer, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let rows = payloads("old.parquet", Bytes::from(buffer)).unwrap();
        assert_eq!(rows.total, 2);
        let rows: Vec<Value> = rows
            .map(|r| serde_json::from_slice(&r.unwrap()).unwrap())
            .collect();
        assert_eq!(
            rows,
            [
                serde_json::json!({"ts": 1000, "page": "/a", "latency_ms": 1.5, "seen": 3000}),
                serde_json::json!({"ts": 2000, "latency_ms": 2.0, "seen": -1}),
            ]
        );
        let garbage = payloads("bad.parquet", Bytes::from_static(b"not parquet")).unwrap_err();
        assert!(
            garbage
                .to_string()
                .starts_with("bad.parquet is not a readable Parquet file")
        );
    }

    #[test]
    fn the_content_hash_is_sha256() {
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
