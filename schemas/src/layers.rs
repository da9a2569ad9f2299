//! The seams between the layers (ARCHITECTURE.md §1): what the speed layer, the recompute service
//! and the archiver offer the serving layer, as small traits, and the types that cross them.
//!
//! ```text
//!  speed (SpeedLayer) ──impl SpeedView──┐
//!  batch (Recompute)  ──impl Recompute──┼──> serving (Live, the HTTP API)     wired by src/serve.rs
//!  batch (archiver)   ──impl StatusSource┘
//! ```
//!
//! The serving layer depends on these traits only, never on the `speed` or `batch` crates: it pins
//! a view's speed states above a boundary and tells the speed layer what a new batch version
//! covers ([`speed::SpeedView`]), runs a recompute on request ([`recompute::Recompute`]), and
//! shows each layer's own status and Prometheus samples without knowing what they count
//! ([`StatusSource`], written with [`prometheus::Exposition`]).

pub mod prometheus;
pub mod recompute;
pub mod speed;

use serde_json::Value;

use prometheus::Exposition;

/// A layer that reports on itself: its section of `/v1/status` and its Prometheus samples. Every
/// counter a layer keeps goes through here, so none is kept and never shown.
pub trait StatusSource: Send + Sync + std::fmt::Debug {
    /// This layer's section of `/v1/status` (a JSON object).
    fn status(&self) -> Value;

    /// This layer's samples for `/metrics`.
    fn metrics(&self, out: &mut Exposition);
}
