//! The part writer: a view's sorted state rows, encoded into Parquet parts of
//! `[batch] part_rows` rows under the new version's directory, as they arrive.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMillisecondType;
use tributary_schemas::config::ViewDef;
use tributary_schemas::lake::{Lake, ManifestFile};

use super::{BatchError, ROW_GROUP_ROWS};
use crate::parquet_io;

/// Streams sorted view rows into parts of at most `part_rows` rows.
pub(super) struct PartWriter {
    view: String,
    dimensions: Vec<String>,
    version: u64,
    part_rows: usize,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// The number of the first part (parts already in the version directory come before).
    first_part: usize,
    written: Vec<ManifestFile>,
    /// The newest time bucket among the rows pushed.
    newest_bucket_ms: Option<i64>,
}

impl PartWriter {
    pub(super) fn new(view: &ViewDef, version: u64, part_rows: usize) -> Self {
        Self {
            view: view.name.clone(),
            dimensions: view.dimensions.iter().map(|d| d.name.clone()).collect(),
            version,
            part_rows: part_rows.max(1),
            pending: Vec::new(),
            pending_rows: 0,
            first_part: 0,
            written: Vec::new(),
            newest_bucket_ms: None,
        }
    }

    /// Numbers the parts from `first_part` on, after parts the version directory already holds.
    pub(super) fn after(mut self, first_part: usize) -> Self {
        self.first_part = first_part;
        self
    }

    pub(super) async fn push(&mut self, batch: RecordBatch, lake: &Lake) -> Result<(), BatchError> {
        let mut batch = batch;
        if let Some(times) = batch
            .column(0)
            .as_primitive_opt::<TimestampMillisecondType>()
        {
            self.newest_bucket_ms = self.newest_bucket_ms.max(arrow::compute::max(times));
        }
        while self.pending_rows + batch.num_rows() >= self.part_rows {
            let take = self.part_rows - self.pending_rows;
            self.pending.push(batch.slice(0, take));
            self.pending_rows += take;
            batch = batch.slice(take, batch.num_rows() - take);
            self.flush(lake).await?;
        }
        if batch.num_rows() > 0 {
            self.pending_rows += batch.num_rows();
            self.pending.push(batch);
        }
        Ok(())
    }

    pub(super) async fn flush(&mut self, lake: &Lake) -> Result<(), BatchError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let dimensions: Vec<&str> = self.dimensions.iter().map(String::as_str).collect();
        let bytes = parquet_io::encode_view(&self.pending, ROW_GROUP_ROWS, &dimensions)?;
        let size = bytes.len() as u64;
        let part = self.first_part + self.written.len();
        let path = (lake.put_part(&self.view, self.version, part, bytes)).await?;
        self.written.push(ManifestFile {
            path,
            rows: self.pending_rows as u64,
            bytes: size,
        });
        self.pending.clear();
        self.pending_rows = 0;
        Ok(())
    }

    /// The parts written, and the newest time bucket in them.
    pub(super) async fn finish(
        mut self,
        lake: &Lake,
    ) -> Result<(Vec<ManifestFile>, Option<i64>), BatchError> {
        self.flush(lake).await?;
        Ok((self.written, self.newest_bucket_ms))
    }
}
