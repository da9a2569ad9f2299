//! The byte scan both of the decoder's fast paths share (the event reader in `fast` and the
//! field-name table in `names`): where a JSON string's plain bytes end.

/// Where the first `"`, `\\` or control character of `bytes` is, eight bytes at a time: the usual
/// bit trick for "has a byte below n" (Mycroft), applied to the bytes below 0x20 and to the bytes
/// XORed with the quote and the backslash. It can flag a byte wrongly only after a byte it flags
/// rightly, so the lowest flag is the answer.
#[inline]
pub(super) fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let flags = below(word, 0x20)
            | below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1);
        if flags != 0 {
            return Some(at + flags.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = chunks.remainder();
    (rest.iter())
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::string_end;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn string_end_finds_the_first_quote_backslash_or_control(
            bytes in proptest::collection::vec(
                prop_oneof![
                    8 => 0x20u8..0x7f,
                    2 => 0x80u8..=0xff,
                    1 => prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, Just(0x21), Just(0x5d)],
                ],
                0..40,
            )
        ) {
            let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(string_end(&bytes), expected);
        }
    }
}
