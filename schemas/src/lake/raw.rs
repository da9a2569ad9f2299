//! The archiver's append-only areas (`raw/` and `quarantine/`): which partitions a topic has files
//! for, the offset ranges of those files, and the put that adds one. The archiver resumes from these
//! listings and the recompute reads the files they name.
//!
//! **Compaction** (see `tributary_batch::maintenance`) replaces contiguous small files by one file
//! whose offset range is their union, put before the small ones are deleted. A listing therefore
//! shows only the files no wider file covers ([`Lake::ranges`]): from the moment the wide file
//! exists, every reader sees each offset once, in it, whether the small ones are still there (a
//! compaction in progress, or killed before it deleted them) or not.

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::{
    Area, Lake, LakeError, OffsetRange, parse_partition_segment, partition_dir, partition_file,
};

/// A partition's files, split into those readers read and those a wider one covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Sorted by start; no file covers another.
    pub files: Vec<(OffsetRange, Path)>,
    /// Files whose offsets a wider file holds.
    pub covered: Vec<(OffsetRange, Path)>,
}

impl Listing {
    fn of(mut ranges: Vec<(OffsetRange, Path)>) -> Self {
        // By start, the widest first: a file is covered when one listed before it reaches as far.
        ranges.sort_by_key(|(range, _)| (range.start, std::cmp::Reverse(range.end)));
        let mut listing = Listing::default();
        let mut reach = i64::MIN;
        for (range, path) in ranges {
            if range.end <= reach {
                listing.covered.push((range, path));
            } else {
                reach = range.end;
                listing.files.push((range, path));
            }
        }
        listing
    }
}

impl Lake {
    /// The partitions `topic` (a generation's lake topic) has files for in `area`, ascending.
    pub async fn partitions(&self, area: Area, topic: &str) -> Result<Vec<i32>, LakeError> {
        let prefix = format!("{}/{topic}", area.prefix());
        self.child_dirs(&prefix, parse_partition_segment).await
    }

    /// The offset ranges of one partition's files in `area`, sorted by start, with their paths:
    /// the files a reader reads, without those a wider file covers (see the module docs).
    /// Objects whose names are not offset ranges are not files of the area and are skipped.
    pub async fn ranges(
        &self,
        area: Area,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<(OffsetRange, Path)>, LakeError> {
        Ok(self.listing(area, topic, partition).await?.files)
    }

    /// One partition's files in `area`: those readers read, and those a wider file covers
    /// (compaction's leftovers, to delete).
    pub async fn listing(
        &self,
        area: Area,
        topic: &str,
        partition: i32,
    ) -> Result<Listing, LakeError> {
        let prefix = Path::from(partition_dir(area, topic, partition));
        let objects: Vec<_> = self.store().list(Some(&prefix)).try_collect().await?;
        let ranges: Vec<(OffsetRange, Path)> = objects
            .into_iter()
            .filter_map(|meta| {
                let range = OffsetRange::parse_file_name(meta.location.filename()?)?;
                Some((range, meta.location))
            })
            .collect();
        Ok(Listing::of(ranges))
    }

    /// Puts the file holding offsets `range` of a partition (one atomic put).
    pub async fn put_partition_file(
        &self,
        area: Area,
        topic: &str,
        partition: i32,
        range: OffsetRange,
        parquet: bytes::Bytes,
    ) -> Result<(), LakeError> {
        let path = Path::from(partition_file(area, topic, partition, range));
        self.store().put(&path, PutPayload::from(parquet)).await?;
        Ok(())
    }

    /// Deletes the file holding offsets `range` of a partition (the archiver's leftovers of an
    /// interrupted run); deleting one that is already gone is not an error.
    pub async fn delete_partition_file(
        &self,
        area: Area,
        topic: &str,
        partition: i32,
        range: OffsetRange,
    ) -> Result<(), LakeError> {
        let path = Path::from(partition_file(area, topic, partition, range));
        match self.store().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn files_list_by_partition_and_offset_and_strangers_are_skipped() {
        let lake = Lake::new(Arc::new(InMemory::new()));
        let range = |start, end| OffsetRange { start, end };
        for (partition, r) in [(2, range(100, 199)), (2, range(0, 99)), (0, range(0, 9))] {
            lake.put_partition_file(Area::Raw, "events", partition, r, Bytes::new())
                .await
                .unwrap();
        }
        lake.put_partition_file(Area::Quarantine, "events", 1, range(5, 5), Bytes::new())
            .await
            .unwrap();
        lake.store()
            .put(
                &Path::from("raw/events/partition=2/notes.txt"),
                PutPayload::from_static(b"x"),
            )
            .await
            .unwrap();
        assert_eq!(lake.partitions(Area::Raw, "events").await.unwrap(), [0, 2]);
        assert_eq!(
            lake.partitions(Area::Quarantine, "events").await.unwrap(),
            [1]
        );
        assert!(
            lake.partitions(Area::Raw, "other")
                .await
                .unwrap()
                .is_empty()
        );
        let ranges = lake.ranges(Area::Raw, "events", 2).await.unwrap();
        let starts: Vec<_> = ranges.iter().map(|(r, _)| *r).collect();
        assert_eq!(starts, [range(0, 99), range(100, 199)]);
        assert_eq!(
            ranges[1].1.as_ref(),
            "raw/events/partition=2/00000000000000000100-00000000000000000199.parquet"
        );
        for _ in 0..2 {
            lake.delete_partition_file(Area::Raw, "events", 2, range(0, 99))
                .await
                .unwrap();
        }
        let left = lake.ranges(Area::Raw, "events", 2).await.unwrap();
        assert_eq!(left.len(), 1);
    }

    #[tokio::test]
    async fn files_a_wider_file_covers_are_not_read() {
        let lake = Lake::new(Arc::new(InMemory::new()));
        let range = |start, end| OffsetRange { start, end };
        // A compaction of [0, 9] .. [20, 29] into [0, 29], killed before it deleted them all.
        for r in [
            range(0, 9),
            range(10, 19),
            range(0, 29),
            range(20, 29),
            range(30, 39),
        ] {
            lake.put_partition_file(Area::Raw, "events", 0, r, Bytes::new())
                .await
                .unwrap();
        }
        let listing = lake.listing(Area::Raw, "events", 0).await.unwrap();
        let read: Vec<_> = listing.files.iter().map(|(r, _)| *r).collect();
        assert_eq!(read, [range(0, 29), range(30, 39)]);
        let covered: Vec<_> = listing.covered.iter().map(|(r, _)| *r).collect();
        assert_eq!(covered, [range(0, 9), range(10, 19), range(20, 29)]);
        assert_eq!(
            lake.ranges(Area::Raw, "events", 0).await.unwrap(),
            listing.files
        );
    }
}
