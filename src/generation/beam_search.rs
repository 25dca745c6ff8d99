//! Beam search exactly as transformers 4.21.1 `generate(num_beams=n)` does it for one input:
//! `BeamSearchScorer.process`, `BeamHypotheses` (add, worst-score bookkeeping, `is_done` with
//! and without `early_stopping`) and `finalize`, including their tie rules.

use super::GenerationConfig;

/// The finished hypotheses of one input (`BeamHypotheses`).
#[derive(Debug, Clone)]
struct BeamHypotheses {
    num_beams: usize,
    length_penalty: f64,
    early_stopping: bool,
    /// `(score, tokens)` in insertion order, as the reference's list.
    beams: Vec<(f64, Vec<u32>)>,
    worst_score: f64,
}

impl BeamHypotheses {
    fn new(cfg: &GenerationConfig) -> Self {
        Self {
            num_beams: cfg.num_beams,
            length_penalty: cfg.length_penalty,
            early_stopping: cfg.early_stopping,
            beams: Vec::new(),
            worst_score: 1e9,
        }
    }

    /// `hyp` is the whole sequence (prompt included), as its length enters the penalty.
    fn add(&mut self, hyp: Vec<u32>, sum_logprobs: f64) {
        let score = sum_logprobs / (hyp.len() as f64).powf(self.length_penalty);
        if self.beams.len() < self.num_beams || score > self.worst_score {
            self.beams.push((score, hyp));
            if self.beams.len() > self.num_beams {
                let mut sorted: Vec<(f64, usize)> = self
                    .beams
                    .iter()
                    .enumerate()
                    .map(|(i, (s, _))| (*s, i))
                    .collect();
                sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                self.beams.remove(sorted[0].1);
                self.worst_score = sorted[1].0;
            } else {
                self.worst_score = score.min(self.worst_score);
            }
        }
    }

    fn is_done(&self, best_sum_logprobs: f64, cur_len: usize) -> bool {
        if self.beams.len() < self.num_beams {
            false
        } else if self.early_stopping {
            true
        } else {
            let cur_score = best_sum_logprobs / (cur_len as f64).powf(self.length_penalty);
            self.worst_score >= cur_score
        }
    }
}

/// What one step decided: the running beams continue `beam_indices[i]` with `tokens[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamStep {
    pub beam_indices: Vec<u32>,
    pub tokens: Vec<u32>,
}

/// The beam search of one input.
#[derive(Debug, Clone)]
pub struct BeamSearch {
    cfg: GenerationConfig,
    /// Running sequences, prompt included (`input_ids` of the reference).
    sequences: Vec<Vec<u32>>,
    beam_scores: Vec<f32>,
    hyps: BeamHypotheses,
    done: bool,
    max_length: usize,
}

impl BeamSearch {
    pub fn new(prompt_ids: &[u32], cfg: &GenerationConfig) -> Self {
        let n = cfg.num_beams;
        let mut beam_scores = vec![-1e9f32; n];
        beam_scores[0] = 0.0;
        Self {
            cfg: cfg.clone(),
            sequences: vec![prompt_ids.to_vec(); n],
            beam_scores,
            hyps: BeamHypotheses::new(cfg),
            done: false,
            max_length: prompt_ids.len() + cfg.max_new_tokens,
        }
    }

    /// Consumes the `log_softmax` scores of the running beams (`num_beams` rows of the
    /// vocabulary) and returns how the beams continue, or `None` once the search has ended.
    pub fn step(&mut self, log_probs: &[Vec<f32>]) -> Option<BeamStep> {
        let n = self.cfg.num_beams;
        let eos = self.cfg.eos_token_id;
        let vocab = log_probs[0].len();
        // top 2n of (beam score + log prob) over all beams × vocabulary, sorted descending;
        // equal scores keep the lower flat index first.
        let want = 2 * n;
        let mut top: Vec<(f32, usize)> = Vec::with_capacity(want + 1);
        for (b, row) in log_probs.iter().enumerate() {
            let base = self.beam_scores[b];
            for (t, &lp) in row.iter().enumerate() {
                let s = lp + base;
                if top.len() == want && !(s > top[want - 1].0) {
                    continue;
                }
                let idx = b * vocab + t;
                let pos = top.partition_point(|&(ts, _)| ts >= s);
                top.insert(pos, (s, idx));
                top.truncate(want);
            }
        }
        let cur_len = self.sequences[0].len();
        let mut next_scores = Vec::with_capacity(n);
        let mut next = BeamStep {
            beam_indices: Vec::with_capacity(n),
            tokens: Vec::with_capacity(n),
        };
        for (rank, &(score, idx)) in top.iter().enumerate() {
            let (beam, token) = (idx / vocab, (idx % vocab) as u32);
            if token == eos {
                if rank >= n {
                    continue;
                }
                self.hyps.add(self.sequences[beam].clone(), score as f64);
            } else {
                next_scores.push(score);
                next.beam_indices.push(beam as u32);
                next.tokens.push(token);
            }
            if next.tokens.len() == n {
                break;
            }
        }
        let best = top.iter().map(|&(s, _)| s).fold(f32::NEG_INFINITY, f32::max);
        self.done = self.done || self.hyps.is_done(best as f64, cur_len);
        self.sequences = next
            .beam_indices
            .iter()
            .zip(&next.tokens)
            .map(|(&b, &t)| {
                let mut s = self.sequences[b as usize].clone();
                s.push(t);
                s
            })
            .collect();
        self.beam_scores = next_scores;
        if self.done || self.sequences[0].len() >= self.max_length {
            None
        } else {
            Some(next)
        }
    }

    /// `finalize`: the best hypothesis, with eos appended when it is shorter than the limit.
    /// Returns the whole sequence, prompt included.
    pub fn finish(mut self) -> Vec<u32> {
        if !self.done {
            let running = std::mem::take(&mut self.sequences);
            for (seq, score) in running.into_iter().zip(self.beam_scores.clone()) {
                self.hyps.add(seq, score as f64);
            }
        }
        // Stable ascending sort by score, then the last one: on ties the later-added wins.
        let mut sorted = self.hyps.beams;
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut best = sorted.pop().map(|(_, h)| h).unwrap_or_default();
        if best.len() < self.max_length {
            best.push(self.cfg.eos_token_id);
        }
        best
    }
}
