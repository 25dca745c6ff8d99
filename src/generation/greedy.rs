//! Greedy decoding as transformers 4.21.1 `generate(num_beams=1)`: the arg-max token (the first
//! one on ties), until eos (kept) or the length limit.

use super::GenerationConfig;

/// Greedy decoding (`num_beams = 1`) of one prompt.
#[derive(Debug, Clone)]
pub struct Greedy {
    eos_token_id: u32,
    sequence: Vec<u32>,
    max_length: usize,
}

impl Greedy {
    /// Decoding from one prompt with `cfg`'s limits.
    pub fn new(prompt_ids: &[u32], cfg: &GenerationConfig) -> Self {
        Self {
            eos_token_id: cfg.eos_token_id,
            sequence: prompt_ids.to_vec(),
            max_length: prompt_ids.len() + cfg.max_new_tokens,
        }
    }

    /// Takes the logits of the last position and returns the next token, or `None` when done.
    pub fn step(&mut self, logits: &[f32]) -> Option<u32> {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        let token = best as u32;
        self.sequence.push(token);
        if token == self.eos_token_id || self.sequence.len() >= self.max_length {
            None
        } else {
            Some(token)
        }
    }

    /// The whole sequence, prompt included.
    pub fn finish(self) -> Vec<u32> {
        self.sequence
    }
}
