//! Where the archiver resumes: read from the lake itself. A partition's progress is one past the
//! end of its last raw file; quarantine files at or past that point are leftovers of a run that
//! died between writing a quarantine file and its raw file (the raw file is the commit), so they are
//! deleted before consuming again — otherwise a replay would quarantine those events twice.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tributary_schemas::lake::{self, Area, OffsetRange};

/// The offset ranges of one partition's files in an area, sorted by start.
pub async fn list_ranges(
    store: &dyn ObjectStore,
    area: Area,
    topic: &str,
    partition: i32,
) -> Result<Vec<(OffsetRange, Path)>, object_store::Error> {
    let prefix = Path::from(lake::partition_dir(area, topic, partition));
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    let mut ranges: Vec<(OffsetRange, Path)> = objects
        .into_iter()
        .filter_map(|meta| {
            let range = OffsetRange::parse_file_name(meta.location.filename()?)?;
            Some((range, meta.location))
        })
        .collect();
    ranges.sort_by_key(|(range, _)| *range);
    Ok(ranges)
}

/// What the lake says about one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    /// One past the last archived offset (0 when nothing is archived).
    pub next_offset: i64,
    /// Offsets missing between files (someone deleted a file): reported, never filled silently.
    pub holes: Vec<OffsetRange>,
}

pub async fn partition_progress(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
) -> Result<PartitionProgress, object_store::Error> {
    let ranges = list_ranges(store, Area::Raw, topic, partition).await?;
    let mut next_offset = 0;
    let mut holes = Vec::new();
    for (range, _) in &ranges {
        if range.start > next_offset && next_offset > 0 {
            holes.push(OffsetRange {
                start: next_offset,
                end: range.start - 1,
            });
        }
        next_offset = next_offset.max(range.next());
    }
    Ok(PartitionProgress { next_offset, holes })
}

/// Deletes quarantine files of `partition` that start at or after `next_offset`; returns how many.
pub async fn remove_orphan_quarantine(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> Result<usize, object_store::Error> {
    let mut removed = 0;
    for (range, path) in list_ranges(store, Area::Quarantine, topic, partition).await? {
        if range.start >= next_offset {
            store.delete(&path).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Progress of every partition in `partitions`.
pub async fn resume_points(
    store: &dyn ObjectStore,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, PartitionProgress>, object_store::Error> {
    let mut points = BTreeMap::new();
    for &partition in partitions {
        points.insert(
            partition,
            partition_progress(store, topic, partition).await?,
        );
    }
    Ok(points)
}
