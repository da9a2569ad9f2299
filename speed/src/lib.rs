//! # tributary-speed: the speed layer
//!
//! Keeps aggregate states per (partition, offset epoch) of what the live batch version does not
//! cover, and exposes snapshots above a boundary for the serving layer to merge (ARCHITECTURE.md
//! §5).
//!
//! - [`aggregator`]: the incremental aggregation (decode once, the view filter as the batch
//!   layer's DataFusion expression, the shared states);
//! - [`consumer`]: the Kafka consumer (assign every partition, seek to the live version's boundary,
//!   aggregate per poll, drop what a newer version covers, the watermark watcher and watchdog);
//! - [`health`]: lag, stalls, readiness and completeness from the consumer's progress and the
//!   broker's ends;
//! - [`view`]: the speed layer as the serving layer sees it (`SpeedView` and `StatusSource` of
//!   `tributary_schemas::layers`): pins per query, drops and restarts when a batch version goes
//!   live, and its own status section and Prometheus samples;
//! - [`export`] and [`remote`]: the speed layer split by partitions (ARCHITECTURE.md §8): a speed
//!   node's states as serving nodes read them, and the serving node's side, which merges every
//!   node's partitions and says which it lacks.

pub mod aggregator;
pub mod consumer;
pub mod export;
pub mod health;
pub mod remote;
pub mod view;
