//! Decoding captions from the decoder: the settings of `generate`, and the loop that runs beam
//! search or greedy decoding for many images at once, sharing each step's forward pass.

pub mod beam_search;
pub mod greedy;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::models::decoder::{log_softmax, Decoder, Sequence};

pub use beam_search::BeamSearch;
pub use greedy::Greedy;

/// The arguments of the reference's `generate` call that matter for SmallCap.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// 1 = greedy; infer.py uses 3.
    pub num_beams: usize,
    /// `True` in infer.py, `False` in the demo notebook.
    pub early_stopping: bool,
    /// Exponent of the hypothesis length in beam scores (0 in infer.py).
    pub length_penalty: f64,
    /// The most new tokens per caption (`max_new_tokens`).
    pub max_new_tokens: usize,
    /// The token that ends a caption (`.`, 13, in SmallCap).
    pub eos_token_id: u32,
    /// The token finished sequences are padded with.
    pub pad_token_id: u32,
}

impl Default for GenerationConfig {
    /// infer.py's settings.
    fn default() -> Self {
        Self {
            num_beams: 3,
            early_stopping: true,
            length_penalty: 0.0,
            max_new_tokens: 25,
            eos_token_id: 13,
            pad_token_id: 0,
        }
    }
}

/// One image to caption: its prompt and its `encoder_hidden_states` `[tokens, n_embd]`.
pub struct Request<'a> {
    /// The prompt's token ids.
    pub prompt_ids: &'a [u32],
    /// The vision tower's `last_hidden_state` for this image, `[tokens, n_embd]`.
    pub encoder_hidden_states: Tensor,
}

enum Search {
    Beam(BeamSearch),
    Greedy(Greedy),
}

struct Active {
    index: usize,
    search: Search,
    seq: Sequence,
    /// Tokens to feed at the next step, one per row.
    next_tokens: Vec<u32>,
}

/// Runs `generate` for every request and returns, per request, the new tokens as the reference
/// returns them (eos included when emitted). The prompts are run one by one; every later step
/// runs all unfinished images in one forward pass.
pub fn generate(
    decoder: &Decoder,
    requests: &[Request],
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>> {
    if cfg.num_beams == 0 {
        return Err(Error::Input("num_beams must be at least 1".into()));
    }
    let n_positions = decoder.config().n_positions;
    let mut results: Vec<Option<Vec<u32>>> = vec![None; requests.len()];
    let mut active: Vec<Active> = Vec::new();
    for (index, req) in requests.iter().enumerate() {
        let prompt = req.prompt_ids;
        if prompt.is_empty() {
            return Err(Error::Input("empty prompt".into()));
        }
        if prompt.len() > n_positions {
            return Err(Error::Input(format!(
                "the prompt has {} tokens, more than the model's {n_positions} positions",
                prompt.len()
            )));
        }
        let mut seq = decoder.start(&req.encoder_hidden_states)?;
        let logits = decoder.forward(prompt, prompt.len(), &mut [&mut seq])?;
        let mut item = Active {
            index,
            search: if cfg.num_beams == 1 {
                Search::Greedy(Greedy::new(prompt, cfg))
            } else {
                Search::Beam(BeamSearch::new(prompt, cfg))
            },
            seq,
            next_tokens: Vec::new(),
        };
        if cfg.num_beams > 1 {
            // The reference runs the prompt once per beam; the rows are identical.
            item.seq.reorder(&vec![0; cfg.num_beams])?;
        }
        let logits = logits.broadcast_as((item.seq.rows(), logits.dim(1)?))?;
        if advance(&mut item, &logits, n_positions)? {
            active.push(item);
        } else {
            results[index] = Some(finish(item, prompt.len()));
        }
    }
    while !active.is_empty() {
        let ids: Vec<u32> = active.iter().flat_map(|a| a.next_tokens.clone()).collect();
        let logits = {
            let mut seqs: Vec<&mut Sequence> = active.iter_mut().map(|a| &mut a.seq).collect();
            decoder.forward(&ids, 1, &mut seqs)?
        };
        let mut offset = 0;
        let mut still = Vec::with_capacity(active.len());
        for mut item in active {
            let rows = item.seq.rows();
            let own = logits.narrow(0, offset, rows)?;
            offset += rows;
            if advance(&mut item, &own, n_positions)? {
                still.push(item);
            } else {
                let prompt_len = requests[item.index].prompt_ids.len();
                let index = item.index;
                results[index] = Some(finish(item, prompt_len));
            }
        }
        active = still;
    }
    Ok(results.into_iter().map(|r| r.unwrap_or_default()).collect())
}

/// Feeds one step's logits to the search; returns whether the image needs another step.
fn advance(item: &mut Active, logits: &Tensor, n_positions: usize) -> Result<bool> {
    let more = match &mut item.search {
        Search::Greedy(g) => {
            let row = logits.squeeze(0)?.to_vec1::<f32>()?;
            g.step(&row).map(|t| vec![t])
        }
        Search::Beam(b) => {
            let rows = log_softmax(logits)?.to_vec2::<f32>()?;
            match b.step(&rows) {
                Some(step) => {
                    item.seq.reorder(&step.beam_indices)?;
                    Some(step.tokens)
                }
                None => None,
            }
        }
    };
    match more {
        // The reference stops at the model's last position as well.
        Some(tokens) if item.seq.past_len() < n_positions => {
            item.next_tokens = tokens;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn finish(item: Active, prompt_len: usize) -> Vec<u32> {
    let full = match item.search {
        Search::Greedy(g) => g.finish(),
        Search::Beam(b) => b.finish(),
    };
    full[prompt_len.min(full.len())..].to_vec()
}
