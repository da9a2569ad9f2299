//! Parquet encoding for every file the batch layer writes, one buffer per file put atomically: raw
//! files compact (zstd level 1, delta-encoded integers), view parts fast to write and scan (LZ4 where
//! it saves bytes), page statistics where DataFusion prunes with them.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// Raw files: zstd level 1 over every column, and the 64-bit integer columns (event times,
/// offsets, Kafka timestamps, `int64` fields) delta-encoded instead of dictionary-encoded. Times and
/// offsets rise nearly monotonically in offset order, so their deltas pack into a few bits: on the
/// 10M-event bench the raw files shrink 257 → 220 MB and a recompute, which no longer has zstd
/// inflate 8 bytes per value, runs ~9% faster; the archiver, which no longer builds dictionaries of
/// unique values only to abandon them, encodes ~25% faster. Dictionaries stay where they pay:
/// strings.
fn raw_properties(schema: &SchemaRef) -> WriterProperties {
    let mut properties = WriterProperties::builder().set_compression(Compression::ZSTD(
        ZstdLevel::try_new(1).expect("level 1 is valid"),
    ));
    for field in schema.fields() {
        if matches!(field.data_type(), DataType::Int64 | DataType::Timestamp(..)) {
            let column = || ColumnPath::from(field.name().as_str());
            properties = properties
                .set_column_dictionary_enabled(column(), false)
                .set_column_encoding(column(), Encoding::DELTA_BINARY_PACKED);
        }
    }
    properties.build()
}

/// Encodes `batches` (all of one schema) as one raw Parquet file.
pub fn encode(batches: &[RecordBatch]) -> Result<Bytes, ParquetError> {
    encode_with(batches, raw_properties(&schema_of(batches)?), 0)
}

/// Encodes one part of a batch view: sorted rows in row groups of `row_group_rows`, so that a scan
/// of a time range reads only the row groups whose `time` statistics overlap it. Views are written
/// once and scanned by every query, so they use LZ4 (fast both ways) rather than zstd: zstd took
/// 10% of a recompute for ~no gain on sketches.
///
/// Only the dimension columns (`dictionary_columns`) repeat enough to be worth dictionary encoding;
/// the time and state columns are written plain. Sketch columns (`Binary`) are nearly all distinct
/// and never filtered on, so they carry no statistics, and they are stored uncompressed: LZ4 took
/// them only to ~0.8 of their size (131 → 103 MB for the 10M-event bench's 1.9M rows) for ~6% of a
/// recompute, and writing the extra bytes costs less than compressing them (3.34 → 3.16 CPU-s).
/// `Float64` state columns (sums, extremes, averages of measured values) are stored uncompressed
/// too: their mantissas are noise, LZ4 saved 0.0% on them (8,001,239 → 8,032,689 bytes per million
/// `pageviews` rows, larger) and compressing them was ~2% of a recompute.
pub fn encode_view(
    batches: &[RecordBatch],
    row_group_rows: usize,
    dictionary_columns: &[&str],
) -> Result<Bytes, ParquetError> {
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_dictionary_enabled(false);
    for column in dictionary_columns {
        properties = properties.set_column_dictionary_enabled(ColumnPath::from(*column), true);
    }
    if let Some(batch) = batches.first() {
        for field in batch.schema().fields() {
            let column = || ColumnPath::from(field.name().as_str());
            match field.data_type() {
                DataType::Binary => {
                    properties = properties
                        .set_column_statistics_enabled(column(), EnabledStatistics::None)
                        .set_column_compression(column(), Compression::UNCOMPRESSED);
                }
                DataType::Float64 => {
                    properties =
                        properties.set_column_compression(column(), Compression::UNCOMPRESSED);
                }
                DataType::Struct(children) => {
                    for child in children
                        .iter()
                        .filter(|c| c.data_type() == &DataType::Float64)
                    {
                        let path = vec![field.name().clone(), child.name().clone()];
                        properties = properties.set_column_compression(
                            ColumnPath::new(path),
                            Compression::UNCOMPRESSED,
                        );
                    }
                }
                _ => {}
            }
        }
    }
    // View parts are mostly uncompressed: their Arrow size bounds the file, and a buffer of that
    // capacity (untouched pages cost nothing) saves regrowing and copying a ~100 MB part.
    let capacity = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    encode_with(batches, properties.build(), capacity)
}

fn schema_of(batches: &[RecordBatch]) -> Result<SchemaRef, ParquetError> {
    match batches.first() {
        Some(batch) => Ok(batch.schema()),
        None => Err(ParquetError::General("no batch to encode".to_owned())),
    }
}

fn encode_with(
    batches: &[RecordBatch],
    properties: WriterProperties,
    capacity: usize,
) -> Result<Bytes, ParquetError> {
    let schema = schema_of(batches)?;
    let mut buffer = Vec::with_capacity(capacity);
    let mut writer = ArrowWriter::try_new(&mut buffer, schema, Some(properties))?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.close()?;
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, BinaryArray, Float64Array, Int64Array, StringArray, StructArray,
        TimestampMillisecondArray,
    };
    use arrow::datatypes::{Field, Fields, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    /// Reads back a whole file (the lake's reader, `Lake::read_parquet`, does the same per object).
    fn decode(bytes: Bytes) -> Vec<RecordBatch> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        reader.build().unwrap().collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn raw_files_delta_encode_integers_keep_string_dictionaries_and_read_back_whole() {
        let rows = 10_000;
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("_offset", DataType::Int64, false),
            Field::new("page", DataType::Utf8, true),
            Field::new("latency_ms", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    (0..rows).map(|i| 1_795_046_400_000 + i * 7 + i % 5),
                )) as ArrayRef,
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter(
                    (0..rows).map(|i| (i % 13 != 0).then(|| format!("/page/{}", i % 40))),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|i| i as f64 * 0.37),
                )),
            ],
        )
        .unwrap();
        let bytes = encode(std::slice::from_ref(&batch)).unwrap();
        let reader = SerializedFileReader::new(bytes.clone()).unwrap();
        let columns = reader.metadata().row_group(0).columns().to_vec();
        for column in &columns {
            assert_eq!(
                column.compression(),
                Compression::ZSTD(ZstdLevel::try_new(1).unwrap())
            );
        }
        let delta = |i: usize| {
            let encodings: Vec<Encoding> = columns[i].encodings().collect();
            encodings.contains(&Encoding::DELTA_BINARY_PACKED)
        };
        assert!(delta(0) && delta(1), "times and offsets are delta-encoded");
        assert!(columns[0].dictionary_page_offset().is_none());
        assert!(!delta(2) && columns[2].dictionary_page_offset().is_some());
        // Deltas of a few bits: the offsets take far less than their 80 kB plain.
        assert!(
            columns[1].uncompressed_size() < 4_000,
            "{}",
            columns[1].uncompressed_size()
        );
        let decoded = decode(bytes);
        let decoded = arrow::compute::concat_batches(&batch.schema(), &decoded).unwrap();
        assert_eq!(decoded, batch);
    }

    #[test]
    fn view_parts_leave_only_float_states_uncompressed_and_read_back_whole() {
        let fields = Fields::from(vec![
            Field::new("sum", DataType::Float64, true),
            Field::new("count", DataType::Int64, true),
        ]);
        let avg = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(Float64Array::from(vec![1.5, 2.5])) as ArrayRef,
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
            None,
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("views", DataType::Int64, false),
            Field::new("latency_sum", DataType::Float64, true),
            Field::new("latency_avg", DataType::Struct(fields), true),
            Field::new("users", DataType::Binary, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![3, 4])),
                Arc::new(Float64Array::from(vec![0.25, 9.75])),
                Arc::new(avg),
                Arc::new(BinaryArray::from_vec(vec![b"ab", b"cd"])),
            ],
        )
        .unwrap();
        let bytes = encode_view(std::slice::from_ref(&batch), 1024, &[]).unwrap();
        let reader = SerializedFileReader::new(bytes.clone()).unwrap();
        let row_group = reader.metadata().row_group(0);
        let codecs: Vec<(String, Compression)> = row_group
            .columns()
            .iter()
            .map(|c| (c.column_path().string(), c.compression()))
            .collect();
        assert_eq!(
            codecs,
            [
                ("views".to_owned(), Compression::LZ4_RAW),
                ("latency_sum".to_owned(), Compression::UNCOMPRESSED),
                ("latency_avg.sum".to_owned(), Compression::UNCOMPRESSED),
                ("latency_avg.count".to_owned(), Compression::LZ4_RAW),
                ("users".to_owned(), Compression::UNCOMPRESSED),
            ]
        );
        assert_eq!(decode(bytes), vec![batch]);
    }
}
