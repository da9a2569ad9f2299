//! # tributary-batch: the batch layer
//!
//! - [`archiver`]: consumes every partition of the topic and appends decoded events to the master
//!   dataset (`raw/<topic>/partition=<p>/<start>-<end>.parquet`), malformed ones to quarantine. Its
//!   progress lives in the lake's file names, so it needs no other state to resume exactly.
//! - [`recompute`]: DataFusion recomputes each view from the master dataset below the boundary
//!   into a new immutable version (Parquet parts + manifest), published by replacing `_current`;
//!   versions are kept for rollback and garbage-collected; one run at a time per lake.
//! - [`ballista`]: the recompute's slices on an Apache DataFusion Ballista cluster, and the
//!   scheduler and executor `tributary ballista ...` runs with Tributary's functions.
//! - [`backfill`]: adds history that never went through Kafka to the master dataset, as a closed
//!   generation of its own, decoded and quarantined like the archiver's events.
//!
//! Everything here reads the shared contract from `tributary-schemas`: the decoder, the raw schema,
//! lake paths and the seam arithmetic.

pub mod archiver;
pub mod backfill;
pub mod ballista;
pub mod parquet_io;
pub mod recompute;
