//! Reading a Parquet object of the lake whole: the reader serving loads a batch view version into
//! memory with, and the audit reads raw and quarantine files with. Scans that prune by statistics
//! (queries over versions that stay on disk, the recompute) go through DataFusion instead.

use arrow::array::RecordBatch;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{Lake, LakeError};

impl Lake {
    /// Fetches the Parquet object at `path` and returns a reader of its rows in batches of up to
    /// `batch_rows`. The object is read in one request: these are files the lake wrote whole.
    pub async fn read_parquet(
        &self,
        path: &str,
        batch_rows: usize,
    ) -> Result<ParquetRows, LakeError> {
        let bytes = self.store().get(&Path::from(path)).await?.bytes().await?;
        let parquet_error = |source| LakeError::Parquet {
            path: path.to_owned(),
            source,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(parquet_error)?
            .with_batch_size(batch_rows)
            .build()
            .map_err(parquet_error)?;
        Ok(ParquetRows {
            path: path.to_owned(),
            reader,
        })
    }
}

/// The rows of one Parquet object, decoded a batch at a time.
#[derive(Debug)]
pub struct ParquetRows {
    path: String,
    reader: ParquetRecordBatchReader,
}

impl Iterator for ParquetRows {
    type Item = Result<RecordBatch, LakeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.reader.next()?;
        Some(batch.map_err(|source| LakeError::Parquet {
            path: self.path.clone(),
            source: source.into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array};
    use object_store::PutPayload;
    use object_store::memory::InMemory;
    use parquet::arrow::ArrowWriter;

    use super::*;

    #[tokio::test]
    async fn an_object_reads_back_in_batches_and_garbage_names_its_path() {
        let lake = Lake::new(Arc::new(InMemory::new()));
        let column: ArrayRef = Arc::new(Int64Array::from_iter_values(0..10));
        let batch = RecordBatch::try_from_iter([("n", column)]).unwrap();
        let mut buffer = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buffer, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let store = lake.store();
        store
            .put(&Path::from("views/v/a.parquet"), PutPayload::from(buffer))
            .await
            .unwrap();
        store
            .put(
                &Path::from("views/v/b.parquet"),
                PutPayload::from_static(b"not parquet"),
            )
            .await
            .unwrap();

        let batches: Vec<RecordBatch> = (lake.read_parquet("views/v/a.parquet", 4).await)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let sizes: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(
            arrow::compute::concat_batches(&batch.schema(), &batches).unwrap(),
            batch
        );
        let error = lake.read_parquet("views/v/b.parquet", 4).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "views/v/b.parquet is not a readable Parquet file"
        );
        assert!(matches!(
            lake.read_parquet("views/v/c.parquet", 4).await,
            Err(LakeError::Store(object_store::Error::NotFound { .. }))
        ));
    }
}
