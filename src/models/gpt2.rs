//! GPT-2 with SmallCap's reduced cross-attention (`ThisGPT2LMHeadModel` of the reference).
//!
//! Each block is pre-LN: causal self-attention, then cross-attention to the image's
//! `encoder_hidden_states` through projections reduced by `cross_attention_reduce_factor`
//! (softmax scale from the reduced head size), then the MLP with `gelu_new`. Linear layers are
//! GPT-2 `Conv1D`s whose weights are stored `[in, out]`.
//!
//! The forward pass works on several [`Sequence`]s at once (one per image, each with its own
//! beams and self-attention KV cache): the linear layers, which dominate the cost, run over the
//! rows of all sequences together, while attention runs per sequence over its own cache, so an
//! image's result does not depend on what it is batched with. Cross-attention keys and values are
//! computed once per image ([`Gpt2::cross_kv`]), not once per step.

use std::sync::Arc;

use candle_core::{DType, Tensor, D};
use candle_nn::{LayerNorm, Module, VarBuilder};

use crate::config::DecoderConfig;
use crate::kernels::dropout::Dropout;
use crate::kernels::frozen_matmul::{frozen_linear, frozen_matmul};
use crate::kernels::fused::{
    attention_softmax, causal_mask, gelu_new, layer_norm as fused_layer_norm,
};
use crate::kernels::kv_cache;
use crate::kernels::packed_linear::{self, PackedLinear, WeightType};

/// GPT-2's `Conv1D`: `y = x · W + b` with `W` stored `[in, out]`.
#[derive(Debug, Clone)]
pub struct Conv1D {
    weights: Conv1DWeights,
}

#[derive(Debug, Clone)]
enum Conv1DWeights {
    /// As loaded: trainable or frozen, any device.
    Dense { weight: Tensor, bias: Tensor },
    /// Frozen and packed for decoding on the CPU (see [`PackedLinear`]); shared by clones.
    Packed(Arc<PackedLinear>),
}

impl Conv1D {
    /// Loads HF `Conv1D` weights `[d_in, d_out]` and bias `[d_out]`.
    pub fn load(vb: VarBuilder, d_in: usize, d_out: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weights: Conv1DWeights::Dense {
                weight: vb.get((d_in, d_out), "weight")?,
                bias: vb.get(d_out, "bias")?,
            },
        })
    }

    /// A layer from its weight `[in, out]` and bias `[out]`.
    pub fn from_tensors(weight: Tensor, bias: Tensor) -> Self {
        Self {
            weights: Conv1DWeights::Dense { weight, bias },
        }
    }

    /// Packs a frozen weight for small-batch products (once; a packed layer stays as it is).
    pub fn pack(&mut self, ty: WeightType) -> candle_core::Result<()> {
        if let Conv1DWeights::Dense { weight, bias } = &self.weights {
            let packed = PackedLinear::pack(weight, Some(bias), ty)?;
            self.weights = Conv1DWeights::Packed(Arc::new(packed));
        }
        Ok(())
    }
}

impl Module for Conv1D {
    /// `xs` is `[N, in]`. A frozen weight gets no gradient (see [`frozen_linear`]).
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match &self.weights {
            Conv1DWeights::Dense { weight, bias } => frozen_linear(xs, weight, bias),
            Conv1DWeights::Packed(packed) => packed.forward(xs),
        }
    }
}

/// A LayerNorm with its epsilon (which candle's `LayerNorm` does not expose).
#[derive(Debug, Clone)]
struct Ln {
    inner: LayerNorm,
    eps: f64,
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<Ln> {
    Ok(Ln {
        inner: candle_nn::layer_norm(size, eps, vb)?,
        eps,
    })
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
    /// differentiable layer norms and softmaxes and GPT-2's dropout.
    Train {
        /// Batch size.
        b: usize,
        /// Tokens per sequence.
        t: usize,
        /// Per layer: cross-attention keys `[b, n_head, head_dim_r, S]` and values `[b, n_head, S, head_dim_r]`.
        cross_kv: Vec<(Tensor, Tensor)>,
        /// GPT-2's dropout (its own random stream).
        dropout: &'a mut Dropout,
    },
}

impl Pass<'_, '_> {
    fn training(&self) -> bool {
        matches!(self, Pass::Train { .. })
    }
    /// GPT-2's dropout (`embd_pdrop`, `attn_pdrop`, `resid_pdrop`): active only in training.
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

/// Causal self-attention (`attn`).
#[derive(Debug, Clone)]
struct SelfAttention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: usize,
    head_dim: usize,
}

/// SmallCap's cross-attention (`crossattention`): `q_attn` on the decoder states, `c_attn`
/// (key then value) on the encoder states, both `n_embd / r` wide.
#[derive(Debug, Clone)]
struct CrossAttention {
    q_attn: Conv1D,
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: usize,
    head_dim: usize,
}

#[derive(Debug, Clone)]
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
}

#[derive(Debug, Clone)]
struct Block {
    ln_1: Ln,
    attn: SelfAttention,
    ln_cross_attn: Ln,
    crossattention: CrossAttention,
    ln_2: Ln,
    mlp: Mlp,
}

/// The decoder: `decoder.transformer.*` plus `decoder.lm_head`.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: Ln,
    lm_head: Tensor,
    /// How decoding multiplies by a frozen `lm_head` (`None` when the head trains, tied to a
    /// trainable `wte`). Decoding reads the whole head at every step.
    frozen_head: Option<FrozenHead>,
    cfg: DecoderConfig,
}

/// A frozen LM head laid out for decoding.
#[derive(Debug, Clone)]
enum FrozenHead {
    /// Transposed to `[n_embd, vocab]` once at load: gemm streams a row-major right-hand side
    /// several times faster than a transposed view.
    RowMajor(Tensor),
    /// Packed by [`Gpt2::pack_for_decoding`].
    Packed(Arc<PackedLinear>),
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

impl Gpt2 {
    /// `vb` points at `decoder` (so `vb.pp("transformer")` holds the blocks).
    pub fn load(vb: VarBuilder, cfg: &DecoderConfig) -> candle_core::Result<Self> {
        let e = cfg.n_embd;
        let eps = cfg.layer_norm_epsilon;
        let c = cfg.cross_attention_dim();
        let t = vb.pp("transformer");
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let b = t.pp("h").pp(i);
            let x = b.pp("crossattention");
            blocks.push(Block {
                ln_1: layer_norm(b.pp("ln_1"), e, eps)?,
                attn: SelfAttention {
                    c_attn: Conv1D::load(b.pp("attn").pp("c_attn"), e, 3 * e)?,
                    c_proj: Conv1D::load(b.pp("attn").pp("c_proj"), e, e)?,
                    n_head: cfg.n_head,
                    head_dim: cfg.head_dim(),
                },
                ln_cross_attn: layer_norm(b.pp("ln_cross_attn"), e, eps)?,
                crossattention: CrossAttention {
                    q_attn: Conv1D::load(x.pp("q_attn"), e, c)?,
                    c_attn: Conv1D::load(x.pp("c_attn"), e, 2 * c)?,
                    c_proj: Conv1D::load(x.pp("c_proj"), c, e)?,
                    n_head: cfg.n_head,
                    head_dim: cfg.cross_attention_head_dim(),
                },
                ln_2: layer_norm(b.pp("ln_2"), e, eps)?,
                mlp: Mlp {
                    c_fc: Conv1D::load(b.pp("mlp").pp("c_fc"), e, cfg.n_inner)?,
                    c_proj: Conv1D::load(b.pp("mlp").pp("c_proj"), cfg.n_inner, e)?,
                },
            });
        }
        let lm_head = vb.get((cfg.vocab_size, e), "lm_head.weight")?;
        Ok(Self {
            wte: t.get((cfg.vocab_size, e), "wte.weight")?,
            wpe: t.get((cfg.n_positions, e), "wpe.weight")?,
            blocks,
            ln_f: layer_norm(t.pp("ln_f"), e, eps)?,
            frozen_head: if lm_head.track_op() {
                None
            } else {
                Some(FrozenHead::RowMajor(lm_head.t()?.contiguous()?))
            },
            lm_head,
            cfg: cfg.clone(),
        })
    }

    /// The decoder's sizes.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// Packs every frozen linear layer and the LM head for decoding on the CPU, in `ty`
    /// (see [`PackedLinear`]): the decoder can then only decode, not train. Does nothing on
    /// other devices, nor for f32 on a CPU without AVX-512 (see
    /// [`packed_linear::simd_available`]); layers already packed stay as they are.
    pub fn pack_for_decoding(&mut self, ty: WeightType) -> candle_core::Result<()> {
        let f32_without_simd = ty == WeightType::F32 && !packed_linear::simd_available();
        if !self.wte.device().is_cpu() || f32_without_simd {
            return Ok(());
        }
        for block in &mut self.blocks {
            for layer in [
                &mut block.attn.c_attn,
                &mut block.attn.c_proj,
                &mut block.crossattention.q_attn,
                &mut block.crossattention.c_attn,
                &mut block.crossattention.c_proj,
                &mut block.mlp.c_fc,
                &mut block.mlp.c_proj,
            ] {
                layer.pack(ty)?;
            }
        }
        if let Some(FrozenHead::RowMajor(head_t)) = &self.frozen_head {
            let packed = PackedLinear::pack(head_t, None, ty)?;
            self.frozen_head = Some(FrozenHead::Packed(Arc::new(packed)));
        }
        Ok(())
    }

    /// Starts a sequence for one image from its `encoder_hidden_states` `[S, n_embd]`:
    /// computes every layer's cross-attention keys and values once.
    pub fn start(&self, encoder_hidden_states: &Tensor) -> candle_core::Result<Sequence> {
        let states = encoder_hidden_states.unsqueeze(0)?;
        let cross_kv = self
            .blocks
            .iter()
            .map(|block| block.crossattention.keys_values(&states))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Sequence {
            rows: 1,
            past_len: 0,
            self_kv: vec![None; self.blocks.len()],
            pending_order: None,
            cross_kv,
        })
    }

    /// Token plus position embeddings of `n` rows, then every block.
    fn run_blocks(
        &self,
        ids: &Tensor,
        pos: &Tensor,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        let h = (self.wte.index_select(ids, 0)? + self.wpe.index_select(pos, 0)?)?;
        let mut h = pass.dropout(h)?;
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
        let device = self.wte.device();
        let n: usize = seqs.iter().map(|s| s.rows * t).sum();
        if input_ids.len() != n {
            candle_core::bail!(
                "forward: {} ids for {} rows × {t} tokens",
                input_ids.len(),
                n
            );
        }
        let mut positions = Vec::with_capacity(n);
        for s in seqs.iter() {
            if s.past_len + t > self.cfg.n_positions {
                candle_core::bail!(
                    "sequence of {} tokens exceeds the model's {} positions",
                    s.past_len + t,
                    self.cfg.n_positions
                );
            }
            for _ in 0..s.rows {
                positions.extend((s.past_len..s.past_len + t).map(|p| p as u32));
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

    /// The training forward pass (GPT-2 in training mode): `input_ids` `[B, T]` (u32) from
    /// position 0, each row attending to its own `encoder_hidden_states` `[B, S, n_embd]`;
    /// returns the last block's hidden states `[B·T, n_embd]` (before `ln_f`). Padding on the
    /// right needs no mask: the causal mask keeps it from earlier positions.
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
            .map(|block| block.crossattention.keys_values(encoder_hidden_states))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let device = self.wte.device();
        let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
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

    /// `ln_f` then the LM head: hidden states `[N, n_embd]` → logits `[N, vocab]`. `training`
    /// selects the differentiable layer norm.
    pub fn logits(&self, hidden: &Tensor, training: bool) -> candle_core::Result<Tensor> {
        let h = if training {
            differentiable_layer_norm(&self.ln_f, hidden)?
        } else {
            self.ln_f.inner.forward(hidden)?
        };
        match &self.frozen_head {
            Some(FrozenHead::RowMajor(head_t)) if !training => h.matmul(head_t),
            Some(FrozenHead::Packed(head)) if !training => head.forward(&h),
            _ => frozen_matmul(&h, &self.lm_head.t()?),
        }
    }
}

impl Block {
    /// `h` `[N, n_embd]`: self-attention, cross-attention, MLP, each pre-LN with a residual.
    fn forward(&self, h: Tensor, layer: usize, pass: &mut Pass) -> candle_core::Result<Tensor> {
        let a = self
            .attn
            .forward(&pass.layer_norm(&self.ln_1, &h)?, layer, pass)?;
        let h = (h + pass.dropout(a)?)?;
        let x =
            self.crossattention
                .forward(&pass.layer_norm(&self.ln_cross_attn, &h)?, layer, pass)?;
        let h = (h + pass.dropout(x)?)?;
        let m = self.mlp.forward(&pass.layer_norm(&self.ln_2, &h)?)?;
        h + pass.dropout(m)?
    }
}

impl SelfAttention {
    fn forward(&self, xs: &Tensor, layer: usize, pass: &mut Pass) -> candle_core::Result<Tensor> {
        let qkv = self.c_attn.forward(xs)?;
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
        self.c_proj.forward(&o)
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
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let (k, v) = match past {
            Some((pk, pv)) => (
                kv_cache::append(&pk, &k, order)?,
                kv_cache::append(&pv, &v, order)?,
            ),
            None => (k, v),
        };
        let total = k.dim(2)?;
        let scores = q.matmul(&k.t()?)?;
        let sqrt_d = (self.head_dim as f64).sqrt();
        let probs = match dropout {
            // Training: the scale and the causal mask inside the fused softmax.
            Some(d) => d.apply(attention_softmax(&scores, 1.0 / sqrt_d, Some(total - t))?)?,
            None => {
                let scores = (scores / sqrt_d)?;
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
    /// `[g, n_head, S, head_dim_r]` of encoder states `[g, S, n_embd]`.
    fn keys_values(&self, states: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (g, s, e) = states.dims3()?;
        let c = self.n_head * self.head_dim;
        let kv = self.c_attn.forward(&states.reshape((g * s, e))?)?; // [g·S, 2c]
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
        let q = self.q_attn.forward(xs)?;
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
        self.c_proj.forward(&o)
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
        let qh = q.transpose(1, 2)?.contiguous()?;
        let scores = qh.matmul(k)?;
        let sqrt_d = (self.head_dim as f64).sqrt();
        let probs = match dropout {
            None => candle_nn::ops::softmax_last_dim(&(scores / sqrt_d)?)?,
            Some(d) => d.apply(attention_softmax(&scores, 1.0 / sqrt_d, None)?)?,
        };
        probs.matmul(v)?.transpose(1, 2)
    }
}

impl Mlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.c_proj.forward(&gelu_new(&self.c_fc.forward(xs)?)?)
    }
}

/// `log_softmax` over the vocabulary in f32, as the reference's beam search scores tokens.
pub fn log_softmax(logits: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)
}
