//! GPT-2 with SmallCap's reduced cross-attention (`ThisGPT2LMHeadModel` of the reference), read
//! into the shared [`Decoder`].
//!
//! Each block is pre-LN: causal self-attention, then cross-attention to the image's
//! `encoder_hidden_states` through projections reduced by `cross_attention_reduce_factor`
//! (softmax scale from the reduced head size), then the MLP with `gelu_new`. Linear layers are
//! GPT-2 `Conv1D`s whose weights are stored `[in, out]`; the self-attention's `c_attn` gives
//! `[q | k | v]`, the cross-attention's `[k | v]`. GPT-2's dropout (`embd_pdrop`, `attn_pdrop`,
//! `resid_pdrop`) applies to the embeddings, the attention probabilities and each residual
//! branch.

use candle_nn::VarBuilder;

use crate::config::DecoderConfig;
use crate::models::decoder::{
    Activation, AttentionScale, Block, BlockLayout, CrossAttention, Decoder, Embeddings, Linear,
    Ln, Mlp, PositionIds, Projections, SelfAttention,
};

/// Loads `decoder.*` of a GPT-2 SmallCap: `vb` points at `decoder` (so `vb.pp("transformer")`
/// holds the blocks).
pub fn load(vb: VarBuilder, cfg: &DecoderConfig) -> candle_core::Result<Decoder> {
    let e = cfg.n_embd;
    let eps = cfg.layer_norm_epsilon;
    let c = cfg.cross_attention_dim();
    let t = vb.pp("transformer");
    let mut blocks = Vec::with_capacity(cfg.n_layer);
    for i in 0..cfg.n_layer {
        let b = t.pp("h").pp(i);
        let x = b.pp("crossattention");
        blocks.push(Block {
            ln_self: Ln::load(b.pp("ln_1"), e, eps)?,
            attn: SelfAttention {
                qkv: Projections::Fused(Linear::conv1d(b.pp("attn").pp("c_attn"), e, 3 * e)?),
                out: Linear::conv1d(b.pp("attn").pp("c_proj"), e, e)?,
                n_head: cfg.n_head,
                head_dim: cfg.head_dim(),
                scale: AttentionScale::Scores(1.0 / (cfg.head_dim() as f64).sqrt()),
                dropout_probs: true,
            },
            ln_cross: Ln::load(b.pp("ln_cross_attn"), e, eps)?,
            cross: CrossAttention {
                q: Linear::conv1d(x.pp("q_attn"), e, c)?,
                kv: Projections::Fused(Linear::conv1d(x.pp("c_attn"), e, 2 * c)?),
                out: Linear::conv1d(x.pp("c_proj"), c, e)?,
                n_head: cfg.n_head,
                head_dim: cfg.cross_attention_head_dim(),
                scale: AttentionScale::Scores(cfg.cross_attention_scale()),
                dropout_probs: true,
            },
            ln_mlp: Ln::load(b.pp("ln_2"), e, eps)?,
            mlp: Mlp {
                fc_in: Linear::conv1d(b.pp("mlp").pp("c_fc"), e, cfg.n_inner)?,
                fc_out: Linear::conv1d(b.pp("mlp").pp("c_proj"), cfg.n_inner, e)?,
                activation: Activation::GeluNew,
            },
            layout: BlockLayout::PreLn,
        });
    }
    let embeddings = Embeddings {
        tokens: t.get((cfg.vocab_size, e), "wte.weight")?,
        token_scale: None,
        positions: t.get((cfg.n_positions, e), "wpe.weight")?,
        position_ids: PositionIds::Offset(0),
        project_in: None,
        dropout: true,
    };
    let lm_head = vb.get((cfg.vocab_size, e), "lm_head.weight")?;
    Decoder::new(
        embeddings,
        blocks,
        Some(Ln::load(t.pp("ln_f"), e, eps)?),
        None,
        lm_head,
        cfg,
    )
}
