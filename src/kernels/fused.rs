//! Fused training operations with one-pass backward passes, on the CPU in f32: GPT-2's
//! activation `gelu_new`, LayerNorm and the attention softmax. candle either has no
//! backward for its fused versions (LayerNorm, `softmax_last_dim`) or builds the derivative from
//! about a dozen full-size tensor operations (`gelu`, the composed `softmax`); in training those
//! tensors were among the larger costs after the matrix products. Each operation here is one
//! multi-threaded pass forward and one backward. Other devices and dtypes fall back to candle's
//! composed operations.
//!
//! - `gelu_new(x) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, as candle's f32 `gelu` writes
//!   it but with the vectorised `tanh` of [`super::vector_math`] (used in decoding too); its
//!   derivative is `0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)` with `t` the same
//!   tanh.
//! - LayerNorm per row of `n`: `μ = Σx/n`, `σ² = Σ(x−μ)²/n` (biased, as PyTorch), `x̂ =
//!   (x−μ)/√(σ²+ε)`, `y = x̂·w + b`; with `g = dy·w` and `r = 1/√(σ²+ε)`: `dx = r·(g − mean(g) −
//!   x̂·mean(g·x̂))`, `dw = Σ_rows dy·x̂`, `db = Σ_rows dy`; sums in f64.
//! - The attention softmax per row, with the scale `s = 1/√d` and GPT-2's causal mask folded in:
//!   `y = exp(s·x − max s·x) / Σ exp(s·x − max s·x)` over the positions the row sees (the
//!   vectorised `exp`; 0 elsewhere), `dx = y·(dy − Σ dy·y)·s`.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

use super::vector_math;

/// The contiguous f32 values of a CPU operand of operation `op` (shared by the custom CPU
/// operations of this crate).
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expected f32 values");
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

/// The values and the incoming gradients of a backward operation `op`, checked to match in length.
fn values_and_gradients<'a>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    op: &str,
) -> Result<(&'a [f32], &'a [f32])> {
    let (v, g) = (contiguous_f32(s1, l1, op)?, contiguous_f32(s2, l2, op)?);
    if v.len() != g.len() {
        candle_core::bail!("{op} backward: {} values, {} gradients", v.len(), g.len());
    }
    Ok((v, g))
}

/// The length of the last dimension.
fn row_len(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

// ---- gelu_new ----

/// √(2/π) as candle's f32 `gelu` rounds it.
const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
const COEF: f32 = 0.044715;
/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// `gelu_new(x)`.
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(GeluNew)
    } else {
        x.gelu()
    }
}

#[inline(always)]
fn forward(v: f32) -> f32 {
    0.5 * v * (1.0 + vector_math::tanh(SQRT_TWO_OVER_PI * v * (1.0 + COEF * v * v)))
}

#[inline(always)]
fn derivative(v: f32) -> f32 {
    let t = vector_math::tanh(SQRT_TWO_OVER_PI * v * (1.0 + COEF * v * v));
    0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * COEF * v * v)
}

struct GeluNew;

impl CustomOp1 for GeluNew {
    fn name(&self) -> &'static str {
        "gelu-new"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "gelu_new")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| vector_math::map(x, o, forward));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &GeluNewGrad)?))
    }
}

/// `grad · gelu_new'(x)`.
struct GeluNewGrad;

impl CustomOp2 for GeluNewGrad {
    fn name(&self) -> &'static str {
        "gelu-new-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = values_and_gradients((s1, l1), (s2, l2), "gelu_new")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(o, (x, g))| vector_math::map2(x, g, o, |v, gv| gv * derivative(v)));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---- LayerNorm ----

/// `layer_norm(x)` over the last dimension with `weight` and `bias` (`[n]` each).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let cpu_f32 = [x, weight, bias]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if cpu_f32 {
        x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNorm { eps },
        )
    } else {
        composed(x, weight, bias, eps)
    }
}

fn composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let n = x.dim(D::Minus1)? as f64;
    let mean = (x.sum_keepdim(D::Minus1)? / n)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / n)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Mean and `1/√(σ²+ε)` of one row (f64 sums in 8 lanes, which the compiler vectorises).
fn row_stats(x: &[f32], eps: f64) -> (f64, f64) {
    fn lane_sum(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
        let mut lanes = [0f64; 8];
        let chunks = x.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
        for c in chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += f(v);
            }
        }
        lanes.iter().sum::<f64>() + tail
    }
    let n = x.len() as f64;
    let mean = lane_sum(x, |v| v as f64) / n;
    let var = lane_sum(x, |v| (v as f64 - mean).powi(2)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm of each row of `x` (`weight.len()` wide) into `out`, on the CPU's threads: the
/// forward pass of [`layer_norm`] on plain slices.
pub fn layer_norm_rows(x: &[f32], weight: &[f32], bias: &[f32], eps: f64, out: &mut [f32]) {
    let n = weight.len();
    assert!(n > 0 && bias.len() == n && x.len().is_multiple_of(n) && out.len() == x.len());
    out.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .for_each(|(y, x)| {
            let (mean, r) = row_stats(x, eps);
            for ((y, &v), (&wv, &bv)) in y.iter_mut().zip(x).zip(weight.iter().zip(bias)) {
                *y = (((v as f64 - mean) * r) as f32) * wv + bv;
            }
        });
}

struct LayerNorm {
    eps: f64,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            contiguous_f32(s1, l1, "layer_norm")?,
            contiguous_f32(s2, l2, "layer_norm")?,
            contiguous_f32(s3, l3, "layer_norm")?,
        );
        let n = w.len();
        if n == 0 || b.len() != n || x.len() % n != 0 {
            candle_core::bail!(
                "layer_norm: rows of {:?} do not match a weight of {n}",
                l1.dims()
            );
        }
        let mut out = vec![0f32; x.len()];
        layer_norm_rows(x, w, b, self.eps, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = weight.elem_count();
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let dy = grad.flatten_all()?.to_vec1::<f32>()?;
        let rows = xs.len() / n;
        let mut dx = vec![0f32; xs.len()];
        // Per-task partial sums of dw and db, added at the end.
        let rows_per_task = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
        let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(rows_per_task * n)
            .zip(xs.par_chunks(rows_per_task * n))
            .zip(dy.par_chunks(rows_per_task * n))
            .map(|((dx, x), dy)| {
                let (mut dw, mut db) = (vec![0f64; n], vec![0f64; n]);
                let mut xhat = vec![0f64; n];
                for ((dx, x), dy) in dx.chunks_mut(n).zip(x.chunks(n)).zip(dy.chunks(n)) {
                    let (mean, r) = row_stats(x, self.eps);
                    let (mut mean_g, mut mean_gx) = (0f64, 0f64);
                    for j in 0..n {
                        xhat[j] = (x[j] as f64 - mean) * r;
                        let g = dy[j] as f64 * w[j] as f64;
                        mean_g += g;
                        mean_gx += g * xhat[j];
                        dw[j] += dy[j] as f64 * xhat[j];
                        db[j] += dy[j] as f64;
                    }
                    mean_g /= n as f64;
                    mean_gx /= n as f64;
                    for j in 0..n {
                        let g = dy[j] as f64 * w[j] as f64;
                        dx[j] = (r * (g - mean_g - xhat[j] * mean_gx)) as f32;
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f64; n], vec![0f64; n]);
        for (pw, pb) in partials {
            for j in 0..n {
                dw[j] += pw[j];
                db[j] += pb[j];
            }
        }
        let device = x.device();
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(to_f32(dw), weight.shape(), device)?),
            Some(Tensor::from_vec(to_f32(db), weight.shape(), device)?),
        ))
    }
}

// ---- softmax ----

/// The attention softmax, differentiable: `softmax(scale·x + mask)` over the last dimension,
/// where with `causal_past = Some(p)` the mask hides, in row `i` of each `[t, p + t]` block of
/// scores, the positions after `p + i` (−∞, as GPT-2's causal mask). Values and gradients equal
/// those of `x * scale`, the mask added and softmax, composed; fused, training skips those two
/// full-size operations and their gradient copies.
pub fn attention_softmax(x: &Tensor, scale: f64, causal_past: Option<usize>) -> Result<Tensor> {
    // `x * scale` in f32, as candle's `x / √d` (an affine with `1 / √d`) computes it.
    let scale = scale as f32;
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(Softmax { scale, causal_past });
    }
    let x = x.affine(scale as f64, 0.0)?;
    let x = match causal_past {
        Some(past) => {
            let (t, total) = (x.dim(D::Minus2)?, x.dim(D::Minus1)?);
            if past + t != total {
                candle_core::bail!(
                    "causal softmax: {t} new positions after {past} for rows of {total}"
                );
            }
            x.broadcast_add(&causal_mask(t, past, x.device())?.to_dtype(x.dtype())?)?
        }
        None => x,
    };
    candle_nn::ops::softmax(&x, D::Minus1)
}

/// GPT-2's causal mask for `t` new positions after `past` cached ones: `[t, past + t]`, 0 where
/// row `i` may look (positions up to `past + i`) and −∞ after.
pub fn causal_mask(t: usize, past: usize, device: &candle_core::Device) -> Result<Tensor> {
    let total = past + t;
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
    Tensor::from_vec(mask, (t, total), device)
}

/// Rows per parallel task.
fn rows_per_task(len: usize, n: usize) -> usize {
    (len / n).div_ceil(rayon::current_num_threads() * 8).max(1)
}

struct Softmax {
    scale: f32,
    causal_past: Option<usize>,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "attention-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "softmax")?;
        let n = row_len(l);
        let dims = l.dims();
        let t = if dims.len() >= 2 {
            dims[dims.len() - 2]
        } else {
            1
        };
        if let Some(past) = self.causal_past {
            if past + t != n {
                candle_core::bail!(
                    "causal softmax: {t} new positions after {past} for rows of {n}"
                );
            }
        }
        if self.scale <= 0.0 {
            candle_core::bail!("attention softmax: scale {} is not positive", self.scale);
        }
        let mut out = vec![0f32; x.len()];
        let rows = rows_per_task(x.len(), n);
        out.par_chunks_mut(rows * n)
            .zip(x.par_chunks(rows * n))
            .enumerate()
            .for_each(|(task, (o, x))| {
                for (r, (o, x)) in o.chunks_mut(n).zip(x.chunks(n)).enumerate() {
                    // Positions this row sees: all, or the causal prefix.
                    let seen = match self.causal_past {
                        Some(past) => past + (task * rows + r) % t + 1,
                        None => n,
                    };
                    // The hidden positions keep their 0. A positive scale keeps the maximum
                    // where it was, so `scale·max x` is exactly the maximum of the scaled row.
                    let (o, x) = (&mut o[..seen], &x[..seen]);
                    let scale = self.scale;
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) * scale;
                    vector_math::map(x, o, |v| vector_math::exp(v * scale - max));
                    let sum: f32 = o.iter().sum();
                    for o in o.iter_mut() {
                        *o /= sum;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(
            &grad.contiguous()?,
            &SoftmaxGrad { scale: self.scale },
        )?))
    }
}

/// `y·(dy − Σ dy·y)·scale` per row, from the forward result `y` and the gradient `dy`.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "attention-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = values_and_gradients((s1, l1), (s2, l2), "softmax")?;
        let n = row_len(l1);
        let mut out = vec![0f32; y.len()];
        let chunk = rows_per_task(y.len(), n) * n;
        out.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .for_each(|(o, (y, g))| {
                for (o, (y, g)) in o.chunks_mut(n).zip(y.chunks(n).zip(g.chunks(n))) {
                    let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                    for ((o, &yv), &gv) in o.iter_mut().zip(y).zip(g) {
                        *o = yv * (gv - dot) * self.scale;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn inputs() -> Tensor {
        let v: Vec<f32> = (0..100_003)
            .map(|i| (i as f32 - 50_000.0) / 6_000.0)
            .collect();
        Tensor::from_vec(v, 100_003, &Device::Cpu).unwrap()
    }

    #[test]
    fn forward_is_gelu_new_within_1e6_relative() {
        let x = inputs();
        let ours = gelu_new(&x).unwrap().to_vec1::<f32>().unwrap();
        let c = (2.0 / std::f64::consts::PI).sqrt();
        for (&v, &got) in x.to_vec1::<f32>().unwrap().iter().zip(&ours) {
            let v = v as f64;
            let want = 0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh());
            assert!(
                // Where tanh nears −1, `1 + tanh` cancels: the formula itself (in any f32
                // implementation) is then exact only to a few units of 6e-8 times |x|/2.
                (got as f64 - want).abs() <= 1e-6 * want.abs() + 2e-7 * v.abs(),
                "gelu_new({v}): {got} vs {want}"
            );
        }
    }

    #[test]
    fn gradient_equals_the_derivative_in_f64() {
        let x = Var::from_tensor(&inputs()).unwrap();
        let w = inputs().sin().unwrap();
        let loss = (gelu_new(x.as_tensor()).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap();
        let got = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let xs = inputs().to_vec1::<f32>().unwrap();
        let ws = w.to_vec1::<f32>().unwrap();
        // d/dx of gelu_new from its definition, in f64, by central differences.
        let f = |v: f64| {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
        };
        for ((&v, &wv), &gv) in xs.iter().zip(&ws).zip(&got) {
            let h = 1e-5;
            let want = wv as f64 * (f(v as f64 + h) - f(v as f64 - h)) / (2.0 * h);
            assert!(
                (gv as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "x {v}: {gv} vs {want}"
            );
        }
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// The fused operation against the same formula composed from candle operations (whose
    /// backward is candle's autograd): values and all three gradients.
    #[test]
    fn fused_equals_the_composed_formula_forward_and_backward() {
        let dev = Device::Cpu;
        let (rows, n) = (37, 48);
        let x = Var::from_vec(data(rows * n, 1), (rows, n), &dev).unwrap();
        let w = Var::from_vec(data(n, 2), n, &dev).unwrap();
        let b = Var::from_vec(data(n, 3), n, &dev).unwrap();
        let probe = Tensor::from_vec(data(rows * n, 4), (rows, n), &dev).unwrap();
        let run = |fused: bool| {
            let y = if fused {
                layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap()
            } else {
                composed(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap()
            };
            let g = (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grads: Vec<Vec<f32>> = [x.as_tensor(), w.as_tensor(), b.as_tensor()]
                .iter()
                .map(|t| g.get(t).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), grads)
        };
        let (y1, g1) = run(true);
        let (y2, g2) = run(false);
        let close = |a: &[f32], b: &[f32], what: &str| {
            for (p, q) in a.iter().zip(b) {
                assert!(
                    (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                    "{what}: {p} vs {q}"
                );
            }
        };
        close(&y1, &y2, "y");
        for (what, (a, b)) in ["dx", "dw", "db"].iter().zip(g1.iter().zip(&g2)) {
            close(a, b, what);
        }
    }

    /// Values and gradients against candle's composed softmax and its autograd.
    #[test]
    fn fused_equals_the_composed_attention_softmax_forward_and_backward() {
        let dev = Device::Cpu;
        // 3 × 5 heads of 4 new positions after 13 cached ones: rows of 17 scores.
        let v: Vec<f32> = (0..3 * 5 * 4 * 17)
            .map(|i| ((i * 7919) % 113) as f32 / 9.0 - 6.0)
            .collect();
        let x = Var::from_vec(v, (3, 5, 4, 17), &dev).unwrap();
        let probe = x.as_tensor().cos().unwrap();
        let mask = causal_mask(4, 13, &dev).unwrap();
        // Scores divided by √d, as the attention layers write it, for d = 1, 64 and 3.
        for (sqrt_d, causal) in [(1.0, None), (8.0, None), (3f64.sqrt(), Some(13))] {
            let run = |fused: bool| {
                let y = if fused {
                    attention_softmax(x.as_tensor(), 1.0 / sqrt_d, causal).unwrap()
                } else {
                    let s = (x.as_tensor() / sqrt_d).unwrap();
                    let s = match causal {
                        Some(_) => s.broadcast_add(&mask).unwrap(),
                        None => s,
                    };
                    candle_nn::ops::softmax(&s, D::Minus1).unwrap()
                };
                let g = (&y * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let dx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
                (
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    dx.to_vec1::<f32>().unwrap(),
                )
            };
            let ((y1, g1), (y2, g2)) = (run(true), run(false));
            for (a, b) in y1.iter().zip(&y2).chain(g1.iter().zip(&g2)) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "√d {sqrt_d}, {causal:?}: {a} vs {b}"
                );
            }
            if causal.is_some() {
                // Hidden positions are exactly 0, and get no gradient.
                assert_eq!(y1[17 - 3..17], [0.0; 3]);
                assert_eq!(g1[17 - 3..17], [0.0; 3]);
            }
        }
    }

    /// Other devices and dtypes take the composed path (the `cuda` build's): checked here with f64
    /// on the CPU against the fused f32 operation.
    #[test]
    fn the_composed_fallback_equals_the_fused_attention_softmax() {
        let dev = Device::Cpu;
        let v: Vec<f32> = (0..2 * 3 * 17)
            .map(|i| ((i * 31) % 23) as f32 / 4.0 - 3.0)
            .collect();
        let x = Tensor::from_vec(v, (2, 3, 17), &dev).unwrap();
        for causal in [None, Some(14)] {
            let fused = attention_softmax(&x, 0.125, causal).unwrap();
            let composed = attention_softmax(&x.to_dtype(DType::F64).unwrap(), 0.125, causal)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let (a, b) = (
                fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                composed.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for (a, b) in a.iter().zip(&b) {
                assert!((a - b).abs() <= 1e-6, "{causal:?}: {a} vs {b}");
            }
        }
        assert!(attention_softmax(&x.to_dtype(DType::F64).unwrap(), 0.125, Some(3)).is_err());
        assert!(attention_softmax(&x, 0.125, Some(3)).is_err());
    }
}
