//! # tributary-testkit: real components for tests
//!
//! End-to-end tests speak the real Kafka protocol through rdkafka to a real broker: [`Broker`] runs
//! `tansu` (a Kafka-compatible broker, `cargo install --locked tansu@0.6.0 --features libsql`) on a
//! free loopback port with its own SQLite file, and [`Broker::create_topic`] gives every test a
//! topic of its own. [`Broker::shared`] is the one broker of a test binary; [`Broker::start`] a
//! private one a test can stop (to test a broker outage, say). [`stream`] produces a reproducible
//! mix of valid and malformed events and records where each landed.
//!
//! [`TestServer`] runs the real `tributary` binary on free ports over a temp-dir lake and kills it
//! on drop: every end-to-end test starts the binary through it.
//!
//! [`s3`] runs an S3-protocol server (moto) on loopback behind a proxy a test can cut.
//!
//! [`pg`] connects to the Postgres wire with a real driver (`tokio-postgres`) and runs the real
//! `psql`, and reads rows as JSON so that they compare with the HTTP API's.
//!
//! A dev-dependency only: nothing in the service depends on it.

mod broker;
pub mod http;
pub mod pg;
pub mod rng;
pub mod s3;
mod server;
pub mod stream;

pub use broker::{Broker, HarnessError, free_port};
pub use server::{TestServer, output_text};

/// A tool `scripts/setup` installs into the user's cache (`$XDG_CACHE_HOME`, else `~/.cache`) under
/// `tributary/<path>` (a pinned virtualenv's program), or what the variable `overridden_by` names.
pub fn setup_tool(overridden_by: &str, path: &str) -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Ok(tool) = std::env::var(overridden_by) {
        return PathBuf::from(tool);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("tributary").join(path)
}
