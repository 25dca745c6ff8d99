//! The decoder with SmallCap's reduced cross-attention, as every decoder family of the reference
//! builds it: token (and learned position) embeddings, blocks of causal self-attention,
//! cross-attention to the image's `encoder_hidden_states` and an MLP, then the LM head.
//! [`gpt2`](super::gpt2), [`opt`](super::opt) and [`xglm`](super::xglm) map their checkpoints'
//! names and layouts onto this one [`Decoder`]; what differs between them is data here
//! ([`BlockLayout`], the scales, [`PositionIds`], the optional projections), so beam search,
//! greedy decoding, the packed decoding kernels and training drive every family through the same
//! code.
//!
//! The forward pass works on several [`Sequence`]s at once (one per image, each with its own
//! beams and self-attention KV cache): the linear layers, which dominate the cost, run over the
//! rows of all sequences together, while attention runs per sequence over its own cache, so an
//! image's result does not depend on what it is batched with. Cross-attention keys and values are
//! computed once per image ([`Decoder::start`]), not once per step.

use std::sync::Arc;

use candle_core::{DType, Tensor, D};
use candle_nn::{LayerNorm, Module, VarBuilder};

use crate::config::{DecoderArch, DecoderConfig};
use crate::kernels::bf16_gemm::Level;
use crate::kernels::bf16_linear::{linear_bf16, FrozenBf16};
use crate::kernels::decode_attention;
use crate::kernels::dropout::Dropout;
use crate::kernels::frozen_matmul::frozen_matmul;
use crate::kernels::fused::{
    attention_softmax, causal_mask, gelu_new, layer_norm as fused_layer_norm,
};
use crate::kernels::kv_cache;
use crate::kernels::packed_linear::{self, PackedLinear, WeightType};
pub use crate::models::linear::Linear;

/// A LayerNorm with its epsilon (which candle's `LayerNorm` does not expose).
#[derive(Debug, Clone)]
pub struct Ln {
    inner: LayerNorm,
    eps: f64,
}

impl Ln {
    /// Loads `weight` and `bias` of size `size`.
    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            inner: candle_nn::layer_norm(size, eps, vb)?,
            eps,
        })
    }
}

/// How a forward pass runs: decoding with per-image caches, or training over a padded batch.
pub enum Pass<'a, 'b> {
    /// `t` new tokens for every row of every sequence; attention runs per sequence.
    Decode {
        /// New tokens per row.
        t: usize,
        /// The sequences decoded, each with its cache.
        seqs: &'a mut [&'b mut Sequence],
    },
    /// A batch of `b` sequences of `t` tokens, one image each, from position 0, with
    /// differentiable layer norms and softmaxes and the decoder's dropout.
    Train {
        /// Batch size.
        b: usize,
        /// Tokens per sequence.
        t: usize,
        /// Per layer: cross-attention keys `[b, n_head, head_dim_r, S]` and values `[b, n_head, S, head_dim_r]`.
        cross_kv: Vec<(Tensor, Tensor)>,
        /// The dropout (its own random stream).
        dropout: &'a mut Dropout,
    },
}

impl Pass<'_, '_> {
    fn training(&self) -> bool {
        matches!(self, Pass::Train { .. })
    }
    /// Dropout on residual branches (and wherever the family applies it): training only.
    fn dropout(&mut self, xs: Tensor) -> candle_core::Result<Tensor> {
        match self {
            Pass::Decode { .. } => Ok(xs),
            Pass::Train { dropout, .. } => dropout.apply(xs),
        }
    }
    fn layer_norm(&self, ln: &Ln, xs: &Tensor) -> candle_core::Result<Tensor> {
        if self.training() {
            differentiable_layer_norm(ln, xs)
        } else {
            ln.inner.forward(xs)
        }
    }
}

/// LayerNorm with a backward pass (candle's fused `LayerNorm` has none): see [`fused_layer_norm`].
fn differentiable_layer_norm(ln: &Ln, xs: &Tensor) -> candle_core::Result<Tensor> {
    let weight = ln.inner.weight();
    match ln.inner.bias() {
        Some(b) => fused_layer_norm(xs, weight, b, ln.eps),
        None => fused_layer_norm(xs, weight, &weight.zeros_like()?, ln.eps),
    }
}

/// Where an attention's softmax scale is applied, as each reference computes it.
#[derive(Debug, Clone, Copy)]
pub enum AttentionScale {
    /// `scores · scale` (GPT-2 divides the scores by the square root of the head size).
    Scores(f64),
    /// `(q · scale) · kᵀ` (OPT scales the query projection).
    Query(f64),
}

impl AttentionScale {
    fn query(&self, q: Tensor) -> candle_core::Result<Tensor> {
        match *self {
            AttentionScale::Query(s) => q.affine(s, 0.0),
            AttentionScale::Scores(_) => Ok(q),
        }
    }
    fn scores(&self) -> f64 {
        match *self {
            AttentionScale::Scores(s) => s,
            AttentionScale::Query(_) => 1.0,
        }
    }
}

/// Projections computed together (`[q | k | v]` of a self-attention, `[k | v]` of a
/// cross-attention): GPT-2's fused `c_attn`, or separate layers (OPT), fused when frozen.
#[derive(Debug, Clone)]
pub enum Projections {
    /// One layer whose outputs are the parts side by side.
    Fused(Linear),
    /// One layer per part (trainable ones stay separate).
    Separate(Vec<Linear>),
}

impl Projections {
    /// Separate layers, fused into one when all are frozen.
    pub fn separate(parts: Vec<Linear>) -> candle_core::Result<Self> {
        let refs: Vec<&Linear> = parts.iter().collect();
        Ok(match Linear::fuse(&refs)? {
            Some(fused) => Projections::Fused(fused),
            None => Projections::Separate(parts),
        })
    }
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Projections::Fused(l) => l.forward(xs),
            Projections::Separate(parts) => {
                let outs = parts
                    .iter()
                    .map(|p| p.forward(xs))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&outs, 1)
            }
        }
    }
    fn layers(&mut self) -> Vec<&mut Linear> {
        match self {
            Projections::Fused(l) => vec![l],
            Projections::Separate(parts) => parts.iter_mut().collect(),
        }
    }
}

/// Causal self-attention: `qkv` gives `[q | k | v]`, `out` merges the heads.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    /// The query, key and value projections.
    pub qkv: Projections,
    /// The output projection.
    pub out: Linear,
    /// Heads.
    pub n_head: usize,
    /// Head size.
    pub head_dim: usize,
    /// The softmax scale and where it applies.
    pub scale: AttentionScale,
    /// Whether training drops attention probabilities (GPT-2's `attn_pdrop`; OPT's
    /// `attention_dropout` is 0).
    pub dropout_probs: bool,
}

/// SmallCap's reduced cross-attention: queries from the decoder states, keys and values
/// (`kv` gives `[k | v]`) from the encoder states, all `n_embd / r` wide.
#[derive(Debug, Clone)]
pub struct CrossAttention {
    /// The query projection.
    pub q: Linear,
    /// The key and value projections.
    pub kv: Projections,
    /// The output projection.
    pub out: Linear,
    /// Heads.
    pub n_head: usize,
    /// Reduced head size.
    pub head_dim: usize,
    /// The softmax scale and where it applies.
    pub scale: AttentionScale,
    /// Whether training drops attention probabilities.
    pub dropout_probs: bool,
}

/// The MLP's activation.
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    /// GPT-2's `gelu_new` (tanh approximation).
    GeluNew,
    /// OPT's ReLU.
    Relu,
    /// XGLM's `gelu` (the exact, erf-based GELU).
    Gelu,
}

/// `fc_out(act(fc_in(x)))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// Up projection.
    pub fc_in: Linear,
    /// Down projection.
    pub fc_out: Linear,
    /// Activation between them.
    pub activation: Activation,
}

/// Where a block's layer norms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockLayout {
    /// Before each sub-layer (GPT-2, opt-125m): `h + f(ln(h))`.
    PreLn,
    /// OPT with `do_layer_norm_before` false (opt-350m), as `src/opt.py` orders it:
    /// `h + attn(h)`, `+ cross(ln_cross(h))`, then `ln_self`; `h + mlp(h)`, then `ln_mlp`.
    PostLn,
}

/// One decoder block.
#[derive(Debug, Clone)]
pub struct Block {
    /// Self-attention's layer norm (`ln_1`, `self_attn_layer_norm`).
    pub ln_self: Ln,
    /// Causal self-attention.
    pub attn: SelfAttention,
    /// Cross-attention's layer norm (`ln_cross_attn`, `encoder_attn_layer_norm`), always before it.
    pub ln_cross: Ln,
    /// The reduced cross-attention.
    pub cross: CrossAttention,
    /// The MLP's layer norm (`ln_2`, `final_layer_norm`).
    pub ln_mlp: Ln,
    /// The MLP.
    pub mlp: Mlp,
    /// Where the layer norms sit.
    pub layout: BlockLayout,
}

/// Which row of the position table each token reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionIds {
    /// Position `p` reads row `p + offset` (GPT-2 0, OPT 2).
    Offset(usize),
    /// XGLM's `create_position_ids_from_input_ids`: a `padding_idx` token reads row
    /// `padding_idx`; the others are counted, without the padding ones, from `padding_idx + 1`
    /// (so from row 2) after the cached past.
    NonPadding {
        /// The decoder's `pad_token_id`.
        padding_idx: u32,
    },
}

impl PositionIds {
    /// The rows read by `ids`, new tokens of one row after `past` cached ones.
    fn rows(self, past: usize, ids: &[u32]) -> impl Iterator<Item = u32> + '_ {
        let mut counted = 0u32;
        let past = past as u32;
        ids.iter().enumerate().map(move |(i, &id)| match self {
            PositionIds::Offset(offset) => past + i as u32 + offset as u32,
            PositionIds::NonPadding { padding_idx } if id == padding_idx => padding_idx,
            PositionIds::NonPadding { padding_idx } => {
                counted += 1;
                past + counted + padding_idx
            }
        })
    }
}

/// The token and position embeddings.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// `[vocab, embedding_dim]`.
    pub tokens: Tensor,
    /// What the token embeddings are multiplied by (XGLM's `√d_model` with `scale_embedding`).
    pub token_scale: Option<f64>,
    /// `[rows, n_embd]`: learned (GPT-2, OPT) or sinusoidal (XGLM).
    pub positions: Tensor,
    /// Which row each token reads.
    pub position_ids: PositionIds,
    /// OPT's `project_in` from a narrower embedding.
    pub project_in: Option<Linear>,
    /// Whether training drops the summed embeddings (GPT-2's `embd_pdrop`).
    pub dropout: bool,
}

/// The decoder: embeddings, blocks, final layer norm, optional `project_out`, LM head.
#[derive(Debug, Clone)]
pub struct Decoder {
    embeddings: Embeddings,
    blocks: Vec<Block>,
    final_ln: Option<Ln>,
    project_out: Option<Linear>,
    lm_head: Tensor,
    /// How decoding multiplies by a frozen `lm_head` (`None` when the head trains, tied to a
    /// trainable embedding). Decoding reads the whole head at every step.
    frozen_head: Option<FrozenHead>,
    /// Training's products in bf16 on this level ([`Decoder::use_bf16_products`]).
    bf16_products: Option<Level>,
    cfg: DecoderConfig,
}

/// A frozen LM head laid out for decoding.
#[derive(Debug, Clone)]
enum FrozenHead {
    /// `[embedding_dim, vocab]`: the embedding's transposed view (which packing reads directly),
    /// made contiguous on its first product (gemm streams a row-major right-hand side several
    /// times faster than a transposed view).
    RowMajor {
        view: Tensor,
        contiguous: std::sync::OnceLock<Tensor>,
    },
    /// Packed by [`Decoder::pack_for_decoding`].
    Packed(Arc<PackedLinear>),
    /// In bf16 for training's products ([`Decoder::use_bf16_products`]).
    Bf16(Arc<FrozenBf16>),
}

/// One image's decoding state: its rows (beams), self-attention cache and cross-attention K/V.
#[derive(Debug, Clone)]
pub struct Sequence {
    rows: usize,
    past_len: usize,
    /// Per layer: keys and values `[cached rows, n_head, past_len, head_dim]`.
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    /// Row `i` continues cached row `pending_order[i]` (a reorder not yet applied to the cache).
    pending_order: Option<Vec<u32>>,
    /// Per layer: keys `[1, n_head, head_dim_r, S]` (already transposed) and values `[1, n_head, S, head_dim_r]`.
    cross_kv: Vec<(Tensor, Tensor)>,
}

impl Sequence {
    /// Rows of the sequence (beams).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of tokens already in the cache.
    pub fn past_len(&self) -> usize {
        self.past_len
    }
    /// Reorders (and possibly multiplies) the rows: new row `i` continues old row `indices[i]`.
    /// The cache itself is reordered lazily, while the next step appends to it
    /// ([`kv_cache::append`]).
    pub fn reorder(&mut self, indices: &[u32]) -> candle_core::Result<()> {
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= self.rows) {
            candle_core::bail!("reorder: row {bad} of {} rows", self.rows);
        }
        self.pending_order = Some(match &self.pending_order {
            Some(p) => indices.iter().map(|&i| p[i as usize]).collect(),
            None => indices.to_vec(),
        });
        self.rows = indices.len();
        Ok(())
    }
}

impl Decoder {
    /// Loads `decoder.*` of the family `cfg.arch` names (`vb` points at `decoder`).
    pub fn load(vb: VarBuilder, cfg: &DecoderConfig) -> candle_core::Result<Self> {
        match cfg.arch {
            DecoderArch::Gpt2 => super::gpt2::load(vb, cfg),
            DecoderArch::Opt(_) => super::opt::load(vb, cfg),
            DecoderArch::Xglm(_) => super::xglm::load(vb, cfg),
        }
    }

    /// Assembles a decoder from its loaded parts (see [`super::gpt2::load`],
    /// [`super::opt::load`], [`super::xglm::load`]).
    pub fn new(
        embeddings: Embeddings,
        blocks: Vec<Block>,
        final_ln: Option<Ln>,
        project_out: Option<Linear>,
        lm_head: Tensor,
        cfg: &DecoderConfig,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            embeddings,
            blocks,
            final_ln,
            project_out,
            frozen_head: if lm_head.track_op() {
                None
            } else {
                Some(FrozenHead::RowMajor {
                    view: lm_head.t()?,
                    contiguous: std::sync::OnceLock::new(),
                })
            },
            lm_head,
            bf16_products: None,
            cfg: cfg.clone(),
        })
    }

    /// The decoder's sizes.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// Where the decoder's weights are.
    pub fn device(&self) -> &candle_core::Device {
        self.embeddings.tokens.device()
    }

    /// Packs every frozen linear layer and the LM head for decoding on the CPU, in `ty`
    /// (see [`PackedLinear`]): the decoder can then only decode, not train. Does nothing on
    /// other devices, nor for f32 on a CPU without AVX-512 (see
    /// [`packed_linear::simd_available`]); layers already packed stay as they are.
    pub fn pack_for_decoding(&mut self, ty: WeightType) -> candle_core::Result<()> {
        let f32_without_simd = ty == WeightType::F32 && !packed_linear::simd_available();
        if !self.embeddings.tokens.device().is_cpu() || f32_without_simd {
            return Ok(());
        }
        for layer in self.linear_layers() {
            if !layer.trains() {
                layer.pack(ty)?;
            }
        }
        if let Some(FrozenHead::RowMajor { view, .. }) = &self.frozen_head {
            let packed = PackedLinear::pack(view, None, ty)?;
            self.frozen_head = Some(FrozenHead::Packed(Arc::new(packed)));
        }
        Ok(())
    }

    /// Computes training's linear products in bf16 with f32 sums on `level` (`train
    /// --precision bf16`): frozen layers and a frozen LM head are held in bf16 for the forward
    /// product and their input's gradient ([`FrozenBf16`]); trainable ones keep their f32
    /// weights and round them at each product, their gradients included ([`linear_bf16`]).
    /// The attention's own products stay f32. CPU only.
    pub fn use_bf16_products(&mut self, level: Level) -> candle_core::Result<()> {
        if !self.device().is_cpu() {
            candle_core::bail!("bf16 products run on the CPU's bf16 kernels only");
        }
        for layer in self.linear_layers() {
            layer.to_bf16_products(level)?;
        }
        if let Some(FrozenHead::RowMajor { view, .. }) = &self.frozen_head {
            let head = FrozenBf16::new(view, None, level)?;
            self.frozen_head = Some(FrozenHead::Bf16(Arc::new(head)));
        }
        self.bf16_products = Some(level);
        Ok(())
    }

    /// Every linear layer of the decoder (trainable or not).
    fn linear_layers(&mut self) -> Vec<&mut Linear> {
        let mut layers: Vec<&mut Linear> = Vec::new();
        layers.extend(self.embeddings.project_in.as_mut());
        layers.extend(self.project_out.as_mut());
        for block in &mut self.blocks {
            layers.extend(block.attn.qkv.layers());
            layers.push(&mut block.attn.out);
            layers.push(&mut block.cross.q);
            layers.extend(block.cross.kv.layers());
            layers.push(&mut block.cross.out);
            layers.push(&mut block.mlp.fc_in);
            layers.push(&mut block.mlp.fc_out);
        }
        layers
    }

    /// Starts a sequence for one image from its `encoder_hidden_states` `[S, width]`:
    /// computes every layer's cross-attention keys and values once.
    pub fn start(&self, encoder_hidden_states: &Tensor) -> candle_core::Result<Sequence> {
        let states = encoder_hidden_states.unsqueeze(0)?;
        let cross_kv = self
            .blocks
            .iter()
            .map(|block| block.cross.keys_values(&states))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Sequence {
            rows: 1,
            past_len: 0,
            self_kv: vec![None; self.blocks.len()],
            pending_order: None,
            cross_kv,
        })
    }

    /// Token plus position embeddings of `n` rows (`pos`: their position-table rows), then every
    /// block.
    fn run_blocks(
        &self,
        ids: &Tensor,
        pos: &Tensor,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        let e = &self.embeddings;
        let tokens = e.tokens.index_select(ids, 0)?;
        let tokens = match e.token_scale {
            Some(scale) => tokens.affine(scale, 0.0)?,
            None => tokens,
        };
        let tokens = match &e.project_in {
            Some(p) => p.forward(&tokens)?,
            None => tokens,
        };
        let h = (tokens + e.positions.index_select(pos, 0)?)?;
        let mut h = if e.dropout { pass.dropout(h)? } else { h };
        for (l, block) in self.blocks.iter().enumerate() {
            h = block.forward(h, l, pass)?;
        }
        Ok(h)
    }

    /// Runs `t` new tokens for every row of every sequence and returns the logits of each row's
    /// last new position, `[Σ rows, vocab]`, in sequence order. `input_ids` holds, for each
    /// sequence in turn, `rows × t` ids (row-major).
    pub fn forward(
        &self,
        input_ids: &[u32],
        t: usize,
        seqs: &mut [&mut Sequence],
    ) -> candle_core::Result<Tensor> {
        let device = self.embeddings.tokens.device();
        let n: usize = seqs.iter().map(|s| s.rows * t).sum();
        if input_ids.len() != n {
            candle_core::bail!(
                "forward: {} ids for {} rows × {t} tokens",
                input_ids.len(),
                n
            );
        }
        if let Some(&bad) = input_ids
            .iter()
            .find(|&&id| id as usize >= self.cfg.vocab_size)
        {
            candle_core::bail!(
                "token id {bad} is outside the decoder's vocabulary of {}",
                self.cfg.vocab_size
            );
        }
        let mut positions = Vec::with_capacity(n);
        let mut row_ids = input_ids.chunks(t.max(1));
        for s in seqs.iter() {
            if s.past_len + t > self.cfg.n_positions {
                candle_core::bail!(
                    "sequence of {} tokens exceeds the model's {} positions",
                    s.past_len + t,
                    self.cfg.n_positions
                );
            }
            for _ in 0..s.rows {
                let ids = row_ids.next().unwrap_or_default();
                positions.extend(self.embeddings.position_ids.rows(s.past_len, ids));
            }
        }
        let ids = Tensor::new(input_ids, device)?;
        let pos = Tensor::new(positions.as_slice(), device)?;
        let h = self.run_blocks(
            &ids,
            &pos,
            &mut Pass::Decode {
                t,
                seqs: &mut *seqs,
            },
        )?;
        let mut last = Vec::new();
        let mut offset = 0;
        for s in seqs.iter_mut() {
            for r in 0..s.rows {
                last.push((offset + r * t + t - 1) as u32);
            }
            offset += s.rows * t;
            s.past_len += t;
            s.pending_order = None;
        }
        let h = h.index_select(&Tensor::new(last.as_slice(), device)?, 0)?;
        self.logits(&h, false)
    }

    /// The training forward pass: `input_ids` `[B, T]` (u32) from position 0, each row
    /// attending to its own `encoder_hidden_states` `[B, S, width]`; returns the last block's
    /// hidden states `[B·T, n_embd]` (before the final layer norm). Padding on the right needs
    /// no mask: the causal mask keeps it from earlier positions.
    pub fn forward_train(
        &self,
        input_ids: &Tensor,
        encoder_hidden_states: &Tensor,
        dropout: &mut Dropout,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        if t > self.cfg.n_positions {
            candle_core::bail!(
                "sequences of {t} tokens exceed the model's {} positions",
                self.cfg.n_positions
            );
        }
        let cross_kv = self
            .blocks
            .iter()
            .map(|block| block.cross.keys_values(encoder_hidden_states))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let device = self.embeddings.tokens.device();
        let rows = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let positions: Vec<u32> = rows
            .iter()
            .flat_map(|ids| self.embeddings.position_ids.rows(0, ids))
            .collect();
        let pos = Tensor::new(positions.as_slice(), device)?;
        let ids = input_ids.flatten_all()?;
        let mut pass = Pass::Train {
            b,
            t,
            cross_kv,
            dropout,
        };
        self.run_blocks(&ids, &pos, &mut pass)
    }

    /// The final layer norm, `project_out` and the LM head: hidden states `[N, n_embd]` →
    /// logits `[N, vocab]`. `training` selects the differentiable layer norm.
    pub fn logits(&self, hidden: &Tensor, training: bool) -> candle_core::Result<Tensor> {
        let h = match &self.final_ln {
            Some(ln) if training => differentiable_layer_norm(ln, hidden)?,
            Some(ln) => ln.inner.forward(hidden)?,
            None => hidden.clone(),
        };
        let h = match &self.project_out {
            Some(p) => p.forward(&h)?,
            None => h,
        };
        match &self.frozen_head {
            Some(FrozenHead::RowMajor { view, contiguous }) if !training => {
                if contiguous.get().is_none() {
                    // A race only computes it twice; the first stored is kept.
                    let _ = contiguous.set(view.contiguous()?);
                }
                h.matmul(contiguous.get().unwrap_or(view))
            }
            Some(FrozenHead::Packed(head)) if !training => head.forward(&h),
            Some(FrozenHead::Bf16(head)) => head.forward(&h),
            _ => match self.bf16_products {
                Some(level) => linear_bf16(&h, &self.lm_head.t()?, None, level),
                None => frozen_matmul(&h, &self.lm_head.t()?),
            },
        }
    }
}

impl Block {
    /// `h` `[N, n_embd]`: self-attention, cross-attention, MLP, each with a residual.
    fn forward(&self, h: Tensor, layer: usize, pass: &mut Pass) -> candle_core::Result<Tensor> {
        let pre = self.layout == BlockLayout::PreLn;
        let x = if pre {
            pass.layer_norm(&self.ln_self, &h)?
        } else {
            h.clone()
        };
        let a = self.attn.forward(&x, layer, pass)?;
        let h = (h + pass.dropout(a)?)?;
        let x = self
            .cross
            .forward(&pass.layer_norm(&self.ln_cross, &h)?, layer, pass)?;
        let h = (h + pass.dropout(x)?)?;
        if pre {
            let m = self.mlp.forward(&pass.layer_norm(&self.ln_mlp, &h)?)?;
            h + pass.dropout(m)?
        } else {
            let h = pass.layer_norm(&self.ln_self, &h)?;
            let m = self.mlp.forward(&h)?;
            let h = (h + pass.dropout(m)?)?;
            pass.layer_norm(&self.ln_mlp, &h)
        }
    }
}

impl SelfAttention {
    fn forward(&self, xs: &Tensor, layer: usize, pass: &mut Pass) -> candle_core::Result<Tensor> {
        let qkv = self.qkv.forward(xs)?;
        let o = match pass {
            Pass::Decode { t, seqs } => {
                let t = *t;
                let mut outs = Vec::with_capacity(seqs.len());
                let mut offset = 0;
                for s in seqs.iter_mut() {
                    let n = s.rows * t;
                    let g = qkv.narrow(0, offset, n)?;
                    offset += n;
                    let past = s.self_kv[layer].take();
                    let order = s.pending_order.as_deref();
                    let (o, k, v) = self.attend(&g, s.rows, t, past, order, None)?;
                    outs.push(o);
                    s.self_kv[layer] = Some((k, v));
                }
                Tensor::cat(&outs, 0)?
            }
            Pass::Train { b, t, dropout, .. } => {
                self.attend(&qkv, *b, *t, None, None, Some(&mut **dropout))?
                    .0
            }
        };
        self.out.forward(&o)
    }

    /// Attention of one group of `rows × t` new positions (`qkv` `[rows·t, 3·n_embd]`) over its
    /// cached past (whose row `i` is `past[order[i]]`) plus themselves, causally. Returns the
    /// merged heads `[rows·t, n_embd]` and the keys and values to cache. `dropout` is given in
    /// training (which also selects the differentiable softmax).
    fn attend(
        &self,
        qkv: &Tensor,
        rows: usize,
        t: usize,
        past: Option<(Tensor, Tensor)>,
        order: Option<&[u32]>,
        dropout: Option<&mut Dropout>,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let e = self.n_head * self.head_dim;
        let heads = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(1, i * e, e)?
                .reshape((rows, t, self.n_head, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (k, v) = (heads(1)?, heads(2)?);
        let (k, v) = match past {
            Some((pk, pv)) => (
                kv_cache::append(&pk, &k, order)?,
                kv_cache::append(&pv, &v, order)?,
            ),
            None => (k, v),
        };
        if dropout.is_none() && decode_attention::applies(qkv, &k) {
            let (query_scale, score_scale) = match self.scale {
                AttentionScale::Query(s) => (s as f32, 1.0),
                AttentionScale::Scores(s) => (1.0, s as f32),
            };
            let step = decode_attention::Step {
                rows,
                t,
                n_head: self.n_head,
                head_dim: self.head_dim,
                query_scale,
                score_scale,
            };
            let o = decode_attention::self_attention(qkv, &k, &v, step)?;
            return Ok((o, k, v));
        }
        let q = self.scale.query(heads(0)?)?;
        let total = k.dim(2)?;
        let scores = q.matmul(&k.t()?)?;
        let scale = self.scale.scores();
        let probs = match dropout {
            // Training: the scale and the causal mask inside the fused softmax.
            Some(d) => {
                let p = attention_softmax(&scores, scale, Some(total - t))?;
                if self.dropout_probs {
                    d.apply(p)?
                } else {
                    p
                }
            }
            None => {
                let scores = scores.affine(scale, 0.0)?;
                let scores = if t > 1 {
                    scores.broadcast_add(&causal_mask(t, total - t, qkv.device())?)?
                } else {
                    scores
                };
                candle_nn::ops::softmax_last_dim(&scores)?
            }
        };
        let o = probs.matmul(&v)?.transpose(1, 2)?.reshape((rows * t, e))?;
        Ok((o, k, v))
    }
}

impl CrossAttention {
    /// Keys `[g, n_head, head_dim_r, S]` (transposed for the product) and values
    /// `[g, n_head, S, head_dim_r]` of encoder states `[g, S, width]`.
    fn keys_values(&self, states: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (g, s, e) = states.dims3()?;
        let c = self.n_head * self.head_dim;
        let kv = self.kv.forward(&states.reshape((g * s, e))?)?; // [g·S, 2c]
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((g, s, self.n_head, self.head_dim))?
                .transpose(1, 2)
        };
        let k = split(kv.narrow(1, 0, c)?)?.transpose(2, 3)?.contiguous()?;
        let v = split(kv.narrow(1, c, c)?)?.contiguous()?;
        Ok((k, v))
    }

    fn forward(&self, xs: &Tensor, layer: usize, pass: &mut Pass) -> candle_core::Result<Tensor> {
        let c = self.n_head * self.head_dim;
        let q = self.q.forward(xs)?;
        let o = match pass {
            Pass::Decode { t, seqs } => {
                let mut outs = Vec::with_capacity(seqs.len());
                let mut offset = 0;
                for s in seqs.iter() {
                    // All rows (beams) of a sequence share the image: fold them into the time axis.
                    let n = s.rows * *t;
                    let (k, v) = &s.cross_kv[layer];
                    let qh = q
                        .narrow(0, offset, n)?
                        .reshape((1, n, self.n_head, self.head_dim))?;
                    offset += n;
                    outs.push(self.attend(&qh, k, v, None)?.reshape((n, c))?);
                }
                Tensor::cat(&outs, 0)?
            }
            Pass::Train {
                b,
                t,
                cross_kv,
                dropout,
            } => {
                let (k, v) = &cross_kv[layer];
                let qh = q.reshape((*b, *t, self.n_head, self.head_dim))?;
                self.attend(&qh, k, v, Some(&mut **dropout))?
                    .reshape((*b * *t, c))?
            }
        };
        self.out.forward(&o)
    }

    /// `q` `[g, n, n_head, head_dim_r]` against one group's keys and values; returns
    /// `[g, n, n_head, head_dim_r]`. No mask: every position sees every encoder token.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dropout: Option<&mut Dropout>,
    ) -> candle_core::Result<Tensor> {
        let qh = self.scale.query(q.transpose(1, 2)?.contiguous()?)?;
        let scores = qh.matmul(k)?;
        let scale = self.scale.scores();
        let probs = match dropout {
            None => candle_nn::ops::softmax_last_dim(&scores.affine(scale, 0.0)?)?,
            Some(d) => {
                let p = attention_softmax(&scores, scale, None)?;
                if self.dropout_probs {
                    d.apply(p)?
                } else {
                    p
                }
            }
        };
        probs.matmul(v)?.transpose(1, 2)
    }
}

impl Mlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.fc_in.forward(xs)?;
        let h = match self.activation {
            Activation::GeluNew => gelu_new(&h)?,
            Activation::Relu => h.relu()?,
            Activation::Gelu => h.gelu_erf()?,
        };
        self.fc_out.forward(&h)
    }
}

/// `log_softmax` over the vocabulary in f32, as the reference's beam search scores tokens.
pub fn log_softmax(logits: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::PositionIds;

    #[test]
    fn xglm_positions_skip_padding_as_create_position_ids_from_input_ids() {
        // (cumsum(ids != 1) + past) * (ids != 1) + 1, for padding_idx 1.
        let xglm = PositionIds::NonPadding { padding_idx: 1 };
        let rows = |past, ids: &[u32]| xglm.rows(past, ids).collect::<Vec<_>>();
        assert_eq!(rows(0, &[2, 5, 1, 7]), vec![2, 3, 1, 4]);
        assert_eq!(rows(4, &[9]), vec![6]);
        assert_eq!(rows(4, &[1]), vec![1]);
        let opt = PositionIds::Offset(2);
        assert_eq!(opt.rows(3, &[1, 1]).collect::<Vec<_>>(), vec![5, 6]);
    }
}
