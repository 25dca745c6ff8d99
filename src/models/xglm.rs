//! XGLM with SmallCap's reduced cross-attention (`ThisXGLMForCausalLM` of the reference's
//! `src/xglm.py`, built on `facebook/xglm-*`), read into the shared [`Decoder`].
//!
//! What `src/xglm.py` computes, and how it differs from OPT (whose block names and
//! cross-attention it shares, see [`super::opt::block`]):
//! - token embeddings multiplied by `√d_model` (`scale_embedding`);
//! - sinusoidal positions (`XGLMSinusoidalPositionalEmbedding`: sines then cosines, offset 2),
//!   numbered as `create_position_ids_from_input_ids` does: a `pad_token_id` token reads the zero
//!   row `padding_idx`, the others count from `padding_idx + 1` skipping it ([`PositionIds`]);
//!   the table is the checkpoint's `embed_positions.weights` (a buffer of the reference's state
//!   dict), computed by [`sinusoidal_positions`] when a checkpoint lacks it;
//! - pre-LN blocks with the exact GELU, then `layer_norm`;
//! - dropout (`dropout`) on the summed embeddings and each residual branch, `attention_dropout`
//!   on the attention probabilities (both 0.1 in `facebook/xglm-*`; training takes one rate for
//!   all); `activation_dropout` is 0 in every released config.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::{DecoderArch, DecoderConfig};
use crate::models::decoder::{Activation, BlockLayout, Decoder, Embeddings, Ln, PositionIds};

/// Loads `decoder.*` of an XGLM SmallCap: `vb` points at `decoder` (so `vb.pp("model")` holds
/// the blocks, `vb.pp("lm_head")` the head).
pub fn load(vb: VarBuilder, cfg: &DecoderConfig) -> candle_core::Result<Decoder> {
    let DecoderArch::Xglm(layout) = &cfg.arch else {
        candle_core::bail!("xglm::load with a {} config", cfg.model_type());
    };
    let h = cfg.n_embd;
    let m = vb.pp("model");
    let blocks = (0..cfg.n_layer)
        .map(|i| {
            super::opt::block(
                m.pp("layers").pp(i),
                cfg,
                BlockLayout::PreLn,
                Activation::Gelu,
                true,
            )
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let rows = cfg.n_positions + cfg.position_offset();
    let embeddings = Embeddings {
        tokens: m.get((cfg.vocab_size, h), "embed_tokens.weight")?,
        token_scale: layout.scale_embedding.then(|| (h as f64).sqrt()),
        positions: m.get((rows, h), "embed_positions.weights")?,
        position_ids: PositionIds::NonPadding {
            padding_idx: layout.padding_idx,
        },
        project_in: None,
        dropout: true,
    };
    let final_ln = Ln::load(m.pp("layer_norm"), h, cfg.layer_norm_epsilon)?;
    let lm_head = vb.get((cfg.vocab_size, h), "lm_head.weight")?;
    Decoder::new(embeddings, blocks, Some(final_ln), None, lm_head, cfg)
}

/// `XGLMSinusoidalPositionalEmbedding.get_embedding(rows, dim, padding_idx)`, in f32 as torch
/// computes it: row `p` is `[sin(p·f_0) … sin(p·f_{d/2-1}), cos(p·f_0) …]` with
/// `f_i = exp(-i · ln(10000) / (d/2 - 1))`, and row `padding_idx` zero. `dim` must be even.
pub fn sinusoidal_positions(
    rows: usize,
    dim: usize,
    padding_idx: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    if half < 2 || !dim.is_multiple_of(2) {
        candle_core::bail!("sinusoidal positions need an even width of at least 4, got {dim}");
    }
    let step = -((10000f64).ln() / (half - 1) as f64) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * step).exp()).collect();
    let mut table = vec![0f32; rows * dim];
    for (p, row) in table.chunks_mut(dim).enumerate() {
        if p == padding_idx {
            continue;
        }
        for (i, &f) in freqs.iter().enumerate() {
            let angle = p as f32 * f;
            row[i] = angle.sin();
            row[half + i] = angle.cos();
        }
    }
    Tensor::from_vec(table, (rows, dim), device)
}
