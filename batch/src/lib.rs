//! # tributary-batch: the batch layer
//!
//! Will hold the archiver (Kafka → raw Parquet master dataset, progress kept in the lake's file
//! names) and the DataFusion recompute that writes immutable, versioned view states and publishes
//! them through a manifest and the `_current` pointer (ARCHITECTURE.md §4–§5).
//!
//! Nothing is implemented here yet: the batch-layer issue builds it on the contract in
//! `tributary-schemas` (lake paths, manifest, view definitions, aggregate states).
