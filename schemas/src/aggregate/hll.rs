//! `count_distinct`: a HyperLogLog sketch with a sparse mode, deterministic so that every layer builds
//! bit-identical sketches from the same values.
//!
//! Parameters (fixed: changing them changes the state format version):
//! - values are hashed with XXH3-64 (seed 0) over a canonical byte form, see [`hash_str`] and friends;
//! - **dense** mode has 2^14 = 16384 six-bit registers: relative standard error 1.04/sqrt(16384) ≈ 0.81%
//!   (about 2.4% at three sigma), estimated with Ertl's improved estimator ("New cardinality estimation
//!   algorithms for HyperLogLog sketches", 2017), which needs no empirical bias tables;
//! - **sparse** mode (HLL++) keeps a sorted list of (25-bit index, rank) entries, one per distinct
//!   index seen, while there are at most [`SPARSE_LIMIT`] of them. Its estimate is linear counting over
//!   2^25 buckets: exact for small sets except for a ~n²/2^26 chance of a hash collision. Ten values
//!   encode in at most 52 bytes.
//!
//! The representation is a function of the inserted hashes alone (sparse iff the distinct 25-bit
//! indexes number at most [`SPARSE_LIMIT`]), and converting a sparse entry to a dense register gives
//! exactly the register a direct insert would have set. Hence `merge(sketch(a), sketch(b))` is
//! bit-identical to `sketch(a ++ b)`, whatever the order or grouping of merges.

use xxhash_rust::xxh3::xxh3_64;

use super::codec::{Reader, put_varint};
use super::{AggregateState, StateError};

/// log2 of the number of dense registers.
pub const PRECISION: u32 = 14;
const REGISTERS: usize = 1 << PRECISION;
/// log2 of the number of sparse buckets.
const SPARSE_PRECISION: u32 = 25;
/// Largest rank a register can hold: leading zeros of the 50 bits after the index, plus one.
const MAX_DENSE_RANK: u8 = (64 - PRECISION + 1) as u8;
const MAX_SPARSE_RANK: u32 = 64 - SPARSE_PRECISION + 1;
const DENSE_BYTES: usize = REGISTERS * 6 / 8;
/// Beyond this many entries the sparse list (≈4 bytes an entry) is no smaller than the packed registers.
pub const SPARSE_LIMIT: usize = DENSE_BYTES / 4;

const REPR_SPARSE: u8 = 0;
const REPR_DENSE: u8 = 1;

pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

pub fn hash_str(value: &str) -> u64 {
    hash_bytes(value.as_bytes())
}

/// Integers and timestamps (epoch milliseconds) hash their little-endian bytes.
pub fn hash_i64(value: i64) -> u64 {
    hash_bytes(&value.to_le_bytes())
}

/// `-0.0` hashes as `0.0` (they compare equal), every NaN as the canonical NaN.
pub fn hash_f64(value: f64) -> u64 {
    let canonical = if value == 0.0 {
        0.0f64
    } else if value.is_nan() {
        f64::NAN
    } else {
        value
    };
    hash_bytes(&canonical.to_bits().to_le_bytes())
}

pub fn hash_bool(value: bool) -> u64 {
    hash_bytes(&[u8::from(value)])
}

#[derive(Debug, Clone)]
enum Repr {
    /// Entries `index << 6 | rank`. `entries[..sorted]` is the sketch proper: sorted by index,
    /// one per index, keeping the largest rank. `entries[sorted..]` holds inserts not merged in
    /// yet, in any order and with repeats: inserting into the sorted list moved ~n/2 entries
    /// each time, which made large sparse sketches (a busy hour of a speed-layer group) cost a
    /// memmove per value. The tail is settled in by [`settle`] once it is a quarter of the list,
    /// so an insert costs O(log n) amortized. `entries.len()` never exceeds [`SPARSE_LIMIT`]
    /// unsettled, so the settled list decides sparse or dense exactly as eager inserts did.
    Sparse { entries: Vec<u32>, sorted: usize },
    /// One byte per register in memory; six bits per register when encoded.
    Dense(Box<[u8]>),
}

/// A HyperLogLog sketch of distinct values.
#[derive(Debug, Clone)]
pub struct Hll {
    repr: Repr,
}

impl Default for Hll {
    fn default() -> Self {
        Self {
            repr: Repr::Sparse {
                entries: Vec::new(),
                sorted: 0,
            },
        }
    }
}

/// Sketches are equal when they hold the same registers or the same settled entries, whatever
/// is still in the tail.
impl PartialEq for Hll {
    fn eq(&self, other: &Self) -> bool {
        match (&self.repr, &other.repr) {
            (Repr::Dense(mine), Repr::Dense(theirs)) => mine == theirs,
            (
                Repr::Sparse { entries, sorted },
                Repr::Sparse {
                    entries: other_entries,
                    sorted: other_sorted,
                },
            ) => with_settled(entries, *sorted, |mine| {
                with_settled(other_entries, *other_sorted, |theirs| mine == theirs)
            }),
            _ => false,
        }
    }
}

impl Eq for Hll {}

/// Tail length that triggers [`settle`] for a settled list of `sorted` entries.
fn tail_limit(sorted: usize) -> usize {
    (sorted / 4).max(16)
}

/// Sorts entries by index and keeps one per index, the largest rank, at the front of `entries`;
/// returns how many that is.
fn sort_unique(entries: &mut [u32]) -> usize {
    // Entries sort by index, then rank: the last of each index has the largest rank.
    entries.sort_unstable();
    let mut kept = 0;
    for i in 0..entries.len() {
        let entry = entries[i];
        if kept > 0 && entries[kept - 1] >> 6 == entry >> 6 {
            entries[kept - 1] = entry;
        } else {
            entries[kept] = entry;
            kept += 1;
        }
    }
    kept
}

/// Merges the tail of `entries` into its sorted part.
fn settle(entries: &mut Vec<u32>, sorted: &mut usize) {
    if *sorted == entries.len() {
        return;
    }
    let mut tail = entries.split_off(*sorted);
    let unique = sort_unique(&mut tail);
    tail.truncate(unique);
    *entries = merge_sorted_entries(entries, &tail);
    *sorted = entries.len();
}

/// Runs `f` on the settled entries of a sparse sketch without changing it (on the stack for
/// small sketches).
fn with_settled<R>(entries: &[u32], sorted: usize, f: impl FnOnce(&[u32]) -> R) -> R {
    const ON_STACK: usize = 64;
    if sorted == entries.len() {
        return f(entries);
    }
    if entries.len() <= ON_STACK {
        let mut copy = [0u32; ON_STACK];
        let copy = &mut copy[..entries.len()];
        copy.copy_from_slice(entries);
        let unique = sort_unique(copy);
        return f(&copy[..unique]);
    }
    let mut owned = entries.to_vec();
    let mut settled_len = sorted;
    settle(&mut owned, &mut settled_len);
    f(&owned)
}

/// The sparse representation's bytes, after the precision: settled entries as deltas.
fn put_sparse(entries: &[u32], out: &mut Vec<u8>) {
    out.push(REPR_SPARSE);
    put_varint(out, entries.len() as u64);
    let mut previous = 0u32;
    for &entry in entries {
        put_varint(out, u64::from(entry - previous));
        previous = entry;
    }
}

/// The payload of the sketch holding exactly the [`sparse_entry`]s `entries` (any order, repeats
/// allowed), when that sketch is sparse: what [`AggregateState::encode_payload`] writes after
/// inserting them, without building it. Sorts `entries`; `None` (nothing written) when they are
/// too many for a sparse sketch.
pub fn encode_payload_of_entries(entries: &mut [u32], out: &mut Vec<u8>) -> Option<()> {
    let unique = sort_unique(entries);
    if unique > SPARSE_LIMIT {
        return None;
    }
    out.push(PRECISION as u8);
    put_sparse(&entries[..unique], out);
    Some(())
}

/// The sparse entry `index << 6 | rank` of a hash: what [`Hll::insert_entry`] adds, in 31 bits.
pub fn sparse_entry(hash: u64) -> u32 {
    let index = (hash >> (64 - SPARSE_PRECISION)) as u32;
    (index << 6) | rank(hash << SPARSE_PRECISION, MAX_SPARSE_RANK)
}

/// Rank of the bits that follow an index: leading zeros plus one, where `rest` holds those bits at its
/// top and zeros below them.
fn rank(rest: u64, max: u32) -> u32 {
    if rest == 0 {
        max
    } else {
        rest.leading_zeros() + 1
    }
}

/// The dense register (index, rank) that a sparse entry stands for.
fn sparse_to_dense(entry: u32) -> (usize, u8) {
    let sparse_index = entry >> 6;
    let sparse_rank = entry & 0x3f;
    let extra_bits = SPARSE_PRECISION - PRECISION;
    let index = (sparse_index >> extra_bits) as usize;
    let between = sparse_index & ((1 << extra_bits) - 1);
    let rank = if between == 0 {
        extra_bits + sparse_rank
    } else {
        (between << (32 - extra_bits)).leading_zeros() + 1
    };
    (index, rank as u8)
}

impl Hll {
    /// Adds one hashed value (see [`hash_str`] and friends).
    pub fn insert_hash(&mut self, hash: u64) {
        match &mut self.repr {
            Repr::Sparse { .. } => self.insert_entry(sparse_entry(hash)),
            Repr::Dense(registers) => {
                let index = (hash >> (64 - PRECISION)) as usize;
                let rank = rank(hash << PRECISION, u32::from(MAX_DENSE_RANK)) as u8;
                registers[index] = registers[index].max(rank);
            }
        }
    }

    /// Adds the [`sparse_entry`] of a hash: the same as [`Hll::insert_hash`] of that hash (a sparse
    /// entry keeps every bit a dense register needs).
    pub fn insert_entry(&mut self, entry: u32) {
        match &mut self.repr {
            Repr::Sparse { entries, sorted } => {
                entries.push(entry);
                let tail = entries.len() - *sorted;
                if tail >= tail_limit(*sorted) || entries.len() > SPARSE_LIMIT {
                    settle(entries, sorted);
                    if entries.len() > SPARSE_LIMIT {
                        self.densify();
                    }
                }
            }
            Repr::Dense(registers) => apply_sparse(registers, &[entry]),
        }
    }

    /// Bytes held on the heap (for memory accounting of many sketches).
    pub fn heap_size(&self) -> usize {
        match &self.repr {
            Repr::Sparse { entries, .. } => entries.capacity() * size_of::<u32>(),
            Repr::Dense(registers) => registers.len(),
        }
    }

    /// Whether nothing was inserted (or merged in).
    pub fn is_empty(&self) -> bool {
        matches!(&self.repr, Repr::Sparse { entries, .. } if entries.is_empty())
    }

    pub fn is_sparse(&self) -> bool {
        matches!(self.repr, Repr::Sparse { .. })
    }

    fn densify(&mut self) {
        // Repeats in the tail are harmless here: a register keeps the largest rank.
        if let Repr::Sparse { entries, .. } = &self.repr {
            let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
            apply_sparse(&mut registers, entries);
            self.repr = Repr::Dense(registers);
        }
    }

    /// Estimated number of distinct values, rounded to the nearest integer.
    pub fn finalize(&self) -> i64 {
        let estimate = match &self.repr {
            Repr::Sparse { entries, sorted } => {
                linear_counting(with_settled(entries, *sorted, <[u32]>::len) as u64)
            }
            Repr::Dense(registers) => ertl_estimate(registers),
        };
        estimate.round() as i64
    }
}

/// [`Hll::finalize`] of an encoded sketch (the byte form of [`super::MetricState`]) without
/// decoding its entries when it is sparse: a sparse estimate needs only their number. `None` when
/// the bytes are not a sparse sketch (decode those).
pub fn sparse_estimate(state_bytes: &[u8]) -> Option<i64> {
    let mut reader = Reader::new(state_bytes);
    let header = [
        reader.u8().ok()?,
        reader.u8().ok()?,
        reader.u8().ok()?,
        reader.u8().ok()?,
    ];
    let tag = super::StateKind::CountDistinct.tag();
    if header
        != [
            super::STATE_FORMAT_VERSION,
            tag,
            PRECISION as u8,
            REPR_SPARSE,
        ]
    {
        return None;
    }
    let len = reader.varint().ok()?;
    if len > SPARSE_LIMIT as u64 {
        return None;
    }
    Some(linear_counting(len).round() as i64)
}

/// The sparse estimate: linear counting over the 2^25 sparse buckets, `entries` of them set.
fn linear_counting(entries: u64) -> f64 {
    let buckets = (1u64 << SPARSE_PRECISION) as f64;
    let empty = buckets - entries as f64;
    buckets * (buckets / empty).ln()
}

fn apply_sparse(registers: &mut [u8], entries: &[u32]) {
    for &entry in entries {
        let (index, rank) = sparse_to_dense(entry);
        registers[index] = registers[index].max(rank);
    }
}

/// Ertl's improved raw estimator (2017, algorithm 6) over the register-value histogram.
fn ertl_estimate(registers: &[u8]) -> f64 {
    let q = 64 - PRECISION as usize;
    let m = REGISTERS as f64;
    let mut histogram = [0u32; 64];
    for &register in registers {
        histogram[register as usize] += 1;
    }
    let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(histogram[k]));
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    let alpha_infinity = 0.5 / std::f64::consts::LN_2;
    alpha_infinity * m * m / z
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == previous {
            return z / 3.0;
        }
    }
}

impl AggregateState for Hll {
    fn merge(&mut self, other: &Self) {
        match (&mut self.repr, &other.repr) {
            (Repr::Dense(mine), Repr::Dense(theirs)) => {
                for (register, &other) in mine.iter_mut().zip(theirs.iter()) {
                    *register = (*register).max(other);
                }
            }
            (
                Repr::Dense(mine),
                Repr::Sparse {
                    entries: theirs, ..
                },
            ) => apply_sparse(mine, theirs),
            (Repr::Sparse { entries: mine, .. }, Repr::Dense(theirs)) => {
                let mut registers = theirs.clone();
                apply_sparse(&mut registers, mine);
                self.repr = Repr::Dense(registers);
            }
            (
                Repr::Sparse {
                    entries: mine,
                    sorted,
                },
                Repr::Sparse {
                    entries: theirs,
                    sorted: their_sorted,
                },
            ) => {
                settle(mine, sorted);
                let merged = with_settled(theirs, *their_sorted, |theirs| {
                    merge_sorted_entries(mine, theirs)
                });
                let too_big = merged.len() > SPARSE_LIMIT;
                *sorted = merged.len();
                *mine = merged;
                if too_big {
                    self.densify();
                }
            }
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        out.push(PRECISION as u8);
        match &self.repr {
            Repr::Sparse { entries, sorted } => {
                with_settled(entries, *sorted, |entries| put_sparse(entries, out));
            }
            Repr::Dense(registers) => {
                out.push(REPR_DENSE);
                for group in registers.chunks_exact(4) {
                    let packed = u32::from(group[0])
                        | u32::from(group[1]) << 6
                        | u32::from(group[2]) << 12
                        | u32::from(group[3]) << 18;
                    out.extend_from_slice(&packed.to_le_bytes()[..3]);
                }
            }
        }
    }

    fn decode_payload(reader: &mut Reader<'_>) -> Result<Self, StateError> {
        if u32::from(reader.u8()?) != PRECISION {
            return Err(StateError::Corrupt("HyperLogLog precision differs from 14"));
        }
        let repr = match reader.u8()? {
            REPR_SPARSE => {
                let len = reader.len(1)?;
                if len > SPARSE_LIMIT {
                    return Err(StateError::Corrupt("sparse HyperLogLog exceeds its limit"));
                }
                let mut entries = Vec::with_capacity(len);
                let mut previous = 0u64;
                for position in 0..len {
                    let delta = reader.varint()?;
                    let entry = previous
                        .checked_add(delta)
                        .filter(|e| *e < 1 << (SPARSE_PRECISION + 6))
                        .ok_or(StateError::Corrupt("sparse HyperLogLog entry out of range"))?;
                    let rank = (entry & 0x3f) as u32;
                    let index_grew = position == 0 || (entry >> 6) > (previous >> 6);
                    if rank == 0 || rank > MAX_SPARSE_RANK || !index_grew {
                        return Err(StateError::Corrupt(
                            "sparse HyperLogLog entries not canonical",
                        ));
                    }
                    entries.push(entry as u32);
                    previous = entry;
                }
                Repr::Sparse {
                    sorted: entries.len(),
                    entries,
                }
            }
            REPR_DENSE => {
                let packed = reader.take(DENSE_BYTES)?;
                let mut registers = Vec::with_capacity(REGISTERS);
                for group in packed.chunks_exact(3) {
                    let bits = u32::from_le_bytes([group[0], group[1], group[2], 0]);
                    for shift in [0, 6, 12, 18] {
                        let register = ((bits >> shift) & 0x3f) as u8;
                        if register > MAX_DENSE_RANK {
                            return Err(StateError::Corrupt("HyperLogLog register out of range"));
                        }
                        registers.push(register);
                    }
                }
                Repr::Dense(registers.into_boxed_slice())
            }
            _ => return Err(StateError::Corrupt("unknown HyperLogLog representation")),
        };
        Ok(Self { repr })
    }
}

/// Union of two sorted entry lists, keeping the larger rank where an index is in both.
fn merge_sorted_entries(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match (a[i] >> 6).cmp(&(b[j] >> 6)) {
            std::cmp::Ordering::Less => {
                merged.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                merged.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                merged.push(a[i].max(b[j]));
                i += 1;
                j += 1;
            }
        }
    }
    merged.extend_from_slice(&a[i..]);
    merged.extend_from_slice(&b[j..]);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch(range: std::ops::Range<i64>) -> Hll {
        let mut hll = Hll::default();
        for value in range {
            hll.insert_hash(hash_i64(value));
        }
        hll
    }

    #[test]
    fn sparse_to_dense_matches_a_direct_dense_insert() {
        for value in 0..20_000i64 {
            let hash = hash_i64(value);
            let mut sparse = Hll::default();
            sparse.insert_hash(hash);
            sparse.densify();
            let mut dense = Hll {
                repr: Repr::Dense(vec![0u8; REGISTERS].into_boxed_slice()),
            };
            dense.insert_hash(hash);
            assert_eq!(sparse, dense, "value {value}, hash {hash:#x}");
        }
    }

    #[test]
    fn small_sets_are_counted_exactly_and_stay_small() {
        let hll = sketch(0..10);
        assert!(hll.is_sparse());
        assert_eq!(hll.finalize(), 10);
        let mut bytes = Vec::new();
        hll.encode_payload(&mut bytes);
        assert!(bytes.len() <= 62, "payload is {} bytes", bytes.len());
    }

    #[test]
    fn the_sparse_estimate_from_bytes_is_the_decoded_estimate() {
        for size in [0, 1, 10, 700, 3000, 5000] {
            let hll = sketch(0..size);
            let bytes = crate::aggregate::MetricState::CountDistinct(hll.clone()).to_bytes();
            match sparse_estimate(&bytes) {
                Some(estimate) => assert_eq!(estimate, hll.finalize(), "{size} values"),
                None => assert!(
                    !hll.is_sparse(),
                    "a sparse sketch of {size} values read as dense"
                ),
            }
        }
        assert_eq!(sparse_estimate(&[9, 9, 9]), None);
    }

    #[test]
    fn large_sets_are_within_three_standard_errors() {
        for n in [5_000i64, 100_000, 1_000_000] {
            let hll = sketch(0..n);
            assert!(!hll.is_sparse());
            let error = (hll.finalize() - n).abs() as f64 / n as f64;
            assert!(
                error < 3.0 * 0.0081,
                "n={n} estimate={} error={error}",
                hll.finalize()
            );
        }
    }

    #[test]
    fn the_sparse_to_dense_transition_keeps_the_estimate_continuous() {
        let limit = SPARSE_LIMIT as i64;
        for n in [limit - 10, limit + 10] {
            let error = (sketch(0..n).finalize() - n).abs() as f64 / n as f64;
            assert!(error < 0.03, "n={n} error={error}");
        }
    }

    #[test]
    fn dense_encoding_round_trips() {
        let hll = sketch(0..50_000);
        let mut bytes = Vec::new();
        hll.encode_payload(&mut bytes);
        assert_eq!(bytes.len(), 2 + DENSE_BYTES);
        let mut reader = Reader::new(&bytes);
        assert_eq!(Hll::decode_payload(&mut reader).unwrap(), hll);
        reader.finish().unwrap();
    }

    /// The sketch of `hashes` built from first principles: the largest rank per 25-bit index,
    /// sparse while there are at most [`SPARSE_LIMIT`] indexes, else the dense registers.
    fn reference_bytes(hashes: &[u64]) -> Vec<u8> {
        let mut ranks = std::collections::BTreeMap::<u32, u32>::new();
        for &hash in hashes {
            let index = (hash >> (64 - SPARSE_PRECISION)) as u32;
            let rank = rank(hash << SPARSE_PRECISION, MAX_SPARSE_RANK);
            let kept = ranks.entry(index).or_default();
            *kept = (*kept).max(rank);
        }
        let entries: Vec<u32> = ranks.iter().map(|(i, r)| i << 6 | r).collect();
        let repr = if entries.len() > SPARSE_LIMIT {
            let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
            apply_sparse(&mut registers, &entries);
            Repr::Dense(registers)
        } else {
            Repr::Sparse {
                sorted: entries.len(),
                entries,
            }
        };
        let mut bytes = Vec::new();
        Hll { repr }.encode_payload(&mut bytes);
        bytes
    }

    fn bytes_of(hll: &Hll) -> Vec<u8> {
        let mut bytes = Vec::new();
        hll.encode_payload(&mut bytes);
        bytes
    }

    /// Hashes with many repeats, few or many distinct ones, some sharing an index with another.
    fn hashes() -> impl proptest::strategy::Strategy<Value = Vec<u64>> {
        use proptest::prelude::*;
        let hash = prop_oneof![
            1 => (0u64..40).prop_map(|v| hash_i64(v as i64)),
            6 => (0u64..20_000).prop_map(|v| hash_i64(v as i64)),
            // Same 25-bit index as a small value's hash, another rank.
            1 => ((0u64..40), any::<u64>()).prop_map(|(v, low)| {
                let base = hash_i64(v as i64);
                base & !((1 << (64 - SPARSE_PRECISION)) - 1) | (low >> SPARSE_PRECISION)
            }),
        ];
        prop_oneof![
            proptest::collection::vec(hash.clone(), 0..100),
            // Around the sparse limit (3072 indexes) and past it.
            proptest::collection::vec(hash, 2500..9000),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        /// Inserts settle lazily; whatever is unsettled, the sketch reads, encodes, compares and
        /// merges like the eager one, and a merge of parts equals the sketch of the whole.
        #[test]
        fn lazy_inserts_give_the_eager_sketch(hashes in hashes(), split in 0usize..9000) {
            let mut whole = Hll::default();
            for &hash in &hashes {
                whole.insert_hash(hash);
            }
            let want = reference_bytes(&hashes);
            proptest::prop_assert_eq!(&bytes_of(&whole), &want);
            let mut reader = Reader::new(&want);
            let decoded = Hll::decode_payload(&mut reader).unwrap();
            proptest::prop_assert_eq!(decoded.finalize(), whole.finalize());
            proptest::prop_assert_eq!(&decoded, &whole);

            let (a, b) = hashes.split_at(split.min(hashes.len()));
            let (mut left, mut right) = (Hll::default(), Hll::default());
            a.iter().for_each(|&h| left.insert_hash(h));
            b.iter().for_each(|&h| right.insert_hash(h));
            let mut right_into_left = left.clone();
            right_into_left.merge(&right);
            right.merge(&left);
            proptest::prop_assert_eq!(&bytes_of(&right_into_left), &want);
            proptest::prop_assert_eq!(&bytes_of(&right), &want);
            proptest::prop_assert!(right == whole);
        }

        /// A recompute defers inserts as sparse entries and applies them later, in another order,
        /// or encodes straight from them: the bytes are those of inserting the hashes.
        #[test]
        fn entries_inserted_later_in_any_order_give_the_hashes_sketch(
            hashes in hashes(),
            rotate in 0usize..9000,
        ) {
            let mut entries: Vec<u32> = hashes.iter().map(|&h| sparse_entry(h)).collect();
            entries.reverse();
            if !entries.is_empty() {
                let by = rotate % entries.len();
                entries.rotate_left(by);
            }
            let mut later = Hll::default();
            entries.iter().for_each(|&e| later.insert_entry(e));
            let want = reference_bytes(&hashes);
            proptest::prop_assert_eq!(&bytes_of(&later), &want);

            // Or encoded straight from the entries while they fit a sparse sketch.
            let mut direct = Vec::new();
            match encode_payload_of_entries(&mut entries, &mut direct) {
                Some(()) => proptest::prop_assert_eq!(&direct, &want),
                None => {
                    proptest::prop_assert!(!later.is_sparse());
                    proptest::prop_assert!(direct.is_empty());
                }
            }
        }
    }

    #[test]
    fn signed_zero_and_nan_hash_canonically() {
        assert_eq!(hash_f64(0.0), hash_f64(-0.0));
        assert_eq!(hash_f64(f64::NAN), hash_f64(-f64::NAN));
        assert_ne!(hash_f64(1.0), hash_f64(2.0));
    }
}
