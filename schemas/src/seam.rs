//! The seam between the batch and speed layers (ARCHITECTURE.md §5), as arithmetic both sides share.
//!
//! The batch layer covers offsets `< W[p]` of each partition, `W[p]` aligned down to a multiple of the
//! epoch size `E`. The speed layer keeps states per `(partition, epoch = offset / E)`, and a query
//! pinned to a batch version merges the speed epochs `>= W[p] / E`. Because `W[p]` is a multiple of
//! `E`, an epoch is either entirely below the boundary (in the batch view) or entirely above it (in
//! the speed layer): every offset is counted exactly once.

/// The epoch holding `offset`.
pub fn epoch_of(offset: i64, epoch_size: u64) -> i64 {
    offset.div_euclid(epoch_size as i64)
}

/// The boundary a recompute may use given the archiver's contiguous progress on a partition (the
/// first offset not yet archived): `progress` aligned down to a multiple of `epoch_size`.
pub fn aligned_boundary(progress: i64, epoch_size: u64) -> i64 {
    epoch_of(progress.max(0), epoch_size) * epoch_size as i64
}

/// The first epoch the speed layer contributes above boundary `w`.
pub fn first_speed_epoch(w: i64, epoch_size: u64) -> i64 {
    debug_assert_eq!(
        w.rem_euclid(epoch_size as i64),
        0,
        "boundaries are epoch-aligned"
    );
    epoch_of(w, epoch_size)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_offset_is_on_exactly_one_side_of_the_seam(
            progress in 0i64..10_000_000,
            offset in 0i64..10_000_000,
            epoch_size in 1u64..1_000_000,
        ) {
            let w = aligned_boundary(progress, epoch_size);
            prop_assert!(w <= progress && progress - w < epoch_size as i64);
            let in_batch = offset < w;
            let in_speed = epoch_of(offset, epoch_size) >= first_speed_epoch(w, epoch_size);
            prop_assert!(in_batch != in_speed, "offset {} w {} E {}", offset, w, epoch_size);
        }
    }

    #[test]
    fn boundaries_align_down() {
        assert_eq!(aligned_boundary(0, 100), 0);
        assert_eq!(aligned_boundary(99, 100), 0);
        assert_eq!(aligned_boundary(250, 100), 200);
        assert_eq!(first_speed_epoch(200, 100), 2);
    }
}
