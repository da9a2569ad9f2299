//! # tributary-speed: the speed layer
//!
//! Keeps aggregate states per (partition, offset epoch) of what the live batch version does not
//! cover, and exposes snapshots above a boundary for the serving layer to merge (ARCHITECTURE.md
//! §5).
//!
//! - [`aggregator`]: the incremental aggregation (decode once, the view filter as the batch
//!   layer's DataFusion expression, the shared states), built and tested;
//! - the Kafka consumer (assign every partition, seek to the live manifest's boundary) and the
//!   snapshot handover to serving are the next part of the speed/serving issue.

pub mod aggregator;
