//! OPT with SmallCap's reduced cross-attention (`ThisOPTForCausalLM` of the reference's
//! `src/opt.py`; `Yova/SmallCapOPT7M`), read into the shared [`Decoder`].
//!
//! What `src/opt.py` computes, and how it differs from GPT-2:
//! - token embeddings `word_embed_proj_dim` wide, mapped to `hidden_size` by `project_in` (and
//!   back by `project_out` before the LM head) when the two differ (opt-350m); learned positions
//!   read at `position + 2`;
//! - blocks pre-LN (`do_layer_norm_before`, opt-125m) or post-LN (opt-350m), where `src/opt.py`
//!   applies `self_attn_layer_norm` after the cross-attention, not after the self-attention;
//!   `final_layer_norm` after the blocks only for pre-LN;
//! - `nn.Linear` layers with biases, the queries scaled by `head_dim^-0.5` before the product,
//!   ReLU in the MLP;
//! - the cross-attention (`encoder_attn`): `k_proj` / `v_proj` from 768-wide encoder states
//!   (hard-coded), `q_proj` and `out_proj` `hidden_size / r` wide, `n_head` heads of
//!   `head_dim / r`, but its scale taken from the full `head_dim`; its layer norm
//!   (`encoder_attn_layer_norm`) before it in both layouts;
//! - dropout (`dropout`) on each residual branch only: the configs' `attention_dropout` and
//!   `activation_dropout` are 0, and the reference's decoder drops nothing from the embeddings.

use candle_nn::VarBuilder;

use crate::config::{DecoderArch, DecoderConfig};
use crate::models::decoder::{
    Activation, AttentionScale, Block, BlockLayout, CrossAttention, Decoder, Embeddings, Linear,
    Ln, Mlp, PositionIds, Projections, SelfAttention,
};

/// Loads `decoder.*` of an OPT SmallCap: `vb` points at `decoder` (so
/// `vb.pp("model").pp("decoder")` holds the blocks, `vb.pp("lm_head")` the head).
pub fn load(vb: VarBuilder, cfg: &DecoderConfig) -> candle_core::Result<Decoder> {
    let DecoderArch::Opt(layout) = &cfg.arch else {
        candle_core::bail!("opt::load with a {} config", cfg.model_type());
    };
    let h = cfg.n_embd;
    let w = layout.word_embed_proj_dim;
    let eps = cfg.layer_norm_epsilon;
    let d = vb.pp("model").pp("decoder");
    let block_layout = if layout.do_layer_norm_before {
        BlockLayout::PreLn
    } else {
        BlockLayout::PostLn
    };
    let blocks = (0..cfg.n_layer)
        .map(|i| {
            block(
                d.pp("layers").pp(i),
                cfg,
                block_layout,
                Activation::Relu,
                false,
            )
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let projected = w != h;
    let embeddings = Embeddings {
        tokens: d.get((cfg.vocab_size, w), "embed_tokens.weight")?,
        token_scale: None,
        positions: d.get(
            (cfg.n_positions + cfg.position_offset(), h),
            "embed_positions.weight",
        )?,
        position_ids: PositionIds::Offset(cfg.position_offset()),
        project_in: if projected {
            Some(Linear::nn_linear(d.pp("project_in"), w, h, false)?)
        } else {
            None
        },
        dropout: false,
    };
    let final_ln = if layout.final_layer_norm {
        Some(Ln::load(d.pp("final_layer_norm"), h, eps)?)
    } else {
        None
    };
    let project_out = if projected {
        Some(Linear::nn_linear(d.pp("project_out"), h, w, false)?)
    } else {
        None
    };
    let lm_head = vb.get((cfg.vocab_size, w), "lm_head.weight")?;
    Decoder::new(embeddings, blocks, final_ln, project_out, lm_head, cfg)
}

/// One block as OPT's `OPTDecoderLayer` names it (`self_attn`, `encoder_attn` and their layer
/// norms, `fc1`, `fc2`, `final_layer_norm`), which XGLM's `XGLMDecoderLayer` shares: separate
/// `nn.Linear` projections with biases, queries scaled by `head_dim^-0.5`, the cross-attention
/// from [`DecoderConfig::cross_attention_input_dim`]-wide states scaled by the full head size.
/// `attention_dropout`: whether training drops attention probabilities.
pub(super) fn block(
    b: VarBuilder,
    cfg: &DecoderConfig,
    layout: BlockLayout,
    activation: Activation,
    attention_dropout: bool,
) -> candle_core::Result<Block> {
    let h = cfg.n_embd;
    let eps = cfg.layer_norm_epsilon;
    let c = cfg.cross_attention_dim();
    let x_in = cfg.cross_attention_input_dim();
    let sa = b.pp("self_attn");
    let xa = b.pp("encoder_attn");
    Ok(Block {
        ln_self: Ln::load(b.pp("self_attn_layer_norm"), h, eps)?,
        attn: SelfAttention {
            qkv: Projections::separate(vec![
                Linear::nn_linear(sa.pp("q_proj"), h, h, true)?,
                Linear::nn_linear(sa.pp("k_proj"), h, h, true)?,
                Linear::nn_linear(sa.pp("v_proj"), h, h, true)?,
            ])?,
            out: Linear::nn_linear(sa.pp("out_proj"), h, h, true)?,
            n_head: cfg.n_head,
            head_dim: cfg.head_dim(),
            scale: AttentionScale::Query(1.0 / (cfg.head_dim() as f64).sqrt()),
            dropout_probs: attention_dropout,
        },
        ln_cross: Ln::load(b.pp("encoder_attn_layer_norm"), h, eps)?,
        cross: CrossAttention {
            q: Linear::nn_linear(xa.pp("q_proj"), h, c, true)?,
            kv: Projections::separate(vec![
                Linear::nn_linear(xa.pp("k_proj"), x_in, c, true)?,
                Linear::nn_linear(xa.pp("v_proj"), x_in, c, true)?,
            ])?,
            out: Linear::nn_linear(xa.pp("out_proj"), c, h, true)?,
            n_head: cfg.n_head,
            head_dim: cfg.cross_attention_head_dim(),
            scale: AttentionScale::Query(cfg.cross_attention_scale()),
            dropout_probs: attention_dropout,
        },
        ln_mlp: Ln::load(b.pp("final_layer_norm"), h, eps)?,
        mlp: Mlp {
            fc_in: Linear::nn_linear(b.pp("fc1"), h, cfg.n_inner, true)?,
            fc_out: Linear::nn_linear(b.pp("fc2"), cfg.n_inner, h, true)?,
            activation,
        },
        layout,
    })
}
