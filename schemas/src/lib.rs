//! # tributary-schemas: the contract every layer shares
//!
//! Tributary is a Lambda architecture: events arrive on Kafka, a batch layer recomputes exact views
//! from the master dataset in the lake, a speed layer aggregates what the batch views do not cover
//! yet, and a serving layer merges the two. For the merge to be exact, all three must agree on
//! everything that crosses between them, and this crate is where that agreement lives:
//!
//! - [`blame`]: who is to blame for an error (caller, outside system, us), with the one mapping
//!   of DataFusion's errors, and how errors are logged (every cause).
//! - [`config`]: configuration (defaults, TOML file, environment) and the validated view
//!   definitions; one [`config::ViewDef`] drives both layers.
//! - [`event`] and [`decode`]: the event schema, the one decoder that says which bytes are a valid
//!   event, and the Arrow form of the master dataset.
//! - [`aggregate`]: mergeable aggregate states (count, sum, min, max, avg, HyperLogLog, DDSketch), their
//!   byte and Arrow forms.
//! - [`functions`]: the view's DataFusion functions (state update and merge, finalize, time
//!   bucket), used by the recompute and the serving layer alike.
//! - [`kafka`]: the Kafka plumbing the archiver and the speed layer share (a consumer positioned
//!   by the lake, the topic's partitions, watermarks, assignment).
//! - [`lake`]: object paths, file naming and the manifest of a batch view version.
//! - [`seam`]: the offset arithmetic that makes every event count exactly once.
//! - [`layers`]: the traits at the seams between the layers (a speed view, a recompute service,
//!   a status source) and the types that cross them, so the serving layer needs no other crate.
//! - [`shutdown`]: the one shutdown signal every role of a process stops on.
//! - [`duration`]: durations and view granularities.
//!
//! Data flow: Kafka bytes → [`decode::Decoder`] → [`event::Event`] → (archiver) raw Parquet via
//! [`event::raw_rows::RawBatchBuilder`] → (batch) view states in Parquet described by a
//! [`lake::Manifest`]; and in parallel (speed) [`aggregate::MetricState`]s per epoch above the
//! manifest's [`lake::Boundary`]; serving merges both.

pub mod aggregate;
pub mod blame;
pub mod config;
pub mod decode;
pub mod duration;
pub mod event;
pub mod functions;
pub mod kafka;
pub mod lake;
pub mod layers;
pub mod seam;
pub mod shutdown;
