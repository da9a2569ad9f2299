//! Where the archiver resumes: read from the lake itself. A partition's progress is one past the
//! end of its last raw file; quarantine files at or past that point are leftovers of a run that
//! died between writing a quarantine file and its raw file (the raw file is the commit), so they are
//! deleted before consuming again — otherwise a replay would quarantine those events twice.

use std::collections::BTreeMap;

use tributary_schemas::lake::{Area, Lake, LakeError, OffsetRange};

/// What the lake says about one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    /// One past the last archived offset (0 when nothing is archived).
    pub next_offset: i64,
    /// Offsets missing between files (someone deleted a file): reported, never filled silently.
    pub holes: Vec<OffsetRange>,
}

pub async fn partition_progress(
    lake: &Lake,
    topic: &str,
    partition: i32,
) -> Result<PartitionProgress, LakeError> {
    let ranges = lake.ranges(Area::Raw, topic, partition).await?;
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
    lake: &Lake,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> Result<usize, LakeError> {
    let mut removed = 0;
    for (range, _) in lake.ranges(Area::Quarantine, topic, partition).await? {
        if range.start >= next_offset {
            (lake.delete_partition_file(Area::Quarantine, topic, partition, range)).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Progress of every partition in `partitions`.
pub async fn resume_points(
    lake: &Lake,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, PartitionProgress>, LakeError> {
    let mut points = BTreeMap::new();
    for &partition in partitions {
        points.insert(partition, partition_progress(lake, topic, partition).await?);
    }
    Ok(points)
}
