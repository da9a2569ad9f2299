//! # tributary-serving: the serving layer
//!
//! Answers queries by merging each view's pinned batch version with the speed layer's states above
//! its boundary (ARCHITECTURE.md §5-§6):
//! - [`live`] follows the published versions and keeps the speed layer in step with them;
//! - [`query`] plans one DataFusion query over batch ∪ speed rows, re-aggregated with the merge
//!   functions, rolled up and finalized (the functions of `tributary_schemas::functions`);
//! - [`api`] is the HTTP API (axum), with [`metrics`] for Prometheus and [`json`] for answers;
//! - [`ingest`] validates pushed events and produces them to Kafka;
//! - [`wire`] is the Postgres wire protocol, for BI tools, over the same SQL engine as the API.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod ingest;
pub mod json;
pub mod live;
pub mod metrics;
pub mod query;
pub mod snapshots;
pub mod tls;
pub mod wire;
