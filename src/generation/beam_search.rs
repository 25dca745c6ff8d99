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
    /// Which beam each next token extends.
    pub beam_indices: Vec<u32>,
    /// The next token of each beam.
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
    /// A search from one prompt with `cfg`'s beams, early stopping and length penalty.
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
                if top.len() == want
                    && s.partial_cmp(&top[want - 1].0) != Some(std::cmp::Ordering::Greater)
                {
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
        let best = top
            .iter()
            .map(|&(s, _)| s)
            .fold(f32::NEG_INFINITY, f32::max);
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

#[cfg(test)]
mod tests {
    //! A hand-worked search over a 4-token vocabulary (eos = 3, two beams, prompt `[9]`, three new
    //! tokens at most) where early stopping changes the answer. The expected sequences follow from
    //! the log-probabilities below by the reference's rules (worked out in the comments).
    use super::*;

    /// Log-probabilities of the four tokens (not necessarily normalised: the search only adds them).
    fn row(p: [f64; 4]) -> Vec<f32> {
        p.iter().map(|x| x.ln() as f32).collect()
    }

    fn run(early_stopping: bool) -> Vec<u32> {
        let cfg = GenerationConfig {
            num_beams: 2,
            early_stopping,
            length_penalty: 0.0,
            max_new_tokens: 3,
            eos_token_id: 3,
            pad_token_id: 0,
        };
        let mut search = BeamSearch::new(&[9], &cfg);
        // Step 1: both rows are the prompt's; beam 1 starts at -1e9. Running: [9,0] (ln .5),
        // [9,1] (ln .3); eos ranks 4th and is ignored.
        let s = search.step(&[row([0.5, 0.3, 0.1, 0.1]), row([0.5, 0.3, 0.1, 0.1])]);
        assert_eq!(s.unwrap().tokens, vec![0, 1]);
        // Step 2: [9,1]+0 = -1.309 runs; [9,0]+eos = -1.743 is finished (rank 1);
        // [9,0]+0 = -2.590 runs.
        let s = search.step(&[
            row([0.15, 0.01, 0.01, 0.35]),
            row([0.9, 0.05, 0.025, 0.025]),
        ]);
        let s = s.unwrap();
        assert_eq!(
            (s.beam_indices.clone(), s.tokens.clone()),
            (vec![1, 0], vec![0, 0])
        );
        // Step 3: [9,1,0]+1 = -1.360 runs; [9,0,0]+eos = -2.813 is finished (rank 1), so two
        // hypotheses exist, the worst -2.813; [9,0,0]+0 = -4.487 runs. Early stopping ends here
        // and picks the best finished one, [9,0] (+eos). Without it, -2.813 < -1.360 (the best
        // candidate) keeps the search going, the length limit ends it, and the running [9,1,0,1]
        // (-1.360) enters the finished list and wins; at the limit no eos is appended.
        let s = search.step(&[
            row([0.02, 0.95, 0.02, 0.01]),
            row([0.15, 0.025, 0.025, 0.8]),
        ]);
        assert!(s.is_none());
        search.finish()
    }

    #[test]
    fn early_stopping_takes_the_first_finished_set() {
        assert_eq!(run(true), vec![9, 0, 3]);
    }

    #[test]
    fn without_early_stopping_a_better_running_beam_wins() {
        assert_eq!(run(false), vec![9, 1, 0, 1]);
    }

    #[test]
    fn hypotheses_drop_the_worst_and_ties_keep_the_later() {
        let cfg = GenerationConfig {
            num_beams: 2,
            ..GenerationConfig::default()
        };
        let mut h = BeamHypotheses::new(&cfg);
        h.add(vec![1], -1.0);
        h.add(vec![2], -2.0);
        assert_eq!(h.worst_score, -2.0);
        h.add(vec![3], -1.5); // drops [2]
        assert_eq!(h.worst_score, -1.5);
        assert_eq!(
            h.beams.iter().map(|b| b.1[0]).collect::<Vec<_>>(),
            vec![1, 3]
        );
        h.add(vec![4], -1.5); // not better than the worst: ignored
        assert_eq!(h.beams.len(), 2);
        h.add(vec![5], -1.0); // ties with [1]: the stable sort + pop picks the later one
        let mut sorted = h.beams.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(sorted.pop().unwrap().1, vec![5]);
    }
}
