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

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{LayerNorm, Module, VarBuilder};

use crate::config::DecoderConfig;

/// GPT-2's `Conv1D`: `y = x · W + b` with `W` stored `[in, out]`.
#[derive(Debug, Clone)]
pub struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    pub fn load(vb: VarBuilder, d_in: usize, d_out: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get((d_in, d_out), "weight")?,
            bias: vb.get(d_out, "bias")?,
        })
    }
}

impl Module for Conv1D {
    /// `xs` is `[N, in]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<LayerNorm> {
    candle_nn::layer_norm(size, eps, vb)
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
    ln_1: LayerNorm,
    attn: SelfAttention,
    ln_cross_attn: LayerNorm,
    crossattention: CrossAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

/// The decoder: `decoder.transformer.*` plus `decoder.lm_head`.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Tensor,
    cfg: DecoderConfig,
}

/// One image's decoding state: its rows (beams), self-attention cache and cross-attention K/V.
#[derive(Debug, Clone)]
pub struct Sequence {
    rows: usize,
    past_len: usize,
    /// Per layer: keys and values `[rows, n_head, past_len, head_dim]`.
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    /// Per layer: keys `[n_head, head_dim_r, S]` (already transposed) and values `[n_head, S, head_dim_r]`.
    cross_kv: Vec<(Tensor, Tensor)>,
}

impl Sequence {
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of tokens already in the cache.
    pub fn past_len(&self) -> usize {
        self.past_len
    }
    /// Reorders (and possibly multiplies) the rows: new row `i` continues old row `indices[i]`.
    pub fn reorder(&mut self, indices: &[u32]) -> candle_core::Result<()> {
        let device = self
            .cross_kv
            .first()
            .map(|(k, _)| k.device().clone())
            .unwrap_or(Device::Cpu);
        let idx = Tensor::new(indices, &device)?;
        for kv in self.self_kv.iter_mut().flatten() {
            kv.0 = kv.0.index_select(&idx, 0)?;
            kv.1 = kv.1.index_select(&idx, 0)?;
        }
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
        Ok(Self {
            wte: t.get((cfg.vocab_size, e), "wte.weight")?,
            wpe: t.get((cfg.n_positions, e), "wpe.weight")?,
            blocks,
            ln_f: layer_norm(t.pp("ln_f"), e, eps)?,
            lm_head: vb.get((cfg.vocab_size, e), "lm_head.weight")?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// Starts a sequence for one image from its `encoder_hidden_states` `[S, n_embd]`:
    /// computes every layer's cross-attention keys and values once.
    pub fn start(&self, encoder_hidden_states: &Tensor) -> candle_core::Result<Sequence> {
        let (s, _) = encoder_hidden_states.dims2()?;
        let mut cross_kv = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let x = &block.crossattention;
            let c = x.n_head * x.head_dim;
            let kv = x.c_attn.forward(encoder_hidden_states)?; // [S, 2c]
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((s, x.n_head, x.head_dim))?.transpose(0, 1)
            };
            let k = split(kv.narrow(1, 0, c)?)?.transpose(1, 2)?.contiguous()?;
            let v = split(kv.narrow(1, c, c)?)?.contiguous()?;
            cross_kv.push((k, v));
        }
        Ok(Sequence {
            rows: 1,
            past_len: 0,
            self_kv: vec![None; self.blocks.len()],
            cross_kv,
        })
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
            candle_core::bail!("forward: {} ids for {} rows × {t} tokens", input_ids.len(), n);
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
        let mut h = (self.wte.index_select(&ids, 0)? + self.wpe.index_select(&pos, 0)?)?;
        for (l, block) in self.blocks.iter().enumerate() {
            let a = block.attn.forward(&block.ln_1.forward(&h)?, t, l, seqs)?;
            h = (h + a)?;
            let x = block
                .crossattention
                .forward(&block.ln_cross_attn.forward(&h)?, t, l, seqs)?;
            h = (h + x)?;
            let m = block.mlp.forward(&block.ln_2.forward(&h)?)?;
            h = (h + m)?;
        }
        let mut last = Vec::new();
        let mut offset = 0;
        for s in seqs.iter_mut() {
            for r in 0..s.rows {
                last.push((offset + r * t + t - 1) as u32);
            }
            offset += s.rows * t;
            s.past_len += t;
        }
        let h = h.index_select(&Tensor::new(last.as_slice(), device)?, 0)?;
        let h = self.ln_f.forward(&h)?;
        h.matmul(&self.lm_head.t()?)
    }
}

impl SelfAttention {
    fn forward(
        &self,
        xs: &Tensor,
        t: usize,
        layer: usize,
        seqs: &mut [&mut Sequence],
    ) -> candle_core::Result<Tensor> {
        let e = self.n_head * self.head_dim;
        let qkv = self.c_attn.forward(xs)?;
        let mut outs = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for s in seqs.iter_mut() {
            let n = s.rows * t;
            let g = qkv.narrow(0, offset, n)?;
            offset += n;
            let heads = |i: usize| -> candle_core::Result<Tensor> {
                g.narrow(1, i * e, e)?
                    .reshape((s.rows, t, self.n_head, self.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
            let (k, v) = match s.self_kv[layer].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            let total = k.dim(2)?;
            let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
            let scores = if t > 1 {
                let past = total - t;
                let mask: Vec<f32> = (0..t)
                    .flat_map(|i| {
                        (0..total).map(move |j| {
                            if j <= past + i {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (t, total), xs.device())?;
                scores.broadcast_add(&mask)?
            } else {
                scores
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let o = probs.matmul(&v)?.transpose(1, 2)?.reshape((n, e))?;
            outs.push(o);
            s.self_kv[layer] = Some((k, v));
        }
        self.c_proj.forward(&Tensor::cat(&outs, 0)?)
    }
}

impl CrossAttention {
    fn forward(
        &self,
        xs: &Tensor,
        t: usize,
        layer: usize,
        seqs: &mut [&mut Sequence],
    ) -> candle_core::Result<Tensor> {
        let c = self.n_head * self.head_dim;
        let q = self.q_attn.forward(xs)?;
        let mut outs = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for s in seqs.iter() {
            let n = s.rows * t;
            let (k, v) = &s.cross_kv[layer];
            let qh = q
                .narrow(0, offset, n)?
                .reshape((n, self.n_head, self.head_dim))?
                .transpose(0, 1)?
                .contiguous()?;
            offset += n;
            let scores = (qh.matmul(k)? / (self.head_dim as f64).sqrt())?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            outs.push(probs.matmul(v)?.transpose(0, 1)?.reshape((n, c))?);
        }
        self.c_proj.forward(&Tensor::cat(&outs, 0)?)
    }
}

impl Mlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.c_proj.forward(&self.c_fc.forward(xs)?.gelu()?)
    }
}

/// `log_softmax` over the vocabulary in f32, as the reference's beam search scores tokens.
pub fn log_softmax(logits: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)
}
