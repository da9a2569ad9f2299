//! `avg`: kept as (compensated sum, count) and divided only when a query answers, so that averages of
//! different rows merge exactly (an average of averages would weigh small rows like large ones).
//! Values of `int64` fields are added as `f64`, exact below 2^53.

use super::codec::{Reader, put_varint};
use super::sum::FloatSum;
use super::{AggregateState, StateError};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Avg {
    sum: FloatSum,
    count: i64,
}

impl Avg {
    pub fn from_parts(sum: f64, count: i64) -> Self {
        Self {
            sum: FloatSum::from_total(sum),
            count,
        }
    }

    pub fn update(&mut self, value: f64) {
        self.sum.update(value);
        self.count += 1;
    }

    pub fn sum(&self) -> f64 {
        self.sum.finalize()
    }

    pub fn count(&self) -> i64 {
        self.count
    }

    /// `None` when no value was seen (SQL's `AVG` of nothing is `NULL`).
    pub fn finalize(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum() / self.count as f64)
    }
}

impl AggregateState for Avg {
    fn merge(&mut self, other: &Self) {
        self.sum.merge(&other.sum);
        self.count += other.count;
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        self.sum.encode_payload(out);
        put_varint(out, self.count as u64);
    }

    fn decode_payload(reader: &mut Reader<'_>) -> Result<Self, StateError> {
        let sum = FloatSum::decode_payload(reader)?;
        let count = i64::try_from(reader.varint()?)
            .map_err(|_| StateError::Corrupt("avg count exceeds i64"))?;
        Ok(Self { sum, count })
    }
}
