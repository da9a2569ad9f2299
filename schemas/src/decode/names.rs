//! The fast path's field-name lookup: a table in which no two configured names of up to 16 bytes
//! share a slot, so a key costs one multiply and one three-word compare, read straight from the
//! JSON text (a hash map lookup hashed the key, probed, and called `memcmp`: ~5% of the speed
//! layer's time per event).
//!
//! A name this short is exactly three words: its length, its first eight bytes and its last eight
//! (zero-padded). Longer keys, and every key when no table separates the configured names, go to the
//! decoder's hash map, so the answer is the map's whatever the table does.
//!
//! Before either, [`KeyOrder`] guesses the next key from the order earlier events wrote theirs in,
//! and checks the guess against the same words; only a key that is not the guess is scanned and
//! looked up.

use std::sync::atomic::{AtomicU8, Ordering};

use super::Slot;
use super::strings::string_end;

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
    #[inline]
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

/// The order keys come in, learned from the events decoded so far: after each key (and at an
/// object's start), the configured key that came next last time. Producers write their keys in one
/// order, so the next key is usually the predicted one, and checking that costs a compare of known
/// words where finding the string's end takes a loop per byte and a mispredicted exit.
///
/// A prediction is only a hint: a key that is not byte for byte the predicted name, closing quote
/// included, takes the ordinary scan and lookup. The hints are relaxed atomics so that a decoder
/// shared between threads stays `&self`: each is one byte, read as a plain load, and written only when
/// it was wrong, so steady traffic only reads them.
#[derive(Debug)]
pub(super) struct KeyOrder {
    /// Per position (a field's index; the time field is last): its name as words, when it has at
    /// most [`MAX_LEN`] bytes and none that JSON must escape (a key with an escape is spelled
    /// differently in the text).
    names: Vec<Option<Words>>,
    /// Per position, and one more for an object's start: the position predicted next
    /// ([`NO_HINT`]: none).
    next: Box<[AtomicU8]>,
}

const NO_HINT: u8 = u8::MAX;

impl KeyOrder {
    /// Hints for the names in position order (positions from [`NO_HINT`] on are never predicted).
    pub(super) fn new<'n>(names: impl IntoIterator<Item = &'n str>) -> Self {
        let names: Vec<Option<Words>> = names
            .into_iter()
            .map(|name| {
                let plain = string_end(name.as_bytes()).is_none();
                plain
                    .then(|| Words::of(name.as_bytes(), 0, name.len()))
                    .flatten()
            })
            .collect();
        let next = (0..=names.len()).map(|_| AtomicU8::new(NO_HINT)).collect();
        Self { names, next }
    }

    /// Where an object's first key is predicted from.
    pub(super) fn start(&self) -> usize {
        self.names.len()
    }

    /// The predicted position after `previous` when the key whose opening quote is `text[at]` is
    /// its name, with the index just past the key's closing quote.
    #[inline]
    pub(super) fn predict(
        &self,
        previous: usize,
        text: &[u8],
        at: usize,
    ) -> Option<(usize, usize)> {
        let position = usize::from(self.next[previous].load(Ordering::Relaxed));
        let name = (*self.names.get(position)?)?;
        let start = at + 1;
        let end = start + name.len as usize;
        let quoted = text.get(at) == Some(&b'"') && text.get(end) == Some(&b'"');
        (quoted && Words::of(text, start, end) == Some(name)).then_some((position, end + 1))
    }

    /// Records that `position` followed `previous`.
    #[inline]
    pub(super) fn learn(&self, previous: usize, position: usize) {
        let hint = &self.next[previous];
        let Ok(position) = u8::try_from(position) else {
            return;
        };
        if hint.load(Ordering::Relaxed) != position {
            hint.store(position, Ordering::Relaxed);
        }
    }
}

/// A copy starts from the hints learned so far.
impl Clone for KeyOrder {
    fn clone(&self) -> Self {
        let next = (self.next.iter())
            .map(|hint| AtomicU8::new(hint.load(Ordering::Relaxed)))
            .collect();
        Self {
            names: self.names.clone(),
            next,
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

    use super::{KeyOrder, Lookup, NameTable, Slot};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A predicted key is taken only when the text holds exactly the predicted name between
        /// quotes: one byte changed, a prefix, a longer key, an escape or a missing closing quote
        /// all go to the ordinary lookup. Names that are too long or need escaping are never
        /// predicted.
        #[test]
        fn a_prediction_is_taken_only_for_the_exact_quoted_name(
            names in proptest::collection::vec("[a-z_\\\\\"]{0,20}", 1..12),
            after in "[\": ,0-9}]{0,6}",
        ) {
            let order = KeyOrder::new(names.iter().map(String::as_str));
            for (position, name) in names.iter().enumerate() {
                let previous = (position + 1) % (names.len() + 1);
                order.learn(previous, position);
                let predictable = name.len() <= 16 && !name.contains(['"', '\\']);
                let mut keys = vec![name.clone(), format!("{name}x"), format!("{name}\\\"")];
                keys.extend((0..name.len()).map(|n| name[..n].to_owned()));
                for at in 0..name.len() {
                    let mut key = name.clone().into_bytes();
                    key[at] = if key[at] == b'q' { b'r' } else { b'q' };
                    keys.push(String::from_utf8(key).expect("ASCII"));
                }
                for key in &keys {
                    let text = format!("\"{key}\"{after}");
                    let expected = (predictable && key == name).then_some((position, key.len() + 2));
                    prop_assert_eq!(
                        order.predict(previous, text.as_bytes(), 0), expected, "{:?}", text
                    );
                    // Without its closing quote, no key is the name.
                    let open = format!("\"{key}");
                    prop_assert_eq!(order.predict(previous, open.as_bytes(), 0), None);
                }
            }
        }

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
