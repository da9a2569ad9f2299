//! `sum`: exact over `int64` fields, compensated over `float64` fields.
//!
//! Integer sums add with two's-complement wrapping, which keeps merge exactly associative and
//! commutative (a checked add would make *whether* an overflow is reported depend on merge order).
//! A sum that really exceeds ±9.2e18 is therefore wrong; event values never come close in practice.
//!
//! Float sums accumulate with Neumaier's compensated summation, so the result does not drift with the
//! number or order of additions the way a naive `+=` does. The *state* is the compensated total as one
//! `f64`: batch and speed add in different orders, so states agree to ~1e-15 relative, not to the bit
//! (the contract allows 1e-9).

use super::codec::{Reader, put_f64, put_zigzag};
use super::{AggregateState, StateError};

/// Sum of an `int64` field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntSum(pub i64);

impl IntSum {
    pub fn update(&mut self, value: i64) {
        self.0 = self.0.wrapping_add(value);
    }

    pub fn finalize(&self) -> i64 {
        self.0
    }
}

impl AggregateState for IntSum {
    fn merge(&mut self, other: &Self) {
        self.update(other.0);
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_zigzag(out, self.0);
    }

    fn decode_payload(reader: &mut Reader<'_>) -> Result<Self, StateError> {
        reader.zigzag().map(IntSum)
    }
}

/// Compensated sum of a `float64` field.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloatSum {
    sum: f64,
    compensation: f64,
}

impl FloatSum {
    pub fn from_total(total: f64) -> Self {
        Self {
            sum: total,
            compensation: 0.0,
        }
    }

    /// Neumaier's variant of Kahan summation: the low-order bits lost by each addition are kept in
    /// `compensation` whichever operand is larger.
    pub fn update(&mut self, value: f64) {
        let total = self.sum + value;
        if self.sum.abs() >= value.abs() {
            self.compensation += (self.sum - total) + value;
        } else {
            self.compensation += (value - total) + self.sum;
        }
        self.sum = total;
    }

    /// The sum as one `f64`: this is the state's stored and compared form.
    pub fn finalize(&self) -> f64 {
        self.sum + self.compensation
    }
}

impl PartialEq for FloatSum {
    fn eq(&self, other: &Self) -> bool {
        self.finalize().to_bits() == other.finalize().to_bits()
    }
}

impl AggregateState for FloatSum {
    fn merge(&mut self, other: &Self) {
        self.update(other.sum);
        self.update(other.compensation);
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_f64(out, self.finalize());
    }

    fn decode_payload(reader: &mut Reader<'_>) -> Result<Self, StateError> {
        reader.f64().map(Self::from_total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensation_recovers_what_naive_summation_loses() {
        let mut sum = FloatSum::default();
        let mut naive = 0.0;
        for value in [1e16, 1.0, -1e16, 1.0] {
            sum.update(value);
            naive += value;
        }
        assert_eq!(sum.finalize(), 2.0);
        assert_ne!(
            naive, 2.0,
            "the example must defeat naive summation to prove anything"
        );
    }

    #[test]
    fn integer_sum_wraps_instead_of_panicking() {
        let mut sum = IntSum(i64::MAX);
        sum.update(1);
        assert_eq!(sum.finalize(), i64::MIN);
    }
}
