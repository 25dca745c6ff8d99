//! OpenAI CLIP's `ModifiedResNet` image tower (RN50 … RN50x64): a three-convolution stem with an
//! average pool, four stages of anti-aliased `Bottleneck` blocks (an `AvgPool2d(stride)` before
//! the last 1×1 convolution and in the downsampling branch), and the `AttentionPool2d` head
//! (the mean token prepended, a learned positional embedding, one query).
//!
//! BatchNorm runs in eval mode; each bias-free convolution is folded with the BatchNorm after it
//! at load time (`w·γ/√(var+ε)`, `β − mean·γ/√(var+ε)`, ε = 1e-5), which computes the same
//! function with one pass less. In f32, the 3×3 stride-1 convolutions (55% of RN50x64's
//! products) run by Winograd's F(2×2, 3×3) ([`crate::kernels::winograd`]: 2.25× fewer products,
//! the same function up to rounding), the others as one GEMM per image over an im2col matrix in
//! the weight's own layout (1×1 convolutions directly on the NCHW input).

use candle_core::Tensor;

use super::clip_transformer::{attention, TowerLinear};
use super::clip_weights::Weights;
use crate::error::Result;
use crate::kernels::bf16_gemm::Level;
use crate::kernels::conv_bf16::{runs_directly, Act, Activation, ConvWeights, InputParts, Nhwc};
use crate::kernels::winograd::Winograd3x3;
use crate::precision::ConvKernel;

const BN_EPS: f64 = 1e-5;

/// A bias-free convolution followed by BatchNorm, folded into one convolution with a bias:
/// f32 tensors for candle's NCHW GEMMs, f32 filters transformed for Winograd's F(2×2, 3×3) on
/// NCHW, or packed for the bf16 blocks on NHWC activations.
#[derive(Debug, Clone)]
enum ConvBn {
    Nchw {
        weight: Tensor,
        bias: Tensor,
        padding: usize,
        stride: usize,
    },
    /// A 3×3 stride-1 convolution in f32 by Winograd's F(2×2, 3×3), the bias included.
    Winograd(Box<Winograd3x3>),
    Blocks {
        weights: Box<ConvWeights>,
        c_in: usize,
        k: usize,
        stride: usize,
    },
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn load(
        wts: &Weights,
        conv: &str,
        bn: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        kernel: ConvKernel,
    ) -> Result<Self> {
        let w_name = format!("{conv}.weight");
        let w_shape = [cout, cin, k, k];
        let gamma = wts.get(&format!("{bn}.weight"), &[cout])?;
        let beta = wts.get(&format!("{bn}.bias"), &[cout])?;
        let mean = wts.get(&format!("{bn}.running_mean"), &[cout])?;
        let var = wts.get(&format!("{bn}.running_var"), &[cout])?;
        let scale = gamma.div(&(var + BN_EPS)?.sqrt()?)?;
        let bias = (beta - mean.mul(&scale)?)?;
        Ok(match kernel {
            // The fold happens in the filter transform, on the values as mapped.
            ConvKernel::F32 if k == 3 && stride == 1 => Self::Winograd(Box::new(Winograd3x3::new(
                &wts.values(&w_name, &w_shape)?,
                &scale.to_vec1::<f32>()?,
                &bias.to_vec1::<f32>()?,
                cout,
                cin,
            ))),
            ConvKernel::F32 => Self::Nchw {
                weight: wts
                    .get(&w_name, &w_shape)?
                    .broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?
                    .contiguous()?,
                bias: bias.reshape((1, cout, 1, 1))?,
                padding: k / 2,
                stride,
            },
            ConvKernel::Blocks(_, split) => {
                // The same fold on the values (read from the mapped file where it can be),
                // without a tensor of the weight.
                let scale = scale.to_vec1::<f32>()?;
                let mut wv = wts.values(&w_name, &w_shape)?.into_owned();
                for (row, s) in wv.chunks_mut(cin * k * k).zip(&scale) {
                    row.iter_mut().for_each(|v| *v *= s);
                }
                let bv = bias.to_vec1::<f32>()?;
                let weights = Box::new(if runs_directly(k, stride) {
                    ConvWeights::new(&wv, &bv, cout, cin, k, split)
                } else {
                    ConvWeights::new(&wv, &bv, cout, cin * k * k, 1, split)
                });
                Self::Blocks {
                    weights,
                    c_in: cin,
                    k,
                    stride,
                }
            }
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Nchw {
                weight,
                bias,
                padding,
                stride,
            } => conv2d_gemm(x, weight, *padding, *stride)?.broadcast_add(bias),
            Self::Winograd(conv) => {
                let (b, c, h, w) = x.dims4()?;
                if c != conv.in_channels() {
                    candle_core::bail!(
                        "conv: input has {c} channels, the weight expects {}",
                        conv.in_channels()
                    );
                }
                let images = (0..b)
                    .map(|i| {
                        let pixels = x.get(i)?.flatten_all()?.to_vec1::<f32>()?;
                        let y = conv.forward(&pixels, h, w);
                        Tensor::from_vec(y, (1, conv.out_channels(), h, w), x.device())
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&images, 0)
            }
            Self::Blocks { .. } => {
                candle_core::bail!("a bf16 convolution runs on NHWC activations")
            }
        }
    }

    /// The bf16 parts of the f32 activation `x` (unpadded or padded) as this convolution
    /// reads them: bordered for a 3 × 3 convolution, as im2col patches for other shapes.
    fn parts_of(&self, x: &Nhwc) -> InputParts {
        let Self::Blocks {
            weights,
            c_in,
            k,
            stride,
        } = self
        else {
            unreachable!("parts_of is only called on a tower loaded for the bf16 blocks")
        };
        if runs_directly(*k, *stride) {
            if x.pad == k / 2 {
                weights.input_parts(x)
            } else {
                weights.input_parts(&x.with_pad(k / 2))
            }
        } else {
            weights.input_parts(&x.im2col(*c_in, *k, *stride, k / 2))
        }
    }

    /// `act(conv(x) + bias [+ residual])` of parts from [`Self::parts_of`] (or a previous
    /// convolution), written with a border of `out_pad`, as f32 or as the next one's parts.
    fn run(
        &self,
        level: Level,
        parts: &InputParts,
        relu: bool,
        residual: Option<&Nhwc>,
        out_pad: usize,
        out_parts: bool,
    ) -> Activation {
        let Self::Blocks { weights, .. } = self else {
            unreachable!("run is only called on a tower loaded for the bf16 blocks")
        };
        let act = if relu { Act::Relu } else { Act::Identity };
        weights.forward(level, parts, act, residual, out_pad, out_parts)
    }
}

/// A convolution as one GEMM per image: `weight [co, ci·k·k] × im2col(x) [ci·k·k, oh·ow]`, with
/// the patch matrix laid out in the weight's own `(ci, kh, kw)` order (no weight reshuffle), and
/// 1×1 stride-1 convolutions as a plain matrix product over the NCHW input (no copy).
fn conv2d_gemm(
    x: &Tensor,
    weight: &Tensor,
    pad: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    use rayon::prelude::*;
    let (b, ci, h, w) = x.dims4()?;
    let (co, wci, k, _) = weight.dims4()?;
    if wci != ci {
        candle_core::bail!("conv: input has {ci} channels, the weight expects {wci}");
    }
    let w2 = weight.reshape((co, ci * k * k))?;
    if k == 1 && stride == 1 && pad == 0 {
        let y = w2.broadcast_matmul(&x.reshape((b, ci, h * w))?)?;
        return y.reshape((b, co, h, w));
    }
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (w + 2 * pad - k) / stride + 1;
    let n = oh * ow;
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let rows = ci * k * k;
    let mut col = vec![0f32; b * rows * n];
    col.par_chunks_mut(n).enumerate().for_each(|(r, out)| {
        let bi = r / rows;
        let rr = r % rows;
        let (c, kh, kw) = (rr / (k * k), (rr / k) % k, rr % k);
        let plane = &xs[(bi * ci + c) * h * w..(bi * ci + c + 1) * h * w];
        for oy in 0..oh {
            let iy = (oy * stride + kh) as isize - pad as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let src = &plane[iy as usize * w..(iy as usize + 1) * w];
            let dst = &mut out[oy * ow..(oy + 1) * ow];
            if stride == 1 {
                // ix = ox + kw - pad: a shifted copy of the input row.
                let shift = kw as isize - pad as isize;
                let lo = (-shift).max(0) as usize;
                let hi = ((w as isize - shift).min(ow as isize)).max(0) as usize;
                if lo < hi {
                    let s0 = (lo as isize + shift) as usize;
                    dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                }
            } else {
                for (ox, d) in dst.iter_mut().enumerate() {
                    let ix = (ox * stride + kw) as isize - pad as isize;
                    if ix >= 0 && ix < w as isize {
                        *d = src[ix as usize];
                    }
                }
            }
        }
    });
    let col = Tensor::from_vec(col, (b, rows, n), x.device())?;
    w2.broadcast_matmul(&col)?.reshape((b, co, oh, ow))
}

/// `Bottleneck(inplanes, planes, stride)`, expansion 4.
#[derive(Debug, Clone)]
struct Bottleneck {
    c1: ConvBn,
    c2: ConvBn,
    c3: ConvBn,
    stride: usize,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn load(
        wts: &Weights,
        p: &str,
        inplanes: usize,
        planes: usize,
        stride: usize,
        kernel: ConvKernel,
    ) -> Result<Self> {
        let out = planes * 4;
        let downsample = if stride > 1 || inplanes != out {
            Some(ConvBn::load(
                wts,
                &format!("{p}.downsample.0"),
                &format!("{p}.downsample.1"),
                inplanes,
                out,
                1,
                1,
                kernel,
            )?)
        } else {
            None
        };
        Ok(Self {
            c1: ConvBn::load(
                wts,
                &format!("{p}.conv1"),
                &format!("{p}.bn1"),
                inplanes,
                planes,
                1,
                1,
                kernel,
            )?,
            c2: ConvBn::load(
                wts,
                &format!("{p}.conv2"),
                &format!("{p}.bn2"),
                planes,
                planes,
                3,
                1,
                kernel,
            )?,
            c3: ConvBn::load(
                wts,
                &format!("{p}.conv3"),
                &format!("{p}.bn3"),
                planes,
                out,
                1,
                1,
                kernel,
            )?,
            stride,
            downsample,
        })
    }

    fn pool(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.stride > 1 {
            x.avg_pool2d(self.stride)
        } else {
            Ok(x.clone())
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let out = self.c1.forward(x)?.relu()?;
        let out = self.c2.forward(&out)?.relu()?;
        let out = self.c3.forward(&self.pool(&out)?)?;
        let identity = match &self.downsample {
            Some(d) => d.forward(&self.pool(x)?)?,
            None => x.clone(),
        };
        (out + identity)?.relu()
    }

    /// The block on an unpadded NHWC activation: `conv1` and `conv2` hand their results to
    /// the next convolution as bf16 parts, the residual is added in `conv3`'s epilogue.
    fn forward_nhwc(&self, level: Level, x: &Nhwc) -> Nhwc {
        let x_parts = self.c1.parts_of(x);
        let out = self
            .c1
            .run(level, &x_parts, true, None, 1, true)
            .into_parts();
        let out = match self.stride {
            1 => self.c2.run(level, &out, true, None, 0, true).into_parts(),
            s => {
                let out = self.c2.run(level, &out, true, None, 0, false).into_f32();
                self.c3.parts_of(&out.avg_pool(s, 0))
            }
        };
        let downsampled = match (&self.downsample, self.stride) {
            // A 1 × 1 convolution of the same input reads the same parts.
            (Some(d), 1) => Some(d.run(level, &x_parts, false, None, 0, false).into_f32()),
            (Some(d), s) => {
                let pooled = d.parts_of(&x.avg_pool(s, 0));
                Some(d.run(level, &pooled, false, None, 0, false).into_f32())
            }
            (None, _) => None,
        };
        drop(x_parts);
        let identity = downsampled.as_ref().unwrap_or(x);
        self.c3
            .run(level, &out, true, Some(identity), 0, false)
            .into_f32()
    }
}

/// `AttentionPool2d(spacial_dim, embed_dim, num_heads, output_dim)`.
#[derive(Debug, Clone)]
struct AttentionPool {
    positional_embedding: Tensor,
    q_proj: TowerLinear,
    k_proj: TowerLinear,
    v_proj: TowerLinear,
    c_proj: TowerLinear,
    heads: usize,
}

impl AttentionPool {
    /// `[B, HW, C]` tokens (the NCHW map flattened) → `[B, output_dim]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Prepend the mean token; add the positional embedding.
        let mean = x.mean_keepdim(1)?;
        let x = Tensor::cat(&[&mean, x], 1)?.broadcast_add(&self.positional_embedding)?;
        let q = self.q_proj.forward(&x.narrow(1, 0, 1)?)?;
        let k = self.k_proj.forward(&x)?;
        let v = self.v_proj.forward(&x)?;
        let a = attention(&q, &k, &v, self.heads, None)?;
        self.c_proj.forward(&a)?.squeeze(1)
    }
}

/// The sizes of a `ModifiedResNet`, as `build_model` infers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResNetDims {
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Width of the stem.
    pub width: usize,
    /// Width of the output embedding.
    pub output_dim: usize,
    /// Heads of the attention pool.
    pub heads: usize,
    /// Square input size.
    pub input_resolution: usize,
}

/// The image tower `visual.*` of an OpenAI ResNet CLIP.
#[derive(Debug, Clone)]
pub struct ModifiedResNet {
    stem: [ConvBn; 3],
    stages: Vec<Vec<Bottleneck>>,
    attnpool: AttentionPool,
    kernel: ConvKernel,
    width: usize,
}

impl ModifiedResNet {
    /// Loads the tower for `kernel` (f32 on NCHW, or the packed bf16 blocks).
    pub(crate) fn load(wts: &Weights, d: &ResNetDims, kernel: ConvKernel) -> Result<Self> {
        let w = d.width;
        let p = "visual";
        let stem = [
            ConvBn::load(
                wts,
                &format!("{p}.conv1"),
                &format!("{p}.bn1"),
                3,
                w / 2,
                3,
                2,
                kernel,
            )?,
            ConvBn::load(
                wts,
                &format!("{p}.conv2"),
                &format!("{p}.bn2"),
                w / 2,
                w / 2,
                3,
                1,
                kernel,
            )?,
            ConvBn::load(
                wts,
                &format!("{p}.conv3"),
                &format!("{p}.bn3"),
                w / 2,
                w,
                3,
                1,
                kernel,
            )?,
        ];
        let mut inplanes = w;
        let mut stages = Vec::new();
        for (s, &blocks) in d.layers.iter().enumerate() {
            let planes = w << s;
            let stride = if s == 0 { 1 } else { 2 };
            let mut stage = Vec::new();
            for b in 0..blocks {
                let name = format!("{p}.layer{}.{b}", s + 1);
                let st = if b == 0 { stride } else { 1 };
                stage.push(Bottleneck::load(wts, &name, inplanes, planes, st, kernel)?);
                inplanes = planes * 4;
            }
            stages.push(stage);
        }
        let embed = w * 32;
        let spatial = d.input_resolution / 32;
        let a = format!("{p}.attnpool");
        let attnpool = AttentionPool {
            positional_embedding: wts.get(
                &format!("{a}.positional_embedding"),
                &[spatial * spatial + 1, embed],
            )?,
            q_proj: TowerLinear::at(wts, &format!("{a}.q_proj"), embed, embed, kernel)?,
            k_proj: TowerLinear::at(wts, &format!("{a}.k_proj"), embed, embed, kernel)?,
            v_proj: TowerLinear::at(wts, &format!("{a}.v_proj"), embed, embed, kernel)?,
            c_proj: TowerLinear::at(wts, &format!("{a}.c_proj"), embed, d.output_dim, kernel)?,
            heads: d.heads,
        };
        Ok(Self {
            stem,
            stages,
            attnpool,
            kernel,
            width: w,
        })
    }

    /// `[B, 3, R, R]` (`clip._transform(R)` output) → image features `[B, output_dim]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let ConvKernel::Blocks(level, _) = self.kernel {
            return self.forward_nhwc(level, x);
        }
        // One image at a time through the convolutions, as on the bf16 blocks: an image is
        // already a GEMM of thousands of columns, and a batch's im2col buffers (gigabytes for
        // eight images at 448 px) cost more in page faults than the batch saves (BENCHMARKS.md,
        // "A second machine: AMD EPYC"). Each image's GEMMs are the same either way.
        let tokens = (0..x.dim(0)?)
            .map(|i| {
                let mut x = x.narrow(0, i, 1)?;
                for c in &self.stem {
                    x = c.forward(&x)?.relu()?;
                }
                x = x.avg_pool2d(2)?;
                for stage in &self.stages {
                    for b in stage {
                        x = b.forward(&x)?;
                    }
                }
                // NCHW → [1, HW, C].
                x.flatten_from(2)?.transpose(1, 2)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.attnpool.forward(&Tensor::cat(&tokens, 0)?)
    }

    /// The tower on NHWC activations through the bf16 blocks, one image at a time (an image
    /// is thousands of GEMM rows already).
    fn forward_nhwc(&self, level: Level, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let mut tokens = Vec::with_capacity(b);
        let embed = self.width * 32;
        for i in 0..b {
            let pixels = x.get(i)?.flatten_all()?.to_vec1::<f32>()?;
            let input = Nhwc::from_nchw(&pixels, c, h, w, 0);
            let [conv1, conv2, conv3] = &self.stem;
            let a = conv1
                .run(level, &conv1.parts_of(&input), true, None, 1, true)
                .into_parts();
            let a = conv2.run(level, &a, true, None, 1, true).into_parts();
            let a = conv3.run(level, &a, true, None, 0, false).into_f32();
            let mut a = a.avg_pool(2, 0);
            for stage in &self.stages {
                for block in stage {
                    a = block.forward_nhwc(level, &a);
                }
            }
            let hw = a.h * a.w;
            tokens.push(Tensor::from_vec(
                a.tokens(embed),
                (1, hw, embed),
                x.device(),
            )?);
        }
        self.attnpool.forward(&Tensor::cat(&tokens, 0)?)
    }
}
