//! `min` and `max`: exact; merge keeps the smaller (larger) of two states.
//!
//! Floats compare with IEEE 754 `totalOrder` (`f64::total_cmp`), so the result is bit-identical
//! whatever the merge order (plain `f64::min` may return either of `0.0` and `-0.0`).
//! Timestamps use the `i64` (epoch milliseconds) form.

use std::cmp::Ordering;

use super::codec::{Reader, put_f64, put_zigzag};
use super::{AggregateState, StateError};

/// A value type `min`/`max` can order deterministically and encode.
pub trait Extreme: Copy + std::fmt::Debug + PartialEq {
    fn order(&self, other: &Self) -> Ordering;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(reader: &mut Reader<'_>) -> Result<Self, StateError>;
}

impl Extreme for i64 {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_zigzag(out, *self);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, StateError> {
        reader.zigzag()
    }
}

impl Extreme for f64 {
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_f64(out, *self);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, StateError> {
        reader.f64()
    }
}

/// The minimum (`IS_MAX = false`) or maximum (`IS_MAX = true`) seen; `None` until a value arrives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Extremum<T, const IS_MAX: bool> {
    value: Option<T>,
}

pub type Min<T> = Extremum<T, false>;
pub type Max<T> = Extremum<T, true>;

impl<T, const IS_MAX: bool> Default for Extremum<T, IS_MAX> {
    fn default() -> Self {
        Self { value: None }
    }
}

impl<T: Extreme, const IS_MAX: bool> Extremum<T, IS_MAX> {
    pub fn update(&mut self, candidate: T) {
        let wanted = if IS_MAX {
            Ordering::Greater
        } else {
            Ordering::Less
        };
        match self.value {
            Some(current) if candidate.order(&current) != wanted => {}
            _ => self.value = Some(candidate),
        }
    }

    pub fn finalize(&self) -> Option<T> {
        self.value
    }
}

impl<T: Extreme, const IS_MAX: bool> AggregateState for Extremum<T, IS_MAX> {
    fn merge(&mut self, other: &Self) {
        if let Some(value) = other.value {
            self.update(value);
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self.value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                value.encode(out);
            }
        }
    }

    fn decode_payload(reader: &mut Reader<'_>) -> Result<Self, StateError> {
        let value = match reader.u8()? {
            0 => None,
            1 => Some(T::decode(reader)?),
            _ => return Err(StateError::Corrupt("min/max presence flag is not 0 or 1")),
        };
        Ok(Self { value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_zeros_order_the_same_whatever_the_merge_order() {
        let mut a = Min::<f64>::default();
        a.update(0.0);
        a.update(-0.0);
        let mut b = Min::<f64>::default();
        b.update(-0.0);
        b.update(0.0);
        assert_eq!(a.finalize().unwrap().to_bits(), (-0.0f64).to_bits());
        assert_eq!(b.finalize().unwrap().to_bits(), (-0.0f64).to_bits());
    }

    #[test]
    fn max_keeps_the_largest() {
        let mut max = Max::<i64>::default();
        assert_eq!(max.finalize(), None);
        for value in [3, -7, 11, 2] {
            max.update(value);
        }
        assert_eq!(max.finalize(), Some(11));
    }
}
