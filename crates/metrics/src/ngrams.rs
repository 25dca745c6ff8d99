//! Token and n-gram interning and counting: pycocoevalcap's `precook` (n-grams of 1 to 4 words
//! of `s.split()`, counted in first-occurrence order) over integer ids.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::pycompat::py_split;

/// A small, fast, non-cryptographic hasher (the "Fx" multiply-rotate hash) for integer and
/// short-string keys; inputs are the crate's own ids and words, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `HashMap` with [`FxHasher`].
pub type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Longest n-gram used by BLEU and CIDEr.
pub const MAX_N: usize = 4;

/// An n-gram's counts in one sentence.
#[derive(Clone, Copy, Debug)]
pub struct NgramCount {
    /// Interned n-gram id.
    pub id: u32,
    /// `n - 1` (0 for unigrams).
    pub order: u8,
    /// Occurrences in the sentence.
    pub count: u32,
}

/// A sentence after `precook`: its length in words and its n-gram counts in the order Python's
/// dict would iterate them (unigrams first, each order in first-occurrence order).
#[derive(Clone, Debug, Default)]
pub struct Cooked {
    /// Number of words (`len(s.split())`).
    pub words: usize,
    /// Each distinct n-gram with its count, in dict order.
    pub ngrams: Vec<NgramCount>,
}

/// Interns words and n-grams of up to [`MAX_N`] words to dense ids.
#[derive(Default)]
pub struct Interner {
    words: FxHashMap<String, u32>,
    ngrams: FxHashMap<(u8, [u32; MAX_N]), u32>,
    index: FxHashMap<u32, usize>,
}

impl Interner {
    /// Number of distinct n-grams seen so far (ids are `0..len`).
    pub fn ngram_count(&self) -> usize {
        self.ngrams.len()
    }

    fn word(&mut self, w: &str) -> u32 {
        if let Some(&id) = self.words.get(w) {
            return id;
        }
        let id = self.words.len() as u32;
        self.words.insert(w.to_owned(), id);
        id
    }

    /// `precook(s, 4)`: the sentence split on Python white space, its n-grams counted.
    pub fn cook(&mut self, sentence: &str) -> Cooked {
        let ids: Vec<u32> = py_split(sentence).map(|w| self.word(w)).collect();
        let mut ngrams: Vec<NgramCount> = Vec::new();
        let index = &mut self.index;
        index.clear();
        for n in 1..=MAX_N.min(ids.len()) {
            for window in ids.windows(n) {
                let mut key = [u32::MAX; MAX_N];
                key[..n].copy_from_slice(window);
                let next = self.ngrams.len() as u32;
                let id = *self.ngrams.entry((n as u8, key)).or_insert(next);
                match index.get(&id) {
                    Some(&i) => ngrams[i].count += 1,
                    None => {
                        index.insert(id, ngrams.len());
                        ngrams.push(NgramCount {
                            id,
                            order: (n - 1) as u8,
                            count: 1,
                        });
                    }
                }
            }
        }
        Cooked {
            words: ids.len(),
            ngrams,
        }
    }
}

/// Checks the toolkit's scorer preconditions: one hypothesis per image, at least one reference.
pub fn check_inputs(refs: &[Vec<String>], hyps: &[String]) -> Result<(), crate::EvalError> {
    if refs.len() != hyps.len() {
        return Err(crate::EvalError::InvalidInput(format!(
            "{} reference sets but {} hypotheses",
            refs.len(),
            hyps.len()
        )));
    }
    if let Some(i) = refs.iter().position(|r| r.is_empty()) {
        return Err(crate::EvalError::InvalidInput(format!(
            "image #{i} has no references"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_python_dict_order() {
        let mut it = Interner::default();
        let c = it.cook("a b a b");
        assert_eq!(c.words, 4);
        let got: Vec<(u8, u32)> = c.ngrams.iter().map(|g| (g.order, g.count)).collect();
        // a, b, "a b", "b a", "a b a", "b a b", "a b a b"
        assert_eq!(
            got,
            [(0, 2), (0, 2), (1, 2), (1, 1), (2, 1), (2, 1), (3, 1)]
        );
        assert_eq!(it.cook("").words, 0);
    }
}
