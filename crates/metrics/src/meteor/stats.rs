//! METEOR's sufficient statistics (`MeteorStats`): what an alignment counts, the score computed
//! from them (`MeteorScorer.computeMetrics`, with the English ranking-task parameters that
//! `-l en` selects), their aggregation over a corpus (`addStats`) and the statistics line the
//! jar prints for `SCORE`. Floating-point operations follow the jar's order so that scores are
//! the same doubles.

use super::aligner::Alignment;
use super::java::whole_double_to_string;
use super::stage::MODULES;

/// `alpha`, `beta`, `gamma`, `delta` of the English ranking task (`Constants.PARAM_RANK`).
const ALPHA: f64 = 0.85;
const BETA: f64 = 0.20;
const GAMMA: f64 = 0.60;
const DELTA: f64 = 0.75;
/// Module weights of the English ranking task (`Constants.WEIGHT_RANK`).
const WEIGHTS: [f64; MODULES] = [1.0, 0.6, 0.8, 0.6];

/// The statistics of one segment, or of a corpus when added up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Hypothesis words.
    pub test_length: f64,
    /// Reference words.
    pub reference_length: f64,
    /// Function words in the hypothesis.
    pub test_function_words: f64,
    /// Function words in the reference.
    pub reference_function_words: f64,
    /// Matched hypothesis words, all modules (content and function).
    pub test_total_matches: f64,
    /// Matched reference words, all modules (content and function).
    pub reference_total_matches: f64,
    /// Per module: matched hypothesis content words.
    pub test_content: [f64; MODULES],
    /// Per module: matched reference content words.
    pub reference_content: [f64; MODULES],
    /// Per module: matched hypothesis function words.
    pub test_function: [f64; MODULES],
    /// Per module: matched reference function words.
    pub reference_function: [f64; MODULES],
    /// Number of chunks (a corpus sum leaves out perfect segments' single chunk).
    pub chunks: f64,
    /// Matched hypothesis words as the fragmentation penalty counts them (word-based: equal to
    /// `test_total_matches`).
    pub test_word_matches: f64,
    /// Matched reference words as the fragmentation penalty counts them (word-based: equal to
    /// `reference_total_matches`).
    pub reference_word_matches: f64,
}

impl Stats {
    /// The statistics of an alignment (`getMeteorStats(Alignment)`, word-based).
    pub fn of(a: &Alignment) -> Stats {
        let mut s = Stats {
            test_length: a.len1 as f64,
            reference_length: a.len2 as f64,
            test_function_words: a.function1 as f64,
            reference_function_words: a.function2 as f64,
            chunks: a.chunks as f64,
            ..Stats::default()
        };
        for i in 0..MODULES {
            s.test_content[i] = a.content1[i] as f64;
            s.reference_content[i] = a.content2[i] as f64;
            s.test_function[i] = a.functional1[i] as f64;
            s.reference_function[i] = a.functional2[i] as f64;
        }
        for i in 0..MODULES {
            s.test_total_matches += s.test_content[i];
            s.test_total_matches += s.test_function[i];
            s.reference_total_matches += s.reference_content[i];
            s.reference_total_matches += s.reference_function[i];
            s.test_word_matches += a.content1[i] as f64;
            s.test_word_matches += a.functional1[i] as f64;
            s.reference_word_matches += a.content2[i] as f64;
            s.reference_word_matches += a.functional2[i] as f64;
        }
        s
    }

    /// The statistics line the jar answers a `SCORE` line with (`MeteorStats.toString()`).
    pub fn line(&self) -> String {
        let mut v = vec![
            self.test_length,
            self.reference_length,
            self.test_function_words,
            self.reference_function_words,
        ];
        for i in 0..MODULES {
            v.extend([
                self.test_content[i],
                self.reference_content[i],
                self.test_function[i],
                self.reference_function[i],
            ]);
        }
        v.extend([
            self.chunks,
            self.test_word_matches,
            self.reference_word_matches,
        ]);
        v.into_iter()
            .map(whole_double_to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether hypothesis and reference match completely in one chunk.
    fn is_perfect(&self) -> bool {
        self.test_total_matches == self.test_length
            && self.reference_total_matches == self.reference_length
            && self.chunks == 1.0
    }

    /// Adds `other` (`addStats`; a perfect segment's single chunk is not counted).
    pub fn add(&mut self, other: &Stats) {
        self.test_length += other.test_length;
        self.reference_length += other.reference_length;
        self.test_function_words += other.test_function_words;
        self.reference_function_words += other.reference_function_words;
        self.test_total_matches += other.test_total_matches;
        self.reference_total_matches += other.reference_total_matches;
        for i in 0..MODULES {
            self.test_content[i] += other.test_content[i];
            self.reference_content[i] += other.reference_content[i];
            self.test_function[i] += other.test_function[i];
            self.reference_function[i] += other.reference_function[i];
        }
        if !other.is_perfect() {
            self.chunks += other.chunks;
        }
        self.test_word_matches += other.test_word_matches;
        self.reference_word_matches += other.reference_word_matches;
    }

    /// The METEOR score (`computeMetrics`).
    pub fn score(&self) -> f64 {
        let test_weighted_length = (DELTA * (self.test_length - self.test_function_words))
            + ((1.0 - DELTA) * self.test_function_words);
        let reference_weighted_length = (DELTA
            * (self.reference_length - self.reference_function_words))
            + ((1.0 - DELTA) * self.reference_function_words);
        // Content words (weighted by delta) first, then function words, in the jar's order.
        let mut test_weighted = 0.0;
        let mut reference_weighted = 0.0;
        for (c, w) in self.test_content.iter().zip(WEIGHTS) {
            test_weighted += c * w * DELTA;
        }
        for (c, w) in self.reference_content.iter().zip(WEIGHTS) {
            reference_weighted += c * w * DELTA;
        }
        for (f, w) in self.test_function.iter().zip(WEIGHTS) {
            test_weighted += f * w * (1.0 - DELTA);
        }
        for (f, w) in self.reference_function.iter().zip(WEIGHTS) {
            reference_weighted += f * w * (1.0 - DELTA);
        }
        let precision = test_weighted / test_weighted_length;
        let recall = reference_weighted / reference_weighted_length;
        let f_mean = 1.0 / (((1.0 - ALPHA) / precision) + (ALPHA / recall));
        let frag = if self.is_perfect() {
            0.0
        } else {
            self.chunks / ((self.test_word_matches + self.reference_word_matches) / 2.0)
        };
        let frag_penalty = GAMMA * frag.powf(BETA);
        let score = f_mean * (1.0 - frag_penalty);
        if score.is_nan() {
            0.0
        } else {
            score.max(0.0)
        }
    }
}
