//! # tributary-batch: the batch layer
//!
//! - [`archiver`]: consumes every partition of the topic and appends decoded events to the master
//!   dataset (`raw/<topic>/partition=<p>/<start>-<end>.parquet`), malformed ones to quarantine. Its
//!   progress lives in the lake's file names, so it needs no other state to resume exactly.
//! - The DataFusion recompute of versioned views (manifest, boundary, `_current` swap) is the next
//!   part of the batch-layer issue and is not built yet.
//!
//! Everything here reads the shared contract from `tributary-schemas`: the decoder, the raw schema,
//! lake paths and the seam arithmetic.

pub mod archiver;
pub mod parquet_io;
