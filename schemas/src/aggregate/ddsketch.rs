//! `quantile`: a DDSketch ("DDSketch: a fast and fully-mergeable quantile sketch with relative-error
//! guarantees", Masson et al., 2019) with 1% relative accuracy and no bucket collapsing.
//!
//! A positive value `x` falls in bucket `i = ceil(ln(x) / ln(γ))`, γ = (1 + α) / (1 − α), α = 0.01;
//! negative values mirror into a second store; zero and subnormal values count in a zero bucket. The
//! answer for quantile `q` is the "lower" quantile, the value of rank `floor(q · (n − 1))` (0-based) in
//! sorted order, and is within **1% of that value** (relative), clamped to the exact min and max kept
//! beside the buckets. Bucket counts merge by integer addition, so merges are exact, associative,
//! commutative and bit-identical to sketching the union.
//!
//! Buckets are never collapsed: the number of buckets grows with the logarithm of the value range
//! (1 ms to 1 hour of latency is ~410 buckets), which keeps every merge exact.
//!
//! One file past the usual size on purpose: the bucket mapping, the merge and the byte form must
//! agree bit for bit, and are read together.

use std::cmp::Ordering;

use super::codec::{Reader, put_f64, put_varint, put_zigzag};
use super::{AggregateState, StateError};

/// Relative accuracy α of every quantile answer.
pub const RELATIVE_ACCURACY: f64 = 0.01;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

fn bucket_index(magnitude: f64) -> i32 {
    ceil_to_i32(magnitude.ln() / gamma().ln())
}

/// `x.ceil() as i32` for finite `x` within `i32`'s range (bucket indexes lie within ±2^16), without
/// the call to libm's `ceil` that `f64::ceil` compiles to on baseline x86-64 (a recompute maps
/// every value it reads): truncate, then step up where truncating went down.
fn ceil_to_i32(x: f64) -> i32 {
    let truncated = x as i32;
    truncated + i32::from(f64::from(truncated) < x)
}

/// The value that represents a bucket: within α of every value in it.
fn bucket_value(index: i32) -> f64 {
    let gamma = gamma();
    2.0 * (f64::from(index) * gamma.ln()).exp() / (gamma + 1.0)
}

/// The bucket a value falls in, as one `u32`: the sign in the top bit, the index offset by 2^30
/// below it (indexes of finite `f64` magnitudes lie within ±2^16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketKey(u32);

impl BucketKey {
    const NEGATIVE: u32 = 1 << 31;
    const OFFSET: i32 = 1 << 30;

    fn new(negative: bool, index: i32) -> Self {
        let sign = if negative { Self::NEGATIVE } else { 0 };
        Self(sign | (index + Self::OFFSET) as u32)
    }

    fn negative(self) -> bool {
        self.0 & Self::NEGATIVE != 0
    }

    fn index(self) -> i32 {
        (self.0 & !Self::NEGATIVE) as i32 - Self::OFFSET
    }

    pub fn to_bits(self) -> u32 {
        self.0
    }

    /// The key of [`BucketKey::to_bits`]; other bits make a key of some other bucket.
    pub fn from_bits(bits: u32) -> Self {
        Self(bits)
    }
}

/// A store updated value by value holds at most this many buckets as a sorted list; beyond it, it
/// becomes dense when a dense array would not be larger (see [`Store::add`]).
const SPARSE_MAX: usize = 16;

/// The bucket counts of one sign. The representation is memory layout only: equality, encoding and
/// every answer depend on the non-empty `(index, count)` pairs in index order, whatever the form.
///
/// - `Sparse` (the start, sketches of a few values, and every decoded or merged store): sorted
///   `(index, count)` pairs. Most view rows hold a handful of events, and merges are linear passes.
/// - `Dense` (sketches of many values): one count per index from `offset`, zeros included. An
///   update is one indexed add instead of a binary search whose every step can miss the cache (on
///   the speed layer's hot path, those misses were 80% of DDSketch's time), and a well-filled dense
///   store is smaller than the sorted list (8 bytes per index instead of 16 per bucket).
#[derive(Debug, Clone)]
enum Store {
    Sparse(Vec<(i32, u64)>),
    Dense {
        offset: i32,
        counts: Vec<u64>,
        /// How many of `counts` are not zero.
        filled: usize,
    },
}

impl Default for Store {
    fn default() -> Self {
        Store::Sparse(Vec::new())
    }
}

impl PartialEq for Store {
    fn eq(&self, other: &Self) -> bool {
        self.buckets().eq(other.buckets())
    }
}

/// A dense array of `span` indexes is used only while it is no more than twice the size of the
/// sorted list of its `filled` buckets; a store that spreads thinner goes back to the list.
fn dense_fits(span: i64, filled: usize) -> bool {
    span <= 2 * (filled as i64).max(SPARSE_MAX as i64)
}

impl Store {
    fn is_empty(&self) -> bool {
        match self {
            Store::Sparse(buckets) => buckets.is_empty(),
            Store::Dense { filled, .. } => *filled == 0,
        }
    }

    fn add(&mut self, index: i32, count: u64) {
        match self {
            Store::Dense {
                offset,
                counts,
                filled,
            } => {
                let slot = i64::from(index) - i64::from(*offset);
                if let Some(c) = usize::try_from(slot).ok().and_then(|s| counts.get_mut(s)) {
                    *filled += usize::from(*c == 0);
                    *c += count;
                    return;
                }
                let low = i64::from(*offset).min(i64::from(index));
                let high = (i64::from(*offset) + counts.len() as i64 - 1).max(i64::from(index));
                if dense_fits(high - low + 1, *filled + 1) {
                    if i64::from(index) < i64::from(*offset) {
                        let grow = (i64::from(*offset) - i64::from(index)) as usize;
                        counts.splice(0..0, std::iter::repeat_n(0, grow));
                        *offset = index;
                    } else {
                        counts.resize((i64::from(index) - i64::from(*offset)) as usize + 1, 0);
                    }
                    counts[(i64::from(index) - i64::from(*offset)) as usize] += count;
                    *filled += 1;
                } else {
                    *self = Store::Sparse(self.buckets().collect());
                    self.add(index, count);
                }
            }
            Store::Sparse(buckets) => {
                match buckets.binary_search_by_key(&index, |b| b.0) {
                    Ok(pos) => buckets[pos].1 += count,
                    Err(pos) => buckets.insert(pos, (index, count)),
                }
                self.densify_if_large();
            }
        }
    }

    /// Turns a sorted list past [`SPARSE_MAX`] buckets into a dense array when that is not larger.
    fn densify_if_large(&mut self) {
        let Store::Sparse(buckets) = self else {
            return;
        };
        let (Some(first), Some(last)) = (buckets.first(), buckets.last()) else {
            return;
        };
        let span = i64::from(last.0) - i64::from(first.0) + 1;
        if buckets.len() <= SPARSE_MAX || !dense_fits(span, buckets.len()) {
            return;
        }
        let offset = first.0;
        let mut counts = vec![0; span as usize];
        for &(index, count) in buckets.iter() {
            counts[(i64::from(index) - i64::from(offset)) as usize] = count;
        }
        *self = Store::Dense {
            offset,
            filled: buckets.len(),
            counts,
        };
    }

    fn merge(&mut self, other: &Store) {
        match (&mut *self, other) {
            (_, Store::Sparse(b)) if b.is_empty() => {}
            // Lists merged stay lists: a merge is one linear pass over them, and merged states
            // are mostly encoded again right after. Only updates (`add`) make a store dense.
            (Store::Sparse(a), Store::Sparse(b)) => *a = merge_sorted(a, b),
            (Store::Sparse(a), Store::Dense { .. }) => {
                let mine = std::mem::take(a);
                *self = other.clone();
                for (index, count) in mine {
                    self.add(index, count);
                }
            }
            (Store::Dense { .. }, _) => {
                for (index, count) in other.buckets() {
                    self.add(index, count);
                }
            }
        }
    }

    /// The non-empty buckets in index order.
    fn buckets(&self) -> Buckets<'_> {
        match self {
            Store::Sparse(buckets) => Buckets::Sparse(buckets.iter()),
            Store::Dense { offset, counts, .. } => Buckets::Dense {
                offset: *offset,
                counts: counts.iter().enumerate(),
            },
        }
    }

    fn total(&self) -> u64 {
        self.buckets().map(|b| b.1).sum()
    }

    fn heap_size(&self) -> usize {
        match self {
            Store::Sparse(buckets) => buckets.capacity() * size_of::<(i32, u64)>(),
            Store::Dense { counts, .. } => counts.capacity() * size_of::<u64>(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let len = match self {
            Store::Sparse(buckets) => buckets.len(),
            Store::Dense { filled, .. } => *filled,
        };
        put_buckets(out, len, self.buckets());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, StateError> {
        let len = reader.len(2)?;
        let mut buckets = Vec::with_capacity(len);
        let mut previous = 0i64;
        for position in 0..len {
            buckets.push(read_bucket(reader, position, &mut previous)?);
        }
        Ok(Store::Sparse(buckets))
    }
}

/// The byte form of a store: the bucket count, then `(zigzag index delta, count)` per bucket.
fn put_buckets(out: &mut Vec<u8>, len: usize, buckets: impl Iterator<Item = (i32, u64)>) {
    put_varint(out, len as u64);
    let mut previous = 0i64;
    for (index, count) in buckets {
        put_zigzag(out, i64::from(index) - previous);
        put_varint(out, count);
        previous = i64::from(index);
    }
}

/// The `(index, count)` buckets of sorted keys of one sign: runs of equal keys.
fn runs(keys: &[u32]) -> impl Iterator<Item = (i32, u64)> + '_ {
    keys.chunk_by(|a, b| a == b)
        .map(|run| (BucketKey(run[0]).index(), run.len() as u64))
}

/// Reads bucket `position` of an encoded store, whose previous bucket had index `previous`, and
/// checks the list stays canonical (counts above zero, indexes rising).
fn read_bucket(
    reader: &mut Reader<'_>,
    position: usize,
    previous: &mut i64,
) -> Result<(i32, u64), StateError> {
    let index = previous
        .checked_add(reader.zigzag()?)
        .and_then(|i| i32::try_from(i).ok())
        .ok_or(StateError::Corrupt("DDSketch bucket index out of range"))?;
    let count = reader.varint()?;
    if count == 0 || (position > 0 && i64::from(index) <= *previous) {
        return Err(StateError::Corrupt("DDSketch buckets not canonical"));
    }
    *previous = i64::from(index);
    Ok((index, count))
}

fn merge_sorted(a: &[(i32, u64)], b: &[(i32, u64)]) -> Vec<(i32, u64)> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            Ordering::Less => {
                merged.push(a[i]);
                i += 1;
            }
            Ordering::Greater => {
                merged.push(b[j]);
                j += 1;
            }
            Ordering::Equal => {
                merged.push((a[i].0, a[i].1 + b[j].1));
                i += 1;
                j += 1;
            }
        }
    }
    merged.extend_from_slice(&a[i..]);
    merged.extend_from_slice(&b[j..]);
    merged
}

/// The non-empty `(index, count)` buckets of a [`Store`], in index order (or reversed).
enum Buckets<'a> {
    Sparse(std::slice::Iter<'a, (i32, u64)>),
    Dense {
        offset: i32,
        counts: std::iter::Enumerate<std::slice::Iter<'a, u64>>,
    },
}

impl Buckets<'_> {
    fn dense_bucket(offset: i32, (slot, &count): (usize, &u64)) -> Option<(i32, u64)> {
        (count != 0).then(|| (offset + slot as i32, count))
    }
}

impl Iterator for Buckets<'_> {
    type Item = (i32, u64);

    fn next(&mut self) -> Option<(i32, u64)> {
        match self {
            Buckets::Sparse(buckets) => buckets.next().copied(),
            Buckets::Dense { offset, counts } => {
                let offset = *offset;
                counts.find_map(|entry| Self::dense_bucket(offset, entry))
            }
        }
    }
}

impl DoubleEndedIterator for Buckets<'_> {
    fn next_back(&mut self) -> Option<(i32, u64)> {
        match self {
            Buckets::Sparse(buckets) => buckets.next_back().copied(),
            Buckets::Dense { offset, counts } => {
                let offset = *offset;
                counts
                    .rfind(|&(_, &count)| count != 0)
                    .and_then(|entry| Self::dense_bucket(offset, entry))
            }
        }
    }
}

/// The bucket stores of both signs.
#[derive(Debug, Clone, Default, PartialEq)]
struct Stores {
    positive: Store,
    negative: Store,
}

/// What a sketch without stores reads as.
static NO_STORES: Stores = Stores {
    positive: Store::Sparse(Vec::new()),
    negative: Store::Sparse(Vec::new()),
};

/// A mergeable quantile sketch with relative-error guarantees.
#[derive(Debug, Clone, Default)]
pub struct DdSketch {
    count: u64,
    zero_count: u64,
    /// Exact extremes, `None` while empty.
    range: Option<(f64, f64)>,
    /// Boxed, and `None` until the first bucket: a sketch is 48 bytes instead of 120 where it sits
    /// in arrays (a recompute's 1.9M group states, every speed row's states), and one with empty
    /// stores equals one without.
    stores: Option<Box<Stores>>,
}

impl PartialEq for DdSketch {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count
            && self.zero_count == other.zero_count
            && self.range == other.range
            && self.buckets() == other.buckets()
    }
}

impl DdSketch {
    /// Adds one value. Non-finite values cannot come out of the JSON decoder and are ignored.
    pub fn update(&mut self, value: f64) {
        if let Some(key) = self.update_deferred(value) {
            self.add_key(key);
        }
    }

    /// [`DdSketch::update`] without the bucket: counts and extremes change now, and the returned
    /// [`BucketKey`] (none for zero and non-finite values) must be given to [`DdSketch::add_key`]
    /// later. Bucket counts add, so keys can be applied in any order and in batches: a recompute
    /// logs them and encodes each group's buckets once, when the group is emitted.
    pub fn update_deferred(&mut self, value: f64) -> Option<BucketKey> {
        if !value.is_finite() {
            return None;
        }
        let magnitude = value.abs();
        let key = if magnitude < f64::MIN_POSITIVE {
            self.zero_count += 1;
            None
        } else {
            Some(BucketKey::new(value < 0.0, bucket_index(magnitude)))
        };
        self.count += 1;
        self.widen(value, value);
        key
    }

    /// Adds the bucket of a value already counted by [`DdSketch::update_deferred`].
    pub fn add_key(&mut self, key: BucketKey) {
        let stores = self.stores.get_or_insert_with(Box::default);
        match key.negative() {
            false => stores.positive.add(key.index(), 1),
            true => stores.negative.add(key.index(), 1),
        }
    }

    fn buckets(&self) -> &Stores {
        self.stores.as_deref().unwrap_or(&NO_STORES)
    }

    /// Whether no bucket was added yet (deferred keys still to come do not count).
    pub fn has_no_buckets(&self) -> bool {
        let stores = self.buckets();
        stores.positive.is_empty() && stores.negative.is_empty()
    }

    /// The payload of a sketch whose buckets are all still deferred in `keys` (and none added):
    /// the bytes [`AggregateState::encode_payload`] writes once every key is added, without
    /// building the stores. Sorts `keys`. `None` (nothing written) when the sketch has buckets.
    pub fn encode_payload_with_keys(&self, keys: &mut [u32], out: &mut Vec<u8>) -> Option<()> {
        if !self.has_no_buckets() {
            return None;
        }
        if self.put_scalars(out) {
            // Positive keys sort first (the sign is the top bit), each sign by index.
            keys.sort_unstable();
            let split = keys.partition_point(|&k| !BucketKey(k).negative());
            let (positive, negative) = keys.split_at(split);
            for keys in [positive, negative] {
                let len = keys.chunk_by(|a, b| a == b).count();
                put_buckets(out, len, runs(keys));
            }
        }
        Some(())
    }

    /// The count, and when not empty the extremes and the zero count: the payload before the
    /// stores, which follow only when this says `true`.
    fn put_scalars(&self, out: &mut Vec<u8>) -> bool {
        put_varint(out, self.count);
        let Some((min, max)) = self.range else {
            return false;
        };
        put_f64(out, min);
        put_f64(out, max);
        put_varint(out, self.zero_count);
        true
    }

    fn widen(&mut self, low: f64, high: f64) {
        self.range = Some(match self.range {
            None => (low, high),
            Some((min, max)) => (
                if low.total_cmp(&min).is_lt() {
                    low
                } else {
                    min
                },
                if high.total_cmp(&max).is_gt() {
                    high
                } else {
                    max
                },
            ),
        });
    }

    /// Bytes held on the heap (for memory accounting of many sketches).
    pub fn heap_size(&self) -> usize {
        self.stores.as_deref().map_or(0, |stores| {
            size_of::<Stores>() + stores.positive.heap_size() + stores.negative.heap_size()
        })
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The lower `q`-quantile, within [`RELATIVE_ACCURACY`] of the exact one; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let (min, max) = self.range?;
        let q = q.clamp(0.0, 1.0);
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        // The extremes are kept exactly: ranks 0 and n - 1 need no bucket.
        if rank == 0 {
            return Some(min);
        }
        if rank + 1 >= self.count {
            return Some(max);
        }
        let clamp = |value: f64| value.clamp(min, max);
        let mut seen = 0u64;
        let stores = self.buckets();
        for (index, count) in stores.negative.buckets().rev() {
            seen += count;
            if seen > rank {
                return Some(clamp(-bucket_value(index)));
            }
        }
        seen += self.zero_count;
        if seen > rank {
            return Some(clamp(0.0));
        }
        for (index, count) in stores.positive.buckets() {
            seen += count;
            if seen > rank {
                return Some(clamp(bucket_value(index)));
            }
        }
        Some(max)
    }
}

/// One store of an encoded sketch, checked as [`Store::decode`] checks it, read without allocating.
#[derive(Clone, Copy)]
struct EncodedStore<'a> {
    /// The `(zigzag delta, count)` pairs, after the bucket count.
    pairs: &'a [u8],
    len: usize,
    total: u64,
}

impl<'a> EncodedStore<'a> {
    fn read(reader: &mut Reader<'a>) -> Result<Self, StateError> {
        let len = reader.len(2)?;
        let start = reader.remaining();
        let (mut total, mut previous) = (0u64, 0i64);
        for position in 0..len {
            let (_, count) = read_bucket(reader, position, &mut previous)?;
            total = total
                .checked_add(count)
                .ok_or(StateError::Corrupt("DDSketch bucket counts overflow"))?;
        }
        let pairs = &start[..start.len() - reader.remaining().len()];
        Ok(Self { pairs, len, total })
    }

    /// The index of the bucket holding position `target` (0-based, in index order).
    fn bucket_at(&self, target: u64) -> Option<i32> {
        let mut reader = Reader::new(self.pairs);
        let (mut seen, mut previous) = (0u64, 0i64);
        for position in 0..self.len {
            let (index, count) = read_bucket(&mut reader, position, &mut previous).ok()?;
            seen += count;
            if seen > target {
                return Some(index);
            }
        }
        None
    }
}

impl DdSketch {
    /// [`DdSketch::quantile`] of an encoded sketch (the payload after the kind tag), read in place:
    /// the answer of every quantile query, where decoding each sketch into buckets on the heap was
    /// most of the time spent finalizing.
    pub fn quantile_of_payload(payload: &[u8], q: f64) -> Result<Option<f64>, StateError> {
        let mut reader = Reader::new(payload);
        let count = reader.varint()?;
        if count == 0 {
            reader.finish()?;
            return Ok(None);
        }
        let (min, max) = (reader.f64()?, reader.f64()?);
        if !min.is_finite() || !max.is_finite() || min > max {
            return Err(StateError::Corrupt("DDSketch min/max invalid"));
        }
        let zero_count = reader.varint()?;
        let positive = EncodedStore::read(&mut reader)?;
        let negative = EncodedStore::read(&mut reader)?;
        reader.finish()?;
        let total = zero_count
            .checked_add(positive.total)
            .and_then(|t| t.checked_add(negative.total));
        if total != Some(count) {
            return Err(StateError::Corrupt("DDSketch bucket counts do not add up"));
        }
        // What `quantile` does, with the negative buckets (walked from the most negative value,
        // that is from the highest index) found by their position counted from the other end.
        let q = q.clamp(0.0, 1.0);
        let rank = (q * (count - 1) as f64).floor() as u64;
        if rank == 0 {
            return Ok(Some(min));
        }
        if rank + 1 >= count {
            return Ok(Some(max));
        }
        let clamp = |value: f64| value.clamp(min, max);
        if rank < negative.total {
            let index = negative.bucket_at(negative.total - 1 - rank);
            return Ok(Some(index.map_or(max, |i| clamp(-bucket_value(i)))));
        }
        if rank < negative.total + zero_count {
            return Ok(Some(clamp(0.0)));
        }
        let index = positive.bucket_at(rank - negative.total - zero_count);
        Ok(Some(index.map_or(max, |i| clamp(bucket_value(i)))))
    }
}

impl AggregateState for DdSketch {
    fn merge(&mut self, other: &Self) {
        let Some((low, high)) = other.range else {
            return;
        };
        self.count += other.count;
        self.zero_count += other.zero_count;
        if let Some(theirs) = &other.stores {
            let mine = self.stores.get_or_insert_with(Box::default);
            mine.positive.merge(&theirs.positive);
            mine.negative.merge(&theirs.negative);
        }
        self.widen(low, high);
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        if self.put_scalars(out) {
            let stores = self.buckets();
            stores.positive.encode(out);
            stores.negative.encode(out);
        }
    }

    fn decode_payload(reader: &mut Reader<'_>) -> Result<Self, StateError> {
        let count = reader.varint()?;
        if count == 0 {
            return Ok(Self::default());
        }
        let (min, max) = (reader.f64()?, reader.f64()?);
        if !min.is_finite() || !max.is_finite() || min > max {
            return Err(StateError::Corrupt("DDSketch min/max invalid"));
        }
        let zero_count = reader.varint()?;
        let positive = Store::decode(reader)?;
        let negative = Store::decode(reader)?;
        let total = zero_count
            .checked_add(positive.total())
            .and_then(|t| t.checked_add(negative.total()));
        if total != Some(count) {
            return Err(StateError::Corrupt("DDSketch bucket counts do not add up"));
        }
        let stores = match positive.is_empty() && negative.is_empty() {
            true => None,
            false => Some(Box::new(Stores { positive, negative })),
        };
        Ok(Self {
            count,
            zero_count,
            range: Some((min, max)),
            stores,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_lower_quantile(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn quantiles_are_within_the_relative_accuracy() {
        // Latency-like values spanning four orders of magnitude, plus negatives and zeros.
        let values: Vec<f64> = (0..10_000)
            .map(|i| match i % 7 {
                0 => 0.0,
                1 => -f64::from(i) * 0.37,
                _ => 0.5 + f64::from(i * i % 9973) * 1.3,
            })
            .collect();
        let mut sketch = DdSketch::default();
        values.iter().for_each(|v| sketch.update(*v));
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let exact = exact_lower_quantile(&values, q);
            let estimate = sketch.quantile(q).unwrap();
            assert!(
                (estimate - exact).abs() <= RELATIVE_ACCURACY * exact.abs() + 1e-12,
                "q={q} exact={exact} estimate={estimate}"
            );
        }
    }

    #[test]
    fn empty_sketch_has_no_quantile_and_encodes_in_one_byte() {
        let sketch = DdSketch::default();
        assert_eq!(sketch.quantile(0.5), None);
        let mut bytes = Vec::new();
        sketch.encode_payload(&mut bytes);
        assert_eq!(bytes, [0]);
    }

    /// The list a store must hold whatever its form: a plain map of index → count.
    fn reference(adds: &[(i32, u64)]) -> Vec<(i32, u64)> {
        let mut map = std::collections::BTreeMap::new();
        for &(index, count) in adds {
            *map.entry(index).or_insert(0) += count;
        }
        map.into_iter().collect()
    }

    fn store_of(adds: &[(i32, u64)]) -> Store {
        let mut store = Store::default();
        adds.iter()
            .for_each(|&(index, count)| store.add(index, count));
        store
    }

    fn encoded(store: &Store) -> Vec<u8> {
        let mut out = Vec::new();
        store.encode(&mut out);
        out
    }

    /// Bucket indexes clustered (dense), spread out (sparse) or both, so stores cross between the
    /// two forms in both directions.
    fn adds() -> impl proptest::strategy::Strategy<Value = Vec<(i32, u64)>> {
        use proptest::prelude::*;
        let index = prop_oneof![
            6 => 100i32..180,
            2 => -40i32..40,
            1 => -30_000i32..30_000,
        ];
        proptest::collection::vec((index, 1u64..5), 0..300)
    }

    #[test]
    fn ceil_to_i32_is_ceil_over_the_index_range() {
        let mut xs = vec![
            0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 1e-300, -1e-300, 35_999.5, -35_999.5,
        ];
        for i in -40_000..40_000 {
            let x = f64::from(i);
            xs.extend([x, x.next_up(), x.next_down(), x + 0.5]);
        }
        for x in xs {
            assert_eq!(ceil_to_i32(x), x.ceil() as i32, "{x:e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn ceil_to_i32_is_ceil_of_any_index(x in -40_000.0f64..40_000.0) {
            proptest::prop_assert_eq!(ceil_to_i32(x), x.ceil() as i32);
        }


        #[test]
        fn a_store_holds_the_same_buckets_in_either_form(left in adds(), right in adds()) {
            let all: Vec<_> = left.iter().chain(&right).copied().collect();
            let expected = reference(&all);
            let whole = store_of(&all);
            proptest::prop_assert_eq!(&whole.buckets().collect::<Vec<_>>(), &expected);
            proptest::prop_assert_eq!(
                whole.buckets().rev().collect::<Vec<_>>(),
                expected.iter().rev().copied().collect::<Vec<_>>()
            );
            proptest::prop_assert_eq!(whole.total(), expected.iter().map(|b| b.1).sum::<u64>());
            // Merging in either order, and a decoded copy, give the same buckets and bytes.
            let mut merged = store_of(&left);
            merged.merge(&store_of(&right));
            let mut swapped = store_of(&right);
            swapped.merge(&store_of(&left));
            let bytes = encoded(&whole);
            let decoded = Store::decode(&mut Reader::new(&bytes)).unwrap();
            for store in [&merged, &swapped, &decoded] {
                proptest::prop_assert_eq!(store, &whole);
                proptest::prop_assert_eq!(encoded(store), bytes.clone());
            }
        }

        /// Deferred updates whose keys are applied later, in another order, give the bytes of
        /// updating value by value, and so does encoding straight from the keys.
        #[test]
        fn deferred_keys_applied_later_give_the_updated_sketch(
            values in proptest::collection::vec(
                proptest::prop_oneof![
                    -1e12f64..1e12,
                    0.5f64..2000.0,
                    proptest::strategy::Just(0.0),
                    proptest::strategy::Just(-0.0),
                    proptest::strategy::Just(f64::NAN),
                ],
                0..400,
            ),
        ) {
            let mut want = DdSketch::default();
            values.iter().for_each(|&v| want.update(v));

            let mut got = DdSketch::default();
            let mut keys: Vec<BucketKey> = values.iter().filter_map(|&v| got.update_deferred(v)).collect();
            keys.reverse();
            keys = keys.iter().map(|k| BucketKey::from_bits(k.to_bits())).collect();
            proptest::prop_assert!(got.has_no_buckets());
            keys.iter().for_each(|&k| got.add_key(k));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            got.encode_payload(&mut a);
            want.encode_payload(&mut b);
            proptest::prop_assert_eq!(&a, &b);
            proptest::prop_assert_eq!(&got, &want);

            // Or encoded straight from the keys, without building the stores.
            let mut direct = DdSketch::default();
            let mut bits: Vec<u32> = values
                .iter()
                .filter_map(|&v| direct.update_deferred(v))
                .map(BucketKey::to_bits)
                .rev()
                .collect();
            let mut c = Vec::new();
            proptest::prop_assert!(direct.encode_payload_with_keys(&mut bits, &mut c).is_some());
            proptest::prop_assert_eq!(&c, &b);
            proptest::prop_assert!(got.encode_payload_with_keys(&mut bits, &mut c).is_none() || got.has_no_buckets());
        }
    }

    #[test]
    fn a_sketch_keeps_its_buckets_off_its_arrays() {
        // What an array of group states or a speed row's states holds inline per sketch.
        assert_eq!(size_of::<DdSketch>(), 48);
        let mut sketch = DdSketch::default();
        sketch.update(0.0);
        assert!(sketch.stores.is_none(), "zeros need no bucket");
        sketch.update(12.5);
        assert!(sketch.heap_size() >= size_of::<Stores>());
        let emptied = DdSketch {
            stores: Some(Box::default()),
            ..sketch.clone()
        };
        let without = DdSketch {
            stores: None,
            ..sketch.clone()
        };
        assert_eq!(emptied, without, "empty stores equal none");
        assert_ne!(sketch, without);
    }

    #[test]
    fn a_store_turns_dense_when_full_and_back_when_spread() {
        let mut store = store_of(&(0..=SPARSE_MAX as i32).map(|i| (i, 1)).collect::<Vec<_>>());
        assert!(matches!(store, Store::Dense { .. }), "{store:?}");
        store.add(10_000, 1);
        assert!(matches!(store, Store::Sparse(_)), "{store:?}");
        assert_eq!(store.total(), SPARSE_MAX as u64 + 2);
    }

    #[test]
    fn extremes_are_exact() {
        let mut sketch = DdSketch::default();
        for value in [12.5, 3.25, 700.0] {
            sketch.update(value);
        }
        assert_eq!(sketch.quantile(0.0), Some(3.25));
        assert_eq!(sketch.quantile(1.0), Some(700.0));
    }
}
