//! The lake contract (ARCHITECTURE.md §4): where every object lives, how file names carry offset
//! ranges, and the manifest that says what a batch view version covers.
//!
//! ```text
//! raw/<topic>/partition=<p>/<start>-<end>.parquet      master dataset, offsets [start, end]
//! quarantine/<topic>/partition=<p>/<start>-<end>.parquet  events that failed decoding
//! views/<view>/<version>/part-<n>.parquet              one immutable batch view version
//! views/<view>/<version>/manifest.json                 what the version covers
//! views/<view>/_current                                the live version, replaced atomically
//! views/<view>/_building                               progress of a build under a new definition
//! views/<view>/_removed                                a view no longer configured, runs since
//! views/_lock                                          the recompute's run lock (a lease)
//! ```
//!
//! Offsets and versions are zero-padded to 20 digits so that a lexicographic listing (what object
//! stores return) is also the numeric order. Paths are relative to the lake root. This file builds
//! and parses them; every read and write of them is a method of [`Lake`] (in the submodule of the
//! object it concerns), so no other file formats a lake path.

mod building;
pub mod generations;
pub mod history;
mod manifest;
mod parquet;
mod raw;
pub mod schemas;
pub use raw::Listing;
mod rooted;
mod store;
mod versions;

pub use building::{BuildProgress, Removed};
pub use manifest::{Boundary, CurrentPointer, MANIFEST_FORMAT, Manifest, ManifestFile};
pub use parquet::ParquetRows;
pub use rooted::Rooted;
pub use store::{Lake, LakeError, StoreError};

use std::fmt;

use datafusion::execution::object_store::ObjectStoreUrl;

/// The URL DataFusion knows the lake by (the recompute's and the serving layer's scans alike);
/// paths under it are the lake's own relative paths.
pub const LAKE_URL: &str = "tributary-lake://lake/";

pub fn lake_url() -> ObjectStoreUrl {
    ObjectStoreUrl::parse(LAKE_URL).expect("a valid object store URL")
}

/// A contiguous, inclusive range of Kafka offsets held by one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OffsetRange {
    pub start: i64,
    /// Inclusive.
    pub end: i64,
}

impl OffsetRange {
    /// The first offset after the range: where the next file starts.
    pub fn next(self) -> i64 {
        self.end + 1
    }

    fn file_name(self) -> String {
        format!("{:020}-{:020}.parquet", self.start, self.end)
    }

    /// Reads a name written by [`OffsetRange::file_name`]; `None` for anything else.
    pub fn parse_file_name(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".parquet")?;
        let (start, end) = stem.split_once('-')?;
        let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(start) || !digits(end) {
            return None;
        }
        let range = OffsetRange {
            start: start.parse().ok()?,
            end: end.parse().ok()?,
        };
        (range.start <= range.end).then_some(range)
    }
}

impl fmt::Display for OffsetRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.start, self.end)
    }
}

/// The two append-only areas written by the archiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Raw,
    Quarantine,
}

impl Area {
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Area::Raw => "raw",
            Area::Quarantine => "quarantine",
        }
    }
}

/// Directory of one partition of a topic in an area: `raw/<topic>/partition=<p>`.
pub fn partition_dir(area: Area, topic: &str, partition: i32) -> String {
    format!("{}/{topic}/partition={partition}", area.prefix())
}

/// File holding offsets `range` of a partition.
pub fn partition_file(area: Area, topic: &str, partition: i32, range: OffsetRange) -> String {
    format!(
        "{}/{}",
        partition_dir(area, topic, partition),
        range.file_name()
    )
}

/// Reads the partition number out of a `partition=<p>` path segment.
pub fn parse_partition_segment(segment: &str) -> Option<i32> {
    segment
        .strip_prefix("partition=")?
        .parse()
        .ok()
        .filter(|p| *p >= 0)
}

/// The batch layer's run lock: one recompute, rollback or collection at a time per lake.
pub const LOCK_PATH: &str = "views/_lock";

pub fn view_dir(view: &str) -> String {
    format!("views/{view}")
}

pub fn version_dir(view: &str, version: u64) -> String {
    format!("views/{view}/{version:020}")
}

pub fn version_part(view: &str, version: u64, part: usize) -> String {
    format!("{}/part-{part:05}.parquet", version_dir(view, version))
}

pub fn manifest_path(view: &str, version: u64) -> String {
    format!("{}/manifest.json", version_dir(view, version))
}

pub fn current_path(view: &str) -> String {
    format!("views/{view}/_current")
}

/// Reads a version directory name written by [`version_dir`].
pub fn parse_version_segment(segment: &str) -> Option<u64> {
    (segment.len() == 20 && segment.bytes().all(|b| b.is_ascii_digit()))
        .then(|| segment.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_contract() {
        let range = OffsetRange {
            start: 100,
            end: 199,
        };
        assert_eq!(
            partition_file(Area::Raw, "events", 2, range),
            "raw/events/partition=2/00000000000000000100-00000000000000000199.parquet"
        );
        assert_eq!(
            partition_file(Area::Quarantine, "events", 0, range),
            "quarantine/events/partition=0/00000000000000000100-00000000000000000199.parquet"
        );
        assert_eq!(
            version_part("pageviews", 7, 3),
            "views/pageviews/00000000000000000007/part-00003.parquet"
        );
        assert_eq!(
            manifest_path("pageviews", 7),
            "views/pageviews/00000000000000000007/manifest.json"
        );
        assert_eq!(current_path("pageviews"), "views/pageviews/_current");
        assert_eq!(range.next(), 200);
    }

    #[test]
    fn names_parse_back_and_strangers_are_ignored() {
        let range = OffsetRange {
            start: 5,
            end: 9_000_000_000,
        };
        let name = range.file_name();
        assert_eq!(OffsetRange::parse_file_name(&name), Some(range));
        for stranger in [
            "5-9.parquet",
            "x.parquet",
            "00000000000000000009-00000000000000000005.parquet",
            "",
        ] {
            assert_eq!(OffsetRange::parse_file_name(stranger), None, "{stranger}");
        }
        assert_eq!(parse_partition_segment("partition=12"), Some(12));
        assert_eq!(parse_partition_segment("partition=-1"), None);
        assert_eq!(parse_version_segment("00000000000000000007"), Some(7));
        assert_eq!(parse_version_segment("_current"), None);
    }

    #[test]
    fn lexicographic_order_is_numeric_order() {
        let mut names: Vec<String> = [1_000, 20, 300]
            .map(|start| {
                OffsetRange {
                    start,
                    end: start + 5,
                }
                .file_name()
            })
            .to_vec();
        names.sort();
        let starts: Vec<i64> = names
            .iter()
            .map(|n| OffsetRange::parse_file_name(n).unwrap().start)
            .collect();
        assert_eq!(starts, [20, 300, 1_000]);
    }
}
