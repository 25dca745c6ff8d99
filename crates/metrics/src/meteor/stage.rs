//! The candidate matches between a hypothesis and a reference (METEOR's `Stage` and its four
//! matchers): exact words, words with the same stem, words sharing a WordNet synset, and
//! phrases the paraphrase table relates. Each matcher appends its matches per reference
//! position in the jar's loop order, which the aligner's tie-breaking depends on.
//!
//! Like the jar, words are compared by Java `String.hashCode` (so words whose hashes collide
//! count as the same word), stems by the hash of the stem.

use super::paraphrase::Paraphrases;
use super::synonyms::share_synset;

// Module numbers, as in the jar's English configuration.
/// Module number of the exact-word matcher.
pub const EXACT: u8 = 0;
/// Module number of the stem matcher.
pub const STEM: u8 = 1;
/// Module number of the WordNet synonym matcher.
pub const SYNONYM: u8 = 2;
/// Module number of the paraphrase matcher.
pub const PARAPHRASE: u8 = 3;
/// Number of modules.
pub const MODULES: usize = 4;

/// What the matchers compare of one sentence's words (normalised, lowercased, split as
/// `StringTokenizer` splits), word by word.
#[derive(Clone, Debug, Default)]
pub struct Sentence {
    /// `word.hashCode()`.
    pub hash: Vec<i32>,
    /// `stem(word).hashCode()`.
    pub stem: Vec<i32>,
    /// The word's synsets (own and its base forms'), sorted.
    pub synsets: Vec<Vec<u32>>,
    /// The word's number in the evaluation's vocabulary (the paraphrase table's key).
    pub id: Vec<u32>,
    /// Whether the word is a function word.
    pub function: Vec<bool>,
}

impl Sentence {
    /// Number of words.
    pub fn len(&self) -> usize {
        self.hash.len()
    }

    /// Whether the sentence has no words.
    pub fn is_empty(&self) -> bool {
        self.hash.is_empty()
    }
}

/// A match of `length` reference words at `start` with `match_length` hypothesis words at
/// `match_start`, found by `module`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// First reference word (0-based).
    pub start: usize,
    /// Number of reference words.
    pub length: usize,
    /// First hypothesis word (0-based).
    pub match_start: usize,
    /// Number of hypothesis words.
    pub match_length: usize,
    /// The matcher that found it ([`EXACT`], [`STEM`], [`SYNONYM`] or [`PARAPHRASE`]).
    pub module: u8,
}

/// All candidate matches, by reference start position, and how many cover each word.
pub struct Stage {
    /// Per reference word: the candidate matches starting there, in the jar's order.
    pub matches: Vec<Vec<Match>>,
    /// Per hypothesis word: how many candidate matches cover it.
    pub coverage1: Vec<u32>,
    /// Per reference word: how many candidate matches cover it.
    pub coverage2: Vec<u32>,
}

impl Stage {
    fn new(n1: usize, n2: usize) -> Stage {
        Stage {
            matches: vec![Vec::new(); n2],
            coverage1: vec![0; n1],
            coverage2: vec![0; n2],
        }
    }

    fn push(&mut self, m: Match) {
        self.matches[m.start].push(m);
        for c in &mut self.coverage1[m.match_start..m.match_start + m.match_length] {
            *c += 1;
        }
        for c in &mut self.coverage2[m.start..m.start + m.length] {
            *c += 1;
        }
    }

    fn one_to_one(
        &mut self,
        module: u8,
        test: &Sentence,
        reference: &Sentence,
        pair: impl Fn(usize, usize) -> bool,
    ) {
        for j in 0..reference.len() {
            for i in 0..test.len() {
                if pair(i, j) {
                    self.push(Match {
                        start: j,
                        length: 1,
                        match_start: i,
                        match_length: 1,
                        module,
                    });
                }
            }
        }
    }

    /// Runs the matchers of `modules` (the jar runs only the exact one on identical sentences).
    pub fn build(
        test: &Sentence,
        reference: &Sentence,
        modules: usize,
        paraphrases: &Paraphrases,
    ) -> Stage {
        let mut s = Stage::new(test.len(), reference.len());
        let (t, r) = (test, reference);
        if modules > 0 {
            s.one_to_one(EXACT, t, r, |i, j| t.hash[i] == r.hash[j]);
        }
        if modules > 1 {
            s.one_to_one(STEM, t, r, |i, j| {
                t.stem[i] == r.stem[j] && t.hash[i] != r.hash[j]
            });
        }
        if modules > 2 {
            s.one_to_one(SYNONYM, t, r, |i, j| {
                share_synset(&t.synsets[i], &r.synsets[j]) && t.hash[i] != r.hash[j]
            });
        }
        if modules > 3 {
            s.paraphrase(t, r, paraphrases);
        }
        s
    }

    fn paraphrase(&mut self, test: &Sentence, reference: &Sentence, table: &Paraphrases) {
        let (line1, line2) = (&test.id, &reference.id);
        let mut paths = Vec::new();
        // Paraphrases in the hypothesis of reference phrases.
        for j in 0..line2.len() {
            table.paths(line2, j, &mut paths);
            for &(len, words) in &paths {
                for i in 0..line1.len() {
                    if line1[i..].starts_with(words) {
                        self.push(Match {
                            start: j,
                            length: len,
                            match_start: i,
                            match_length: words.len(),
                            module: PARAPHRASE,
                        });
                    }
                }
            }
        }
        // Paraphrases in the reference of hypothesis phrases.
        for i in 0..line1.len() {
            table.paths(line1, i, &mut paths);
            for &(len, words) in &paths {
                for j in 0..line2.len() {
                    if line2[j..].starts_with(words) {
                        self.push(Match {
                            start: j,
                            length: words.len(),
                            match_start: i,
                            match_length: len,
                            module: PARAPHRASE,
                        });
                    }
                }
            }
        }
    }
}
