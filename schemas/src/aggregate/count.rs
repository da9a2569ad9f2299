//! `count`: the number of events a view row covers. Exact; merge is addition.

use super::codec::{Reader, put_varint};
use super::{AggregateState, StateError};

/// Number of events. Never negative; stored as `Int64` in Arrow form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count(pub i64);

impl Count {
    pub fn update(&mut self) {
        self.0 += 1;
    }

    pub fn finalize(&self) -> i64 {
        self.0
    }
}

impl AggregateState for Count {
    fn merge(&mut self, other: &Self) {
        self.0 += other.0;
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_varint(out, self.0 as u64);
    }

    fn decode_payload(reader: &mut Reader<'_>) -> Result<Self, StateError> {
        let raw = reader.varint()?;
        i64::try_from(raw)
            .map(Count)
            .map_err(|_| StateError::Corrupt("count exceeds i64"))
    }
}
