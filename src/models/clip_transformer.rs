//! OpenAI CLIP's `Transformer` (a stack of `ResidualAttentionBlock`s), the body of the CLIP text
//! tower ([`super::clip_text`]): pre-LayerNorm blocks with a fused-qkv `nn.MultiheadAttention`
//! (`attn.in_proj_weight`, `attn.out_proj`) and a QuickGELU MLP (`mlp.c_fc`, `mlp.c_proj`, its
//! width read from `c_fc`), LayerNorm eps 1e-5. Also the [`attention`] and weight helpers the
//! ResNet's attention pool uses. (ViT image towers run on [`super::clip_vision`].)

use std::sync::Arc;

use candle_core::{Module, Tensor, D};
use candle_nn::{LayerNorm, Linear};
use rayon::prelude::*;

use super::clip_weights::Weights;
use crate::error::Result;
use crate::kernels::bf16_gemm::Level;
use crate::kernels::conv_bf16::{self, Act, ConvWeights};
use crate::kernels::{fused, packed_attention, vector_math};
use crate::precision::ConvKernel;

/// A frozen `nn.Linear` of the CLIP towers: candle's f32 layer, or packed for the bf16 blocks
/// (as a 1 × 1 convolution over the tokens).
#[derive(Debug, Clone)]
pub(crate) enum TowerLinear {
    F32(Linear),
    Blocks(Arc<ConvWeights>, Level),
}

impl TowerLinear {
    /// The layer of weight `weight` `[o, i]` and bias `bias` `[o]` for `kernel`: the bf16
    /// blocks are packed from the values as the file holds them (no tensor of the weight).
    pub(crate) fn load(
        wts: &Weights,
        (weight, bias): (&str, &str),
        i: usize,
        o: usize,
        kernel: ConvKernel,
    ) -> Result<Self> {
        Ok(match kernel {
            ConvKernel::F32 => Self::F32(Linear::new(
                wts.get(weight, &[o, i])?,
                Some(wts.get(bias, &[o])?),
            )),
            ConvKernel::Blocks(level, split) => {
                let w = wts.values(weight, &[o, i])?;
                let b = wts.values(bias, &[o])?;
                Self::Blocks(Arc::new(ConvWeights::new(&w, &b, o, i, 1, split)), level)
            }
        })
    }

    /// [`TowerLinear::load`] of `nn.Linear` `prefix` (`prefix.weight`, `prefix.bias`).
    pub(crate) fn at(
        wts: &Weights,
        prefix: &str,
        i: usize,
        o: usize,
        kernel: ConvKernel,
    ) -> Result<Self> {
        let (weight, bias) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        Self::load(wts, (&weight, &bias), i, o, kernel)
    }

    /// `x` `[…, in]` → `[…, out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::F32(l) => l.forward(x),
            Self::Blocks(w, _) => {
                let dims = x.dims().to_vec();
                let Some((&i, lead)) = dims.split_last() else {
                    candle_core::bail!("a linear layer's input has no dimension")
                };
                if i != w.in_features() {
                    candle_core::bail!(
                        "a linear layer of {} inputs was given {i}",
                        w.in_features()
                    );
                }
                let y = self.forward_rows(&x.flatten_all()?.to_vec1::<f32>()?, Act::Identity)?;
                let mut out = lead.to_vec();
                out.push(w.out_features());
                Tensor::from_vec(y, out, x.device())
            }
        }
    }

    /// `rows` (`n × in`, row-major, on the CPU) → `act` of each of the `n × out` results.
    pub(crate) fn forward_rows(&self, rows: &[f32], act: Act) -> candle_core::Result<Vec<f32>> {
        match self {
            Self::F32(l) => {
                let i = l.weight().dim(1)?;
                let x = Tensor::from_slice(rows, (rows.len() / i, i), &candle_core::Device::Cpu)?;
                let mut y = l.forward(&x)?.flatten_all()?.to_vec1()?;
                // One closure per activation, so that each vectorises.
                let chunks = y.par_chunks_mut(1 << 15);
                match act {
                    Act::Identity => {}
                    Act::Relu => {
                        chunks.for_each(|c| vector_math::map_in_place(c, |v| Act::Relu.apply(v)))
                    }
                    Act::QuickGelu => chunks
                        .for_each(|c| vector_math::map_in_place(c, |v| Act::QuickGelu.apply(v))),
                }
                Ok(y)
            }
            Self::Blocks(w, level) => Ok(w.forward_rows_act(*level, rows, act)),
        }
    }

    /// `next(act(self(rows)))` over rows on the CPU (a block's MLP); between two layers on the
    /// bf16 blocks the intermediate stays in bf16 parts.
    pub(crate) fn forward_rows_then(
        &self,
        rows: &[f32],
        act: Act,
        next: &TowerLinear,
    ) -> candle_core::Result<Vec<f32>> {
        match (self, next) {
            (Self::Blocks(w, level), Self::Blocks(n, _)) => {
                Ok(w.forward_rows_then(*level, rows, act, n))
            }
            _ => {
                let mid = self.forward_rows(rows, act)?;
                let out = next.forward_rows(&mid, Act::Identity)?;
                conv_bf16::recycle(mid);
                Ok(out)
            }
        }
    }
}

/// OpenAI's `LayerNorm` (eps 1e-5) from `<prefix>.weight` / `<prefix>.bias` of width `w`.
pub(crate) fn layer_norm(wts: &Weights, prefix: &str, w: usize) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        wts.get(&format!("{prefix}.weight"), &[w])?,
        wts.get(&format!("{prefix}.bias"), &[w])?,
        1e-5,
    ))
}

/// QuickGELU: `x * sigmoid(1.702 x)`.
fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

/// `x += y`, on the CPU's threads.
fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(1 << 15)
        .zip(y.par_chunks(1 << 15))
        .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(a, b)| *a += b));
}

/// The rows of `x` (`[tokens, width]`) at `ends`: `[ends, width]`.
fn last_rows(x: &[f32], ends: &[usize], width: usize) -> Vec<f32> {
    ends.iter()
        .flat_map(|&t| &x[t * width..(t + 1) * width])
        .copied()
        .collect()
}

/// A LayerNorm of each `width`-wide row of `x`, on the CPU (into a pooled buffer).
fn layer_norm_rows(ln: &LayerNorm, x: &[f32]) -> candle_core::Result<Vec<f32>> {
    let w = ln.weight().to_vec1::<f32>()?;
    let b = match ln.bias() {
        Some(b) => b.to_vec1::<f32>()?,
        None => vec![0.0; w.len()],
    };
    let mut out = conv_bf16::scratch(x.len());
    fused::layer_norm_rows(x, &w, &b, ln.eps(), &mut out);
    Ok(out)
}

/// Multi-head attention of `q` `[B, Lq, W]` over `k`, `v` `[B, L, W]` (already projected),
/// with an optional additive mask `[Lq, L]`; returns `[B, Lq, W]` before the output projection.
/// Queries are scaled by `1/sqrt(head_dim)` as `F.multi_head_attention_forward` does.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (b, lq, w) = q.dims3()?;
    let l = k.dim(1)?;
    let hd = w / heads;
    let split = |x: &Tensor, n: usize| -> candle_core::Result<Tensor> {
        x.reshape((b, n, heads, hd))?.transpose(1, 2)?.contiguous()
    };
    let q = (split(q, lq)? * (1.0 / (hd as f64).sqrt()))?;
    let k = split(k, l)?;
    let v = split(v, l)?;
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(m) = mask {
        scores = scores.broadcast_add(m)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, lq, w))
}

/// One `ResidualAttentionBlock`.
#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    in_proj: TowerLinear,
    out_proj: TowerLinear,
    ln_2: LayerNorm,
    c_fc: TowerLinear,
    c_proj: TowerLinear,
    heads: usize,
    width: usize,
}

impl Block {
    fn load(
        wts: &Weights,
        p: &str,
        width: usize,
        heads: usize,
        kernel: ConvKernel,
    ) -> Result<Self> {
        let mlp = wts.need_shape(&format!("{p}.mlp.c_fc.weight"))?[0];
        let p_attn = format!("{p}.attn");
        let in_proj = [
            format!("{p_attn}.in_proj_weight"),
            format!("{p_attn}.in_proj_bias"),
        ];
        Ok(Self {
            ln_1: layer_norm(wts, &format!("{p}.ln_1"), width)?,
            in_proj: TowerLinear::load(wts, (&in_proj[0], &in_proj[1]), width, 3 * width, kernel)?,
            out_proj: TowerLinear::at(wts, &format!("{p_attn}.out_proj"), width, width, kernel)?,
            ln_2: layer_norm(wts, &format!("{p}.ln_2"), width)?,
            c_fc: TowerLinear::at(wts, &format!("{p}.mlp.c_fc"), width, mlp, kernel)?,
            c_proj: TowerLinear::at(wts, &format!("{p}.mlp.c_proj"), mlp, width, kernel)?,
            heads,
            width,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let h = self.ln_1.forward(x)?;
        let qkv = self.in_proj.forward(&h)?;
        let w = self.width;
        let q = qkv.narrow(D::Minus1, 0, w)?;
        let k = qkv.narrow(D::Minus1, w, w)?;
        let v = qkv.narrow(D::Minus1, 2 * w, w)?;
        let a = attention(&q, &k, &v, self.heads, mask)?;
        let x = (x + self.out_proj.forward(&a)?)?;
        let h = self.ln_2.forward(&x)?;
        let h = self.c_proj.forward(&quick_gelu(&self.c_fc.forward(&h)?)?)?;
        x + h
    }

    /// [`Block::forward`] on the CPU over sequences packed into a prefix tree: `x` `[tokens,
    /// width]`, each token attending to its sequence up to itself (`parents`, as
    /// [`packed_attention::causal_self_attention`] takes them).
    fn forward_packed(&self, x: &mut [f32], parents: &[Option<usize>]) -> candle_core::Result<()> {
        let a = self.attend_packed(x, parents)?;
        self.finish_packed(x, &a)?;
        conv_bf16::recycle(a);
        Ok(())
    }

    /// [`Block::forward_packed`] of the tokens at `ends` only (`[ends, width]`): the other
    /// tokens' keys and values are computed, but not their projections and MLP.
    fn forward_packed_last(
        &self,
        x: &[f32],
        parents: &[Option<usize>],
        ends: &[usize],
    ) -> candle_core::Result<Vec<f32>> {
        let a = self.attend_packed(x, parents)?;
        let w = self.width;
        let (mut x_last, a_last) = (last_rows(x, ends, w), last_rows(&a, ends, w));
        conv_bf16::recycle(a);
        self.finish_packed(&mut x_last, &a_last)?;
        Ok(x_last)
    }

    /// The attention half before its output projection: `attn(ln_1(x))` `[tokens, width]`.
    fn attend_packed(&self, x: &[f32], parents: &[Option<usize>]) -> candle_core::Result<Vec<f32>> {
        // Each intermediate goes back to the pool once used (fresh memory costs page faults).
        let h = layer_norm_rows(&self.ln_1, x)?;
        let qkv = self.in_proj.forward_rows(&h, Act::Identity)?;
        conv_bf16::recycle(h);
        let mut a = conv_bf16::scratch(x.len());
        packed_attention::causal_self_attention(&qkv, parents, self.heads, self.width, &mut a);
        conv_bf16::recycle(qkv);
        Ok(a)
    }

    /// The rest, row by row: `x += out_proj(a)`, then `x += mlp(ln_2(x))`.
    fn finish_packed(&self, x: &mut [f32], a: &[f32]) -> candle_core::Result<()> {
        let o = self.out_proj.forward_rows(a, Act::Identity)?;
        add_in_place(x, &o);
        conv_bf16::recycle(o);
        let h = layer_norm_rows(&self.ln_2, x)?;
        let o = self
            .c_fc
            .forward_rows_then(&h, Act::QuickGelu, &self.c_proj)?;
        conv_bf16::recycle(h);
        add_in_place(x, &o);
        conv_bf16::recycle(o);
        Ok(())
    }
}

/// `Transformer(width, layers, heads)` at `<prefix>.resblocks.{i}`.
#[derive(Debug, Clone)]
pub struct ClipTransformer {
    blocks: Vec<Block>,
}

impl ClipTransformer {
    /// `kernel` chooses how the linear layers compute ([`TowerLinear`]).
    pub(crate) fn load(
        wts: &Weights,
        prefix: &str,
        width: usize,
        layers: usize,
        heads: usize,
        kernel: ConvKernel,
    ) -> Result<Self> {
        let blocks = (0..layers)
            .map(|i| {
                Block::load(
                    wts,
                    &format!("{prefix}.resblocks.{i}"),
                    width,
                    heads,
                    kernel,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self { blocks })
    }

    /// `x` `[B, L, width]` (batch first; OpenAI permutes to LND, which computes the same).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for b in &self.blocks {
            x = b.forward(&x, mask)?;
        }
        Ok(x)
    }

    /// The causal transformer on the CPU over sequences packed into a prefix tree, `x`
    /// `[tokens, width]` (overwritten): `parents[t]` is the token before `t` in its sequence
    /// (`None` where `t` begins one; a token shared by sequences that begin alike is computed
    /// once), and each token attends to its sequence up to itself; the linear layers run over
    /// all tokens at once. Returns the outputs at `ends` (each sequence's last token), `[ends,
    /// width]` (what CLIP's text tower reads): the last layer computes no others.
    pub(crate) fn forward_packed_last(
        &self,
        x: &mut [f32],
        parents: &[Option<usize>],
        ends: &[usize],
    ) -> candle_core::Result<Vec<f32>> {
        let Some((last, rest)) = self.blocks.split_last() else {
            return Ok(last_rows(x, ends, x.len() / parents.len().max(1)));
        };
        for b in rest {
            b.forward_packed(x, parents)?;
        }
        last.forward_packed_last(x, parents, ends)
    }
}
