//! Softmax over the last dimension for training, as one fused operation with a fused backward
//! pass: `y = exp(x − max x) / Σ exp(x − max x)` per row, and `dx = y·(dy − Σ dy·y)`. candle's
//! fused `softmax_last_dim` has no backward, and its composed `softmax` keeps five full-size
//! tensors per call plus those of their derivatives. Other devices and dtypes use the composed
//! operation.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// The contiguous f32 values of a CPU operand and its row length.
fn rows<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], usize)> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("softmax: expected f32 values");
    };
    let n = l.dims().last().copied().unwrap_or(1).max(1);
    match l.contiguous_offsets() {
        Some((start, end)) => Ok((&v[start..end], n)),
        None => candle_core::bail!("softmax: expected a contiguous tensor"),
    }
}

/// Rows per parallel task.
fn rows_per_task(len: usize, n: usize) -> usize {
    (len / n).div_ceil(rayon::current_num_threads() * 8).max(1)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, n) = rows(s, l)?;
        let mut out = vec![0f32; x.len()];
        let chunk = rows_per_task(x.len(), n) * n;
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_mut(n).zip(x.chunks(n)) {
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (o, &v) in o.iter_mut().zip(x) {
                        *o = (v - max).exp();
                        sum += *o;
                    }
                    for o in o.iter_mut() {
                        *o /= sum;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// `y·(dy − Σ dy·y)` per row, from the forward result `y` and the gradient `dy`.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-last-dim-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((y, n), (g, _)) = (rows(s1, l1)?, rows(s2, l2)?);
        if y.len() != g.len() {
            candle_core::bail!(
                "softmax backward: {} values, {} gradients",
                y.len(),
                g.len()
            );
        }
        let mut out = vec![0f32; y.len()];
        let chunk = rows_per_task(y.len(), n) * n;
        out.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .for_each(|(o, (y, g))| {
                for (o, (y, g)) in o.chunks_mut(n).zip(y.chunks(n).zip(g.chunks(n))) {
                    let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                    for ((o, &yv), &gv) in o.iter_mut().zip(y).zip(g) {
                        *o = yv * (gv - dot);
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

    /// Values and gradients against candle's composed softmax and its autograd.
    #[test]
    fn fused_equals_the_composed_softmax_forward_and_backward() {
        let dev = Device::Cpu;
        let v: Vec<f32> = (0..3 * 5 * 17)
            .map(|i| ((i * 7919) % 113) as f32 / 9.0 - 6.0)
            .collect();
        let x = Var::from_vec(v, (3, 5, 17), &dev).unwrap();
        let probe = x.as_tensor().cos().unwrap();
        let run = |fused: bool| {
            let y = if fused {
                softmax_last_dim(x.as_tensor()).unwrap()
            } else {
                candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap()
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
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
