//! Byte-level helpers shared by every state's compact encoding: LEB128 varints, zigzag for signed
//! integers, fixed-width floats, and a cursor that turns truncation into an error instead of a panic.

use super::StateError;

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn put_zigzag(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

pub fn put_f64(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Reads what the `put_*` functions wrote; every read checks the remaining length.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub fn u8(&mut self) -> Result<u8, StateError> {
        let (&first, rest) = self.bytes.split_first().ok_or(StateError::Truncated)?;
        self.bytes = rest;
        Ok(first)
    }

    pub fn varint(&mut self) -> Result<u64, StateError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(StateError::Corrupt("varint overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(StateError::Corrupt("varint longer than 10 bytes"))
    }

    pub fn zigzag(&mut self) -> Result<i64, StateError> {
        let raw = self.varint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    pub fn f64(&mut self) -> Result<f64, StateError> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(f64::from_le_bytes(array))
    }

    pub fn take(&mut self, len: usize) -> Result<&'a [u8], StateError> {
        if self.bytes.len() < len {
            return Err(StateError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    /// A length read from the input, checked against what is left so that a corrupt length can never
    /// make the caller allocate more than the input could describe.
    pub fn len(&mut self, min_bytes_per_item: usize) -> Result<usize, StateError> {
        let len = self.varint()?;
        let len =
            usize::try_from(len).map_err(|_| StateError::Corrupt("length overflows usize"))?;
        if len.saturating_mul(min_bytes_per_item) > self.bytes.len() {
            return Err(StateError::Truncated);
        }
        Ok(len)
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn finish(self) -> Result<(), StateError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(StateError::Corrupt("trailing bytes after the state"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(value in any::<u64>(), signed in any::<i64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            put_zigzag(&mut out, signed);
            let mut reader = Reader::new(&out);
            prop_assert_eq!(reader.varint().unwrap(), value);
            prop_assert_eq!(reader.zigzag().unwrap(), signed);
            reader.finish().unwrap();
        }

        #[test]
        fn reader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut reader = Reader::new(&bytes);
            let _ = reader.varint();
            let _ = reader.zigzag();
            let _ = reader.f64();
            let _ = reader.len(4);
        }
    }

    #[test]
    fn small_values_take_one_byte() {
        let mut out = Vec::new();
        put_varint(&mut out, 127);
        put_zigzag(&mut out, -64);
        assert_eq!(out.len(), 2);
    }
}
