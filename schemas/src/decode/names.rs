//! The fast path's field-name lookup: a table in which no two configured names of up to 16 bytes
//! share a slot, so a key costs one multiply and one three-word compare, read straight from the
//! JSON text (a hash map lookup hashed the key, probed, and called `memcmp`: ~5% of the speed
//! layer's time per event).
//!
//! A name this short is exactly three words: its length, its first eight bytes and its last eight
//! (zero-padded). Longer keys, and every key when no table separates the configured names, go to the
//! decoder's hash map, so the answer is the map's whatever the table does.

use super::Slot;

/// Longest name the table holds.
const MAX_LEN: usize = 16;

/// A name of at most [`MAX_LEN`] bytes as words; equal words mean equal bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Words {
    len: u64,
    head: u64,
    tail: u64,
}

/// The low `n` bytes of a word (`n` ≤ 8).
fn low_bytes(word: u64, n: usize) -> u64 {
    if n >= 8 {
        word
    } else {
        word & ((1u64 << (8 * n)) - 1)
    }
}

fn word_at(bytes: &[u8], at: usize) -> Option<u64> {
    let chunk = bytes.get(at..at + 8)?;
    Some(u64::from_le_bytes(chunk.try_into().ok()?))
}

impl Words {
    /// The words of `bytes[start..end]`, `None` past [`MAX_LEN`]. Reads whole words of `bytes`
    /// where it can (the JSON text goes on after a key), so that a key costs no byte-wise copy.
    fn of(bytes: &[u8], start: usize, end: usize) -> Option<Words> {
        let len = end - start;
        if len > MAX_LEN {
            return None;
        }
        let head = match word_at(bytes, start) {
            Some(word) => low_bytes(word, len),
            None => {
                let mut padded = [0u8; 8];
                padded[..len.min(8)].copy_from_slice(&bytes[start..start + len.min(8)]);
                u64::from_le_bytes(padded)
            }
        };
        // Bytes `len - 8 .. len` of the name; for `len` > 8 they all lie inside it.
        let tail = if len > 8 { word_at(bytes, end - 8)? } else { 0 };
        Some(Words {
            len: len as u64,
            head,
            tail,
        })
    }

    fn slot(self, seed: u64, shift: u32) -> usize {
        let mixed = (self.head ^ self.tail.rotate_left(29) ^ (self.len << 59)).wrapping_mul(seed);
        (mixed >> shift) as usize
    }
}

/// The configured names of up to 16 bytes, each alone in its slot.
#[derive(Debug, Clone)]
pub(super) struct NameTable {
    seed: u64,
    shift: u32,
    entries: Vec<Option<(Words, Slot)>>,
}

/// What the table says about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    Found(Slot),
    /// Not a configured name.
    Absent,
    /// Longer than the table's names: ask the hash map.
    TooLong,
}

impl NameTable {
    /// A table for `names`, or `None` when no seed tried gives every short name a slot of its own.
    pub(super) fn new<'n>(names: impl IntoIterator<Item = (&'n str, Slot)>) -> Option<Self> {
        let names: Vec<(Words, Slot)> = names
            .into_iter()
            .filter_map(|(name, slot)| Some((Words::of(name.as_bytes(), 0, name.len())?, slot)))
            .collect();
        let mut bits = (4 * names.len())
            .max(8)
            .next_power_of_two()
            .trailing_zeros();
        // Odd multipliers from a fixed sequence (splitmix64), so a configuration always builds
        // the same table.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        while bits <= 16 {
            for _ in 0..64 {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let seed = splitmix(state) | 1;
                let shift = 64 - bits;
                let mut entries = vec![None; 1 << bits];
                let placed = names.iter().all(|&(words, slot)| {
                    let entry = &mut entries[words.slot(seed, shift)];
                    let free = entry.is_none();
                    *entry = Some((words, slot));
                    free
                });
                if placed {
                    return Some(Self {
                        seed,
                        shift,
                        entries,
                    });
                }
            }
            bits += 1;
        }
        None
    }

    /// The slot of the key `text[start..end]`.
    #[inline]
    pub(super) fn get(&self, text: &[u8], start: usize, end: usize) -> Lookup {
        let Some(words) = Words::of(text, start, end) else {
            return Lookup::TooLong;
        };
        match self.entries[words.slot(self.seed, self.shift)] {
            Some((name, slot)) if name == words => Lookup::Found(slot),
            _ => Lookup::Absent,
        }
    }
}

fn splitmix(state: u64) -> u64 {
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Lookup, NameTable, Slot};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every key, looked up anywhere in a text, gets the slot of the name with its bytes, and
        /// only that: keys that differ from a name in one byte, in length, or by a prefix miss.
        #[test]
        fn the_table_finds_exactly_the_configured_names(
            names in proptest::collection::btree_set("[a-z_]{0,20}", 1..40),
            probes in proptest::collection::vec(("[a-z_]{0,20}", "[{,\" ]{0,3}", "[\": 0-9}]{0,12}"), 0..60),
        ) {
            let names: Vec<String> = names.into_iter().collect();
            let table = NameTable::new(names.iter().enumerate().map(|(i, n)| (n.as_str(), Slot::Field(i))));
            let table = table.expect("a table for a few dozen names");
            let mut keys: Vec<String> = names.clone();
            keys.extend(probes.iter().map(|(k, _, _)| k.clone()));
            keys.extend(names.iter().filter(|n| !n.is_empty()).map(|n| n[1..].to_owned()));
            keys.extend(names.iter().map(|n| format!("{n}x")));
            // Every name with one byte changed, at every position: with the table's few slots,
            // some land in their name's own slot, where only the full compare tells them apart.
            for name in &names {
                for at in 0..name.len() {
                    for other in [b'a', b'q', b'_'] {
                        let mut key = name.clone().into_bytes();
                        key[at] = other;
                        keys.push(String::from_utf8(key).expect("ASCII"));
                    }
                }
            }
            for (n, key) in keys.iter().enumerate() {
                let (before, after) = probes.get(n % probes.len().max(1))
                    .map(|(_, b, a)| (b.as_str(), a.as_str()))
                    .unwrap_or(("", ""));
                let text = format!("{before}{key}{after}");
                let (start, end) = (before.len(), before.len() + key.len());
                let expected = match names.iter().position(|name| name == key) {
                    _ if key.len() > 16 => Lookup::TooLong,
                    Some(i) => Lookup::Found(Slot::Field(i)),
                    None => Lookup::Absent,
                };
                prop_assert_eq!(
                    table.get(text.as_bytes(), start, end), expected, "key {:?} in {:?}", key, text
                );
            }
        }
    }
}
