//! LayerNorm over the last dimension for training, as one fused operation with a fused backward
//! pass (candle's fused `LayerNorm` has no backward; composing it from tensor operations costs
//! about thirty full-size tensors per call between the forward and backward passes).
//!
//! Forward, per row of `n` values: `μ = Σx/n`, `σ² = Σ(x−μ)²/n` (biased, as PyTorch), `x̂ =
//! (x−μ)/√(σ²+ε)`, `y = x̂·w + b`. Backward, with `g = dy·w` and `r = 1/√(σ²+ε)`:
//! `dx = r·(g − mean(g) − x̂·mean(g·x̂))`, `dw = Σ_rows dy·x̂`, `db = Σ_rows dy`. Sums are taken in
//! f64. Other devices and dtypes compose the same formula from candle operations.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

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

/// The contiguous f32 values of a CPU operand.
fn values<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("layer_norm: expected f32 values");
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("layer_norm: expected a contiguous tensor"),
    }
}

/// Mean and `1/√(σ²+ε)` of one row.
fn row_stats(x: &[f32], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
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
        let (x, w, b) = (values(s1, l1)?, values(s2, l2)?, values(s3, l3)?);
        let n = w.len();
        if n == 0 || b.len() != n || x.len() % n != 0 {
            candle_core::bail!(
                "layer_norm: rows of {:?} do not match a weight of {n}",
                l1.dims()
            );
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(y, x)| {
                let (mean, r) = row_stats(x, self.eps);
                for ((y, &v), (&wv, &bv)) in y.iter_mut().zip(x).zip(w.iter().zip(b)) {
                    *y = (((v as f64 - mean) * r) as f32) * wv + bv;
                }
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

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
}
