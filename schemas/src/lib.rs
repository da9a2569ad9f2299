//! # tributary-schemas: the contract every layer shares
//!
//! Tributary is a Lambda architecture: events arrive on Kafka, a batch layer recomputes exact views
//! from the master dataset in the lake, a speed layer aggregates what the batch views do not cover
//! yet, and a serving layer merges the two. For the merge to be exact, all three must agree on
//! everything that crosses between them, and this crate is where that agreement lives:
//!
//! - [`config`]: configuration (defaults, TOML file, environment) and the validated view
//!   definitions; one [`config::ViewDef`] drives both layers.
//! - [`event`] and [`decode`]: the event schema, the one decoder that says which bytes are a valid
//!   event, and the Arrow form of the master dataset.
//! - [`aggregate`]: mergeable aggregate states (count, sum, min, max, avg, HyperLogLog, DDSketch), their
//!   byte and Arrow forms.
//! - [`lake`]: object paths, file naming and the manifest of a batch view version.
//! - [`seam`]: the offset arithmetic that makes every event count exactly once.
//! - [`duration`]: durations and view granularities.
//!
//! Data flow: Kafka bytes → [`decode::Decoder`] → [`event::Event`] → (archiver) raw Parquet via
//! [`event::batch::RawBatchBuilder`] → (batch) view states in Parquet described by a
//! [`lake::Manifest`]; and in parallel (speed) [`aggregate::MetricState`]s per epoch above the
//! manifest's [`lake::Boundary`]; serving merges both.

pub mod aggregate;
pub mod config;
pub mod decode;
pub mod duration;
pub mod event;
pub mod lake;
pub mod seam;
