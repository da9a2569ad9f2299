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

use std::cmp::Ordering;

use super::codec::{Reader, put_f64, put_varint, put_zigzag};
use super::{AggregateState, StateError};

/// Relative accuracy α of every quantile answer.
pub const RELATIVE_ACCURACY: f64 = 0.01;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

fn bucket_index(magnitude: f64) -> i32 {
    (magnitude.ln() / gamma().ln()).ceil() as i32
}

/// The value that represents a bucket: within α of every value in it.
fn bucket_value(index: i32) -> f64 {
    let gamma = gamma();
    2.0 * (f64::from(index) * gamma.ln()).exp() / (gamma + 1.0)
}

/// Non-empty buckets sorted by index: `(index, count)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Store {
    buckets: Vec<(i32, u64)>,
}

impl Store {
    fn add(&mut self, index: i32, count: u64) {
        match self.buckets.binary_search_by_key(&index, |b| b.0) {
            Ok(pos) => self.buckets[pos].1 += count,
            Err(pos) => self.buckets.insert(pos, (index, count)),
        }
    }

    fn merge(&mut self, other: &Store) {
        if other.buckets.is_empty() {
            return;
        }
        let mut merged = Vec::with_capacity(self.buckets.len() + other.buckets.len());
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.buckets, &other.buckets);
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
        self.buckets = merged;
    }

    fn total(&self) -> u64 {
        self.buckets.iter().map(|b| b.1).sum()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.buckets.len() as u64);
        let mut previous = 0i64;
        for &(index, count) in &self.buckets {
            put_zigzag(out, i64::from(index) - previous);
            put_varint(out, count);
            previous = i64::from(index);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, StateError> {
        let len = reader.len(2)?;
        let mut buckets = Vec::with_capacity(len);
        let mut previous = 0i64;
        for position in 0..len {
            let index = previous
                .checked_add(reader.zigzag()?)
                .and_then(|i| i32::try_from(i).ok())
                .ok_or(StateError::Corrupt("DDSketch bucket index out of range"))?;
            let count = reader.varint()?;
            if count == 0 || (position > 0 && i64::from(index) <= previous) {
                return Err(StateError::Corrupt("DDSketch buckets not canonical"));
            }
            buckets.push((index, count));
            previous = i64::from(index);
        }
        Ok(Self { buckets })
    }
}

/// A mergeable quantile sketch with relative-error guarantees.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DdSketch {
    count: u64,
    zero_count: u64,
    /// Exact extremes, `None` while empty.
    range: Option<(f64, f64)>,
    positive: Store,
    negative: Store,
}

impl DdSketch {
    /// Adds one value. Non-finite values cannot come out of the JSON decoder and are ignored.
    pub fn update(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let magnitude = value.abs();
        if magnitude < f64::MIN_POSITIVE {
            self.zero_count += 1;
        } else if value > 0.0 {
            self.positive.add(bucket_index(magnitude), 1);
        } else {
            self.negative.add(bucket_index(magnitude), 1);
        }
        self.count += 1;
        self.widen(value, value);
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
        (self.positive.buckets.capacity() + self.negative.buckets.capacity())
            * size_of::<(i32, u64)>()
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
        for &(index, count) in self.negative.buckets.iter().rev() {
            seen += count;
            if seen > rank {
                return Some(clamp(-bucket_value(index)));
            }
        }
        seen += self.zero_count;
        if seen > rank {
            return Some(clamp(0.0));
        }
        for &(index, count) in &self.positive.buckets {
            seen += count;
            if seen > rank {
                return Some(clamp(bucket_value(index)));
            }
        }
        Some(max)
    }
}

impl AggregateState for DdSketch {
    fn merge(&mut self, other: &Self) {
        let Some((low, high)) = other.range else {
            return;
        };
        self.count += other.count;
        self.zero_count += other.zero_count;
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.widen(low, high);
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_varint(out, self.count);
        let Some((min, max)) = self.range else {
            return;
        };
        put_f64(out, min);
        put_f64(out, max);
        put_varint(out, self.zero_count);
        self.positive.encode(out);
        self.negative.encode(out);
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
        Ok(Self {
            count,
            zero_count,
            range: Some((min, max)),
            positive,
            negative,
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
