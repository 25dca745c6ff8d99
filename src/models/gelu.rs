//! GPT-2's activation `gelu_new`, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, as one fused
//! operation whose backward pass is one fused pass too.
//!
//! candle's `gelu` computes the same forward values, but its backward builds the derivative from
//! about a dozen tensor operations (two `powf`, a second `tanh`, each a full-size tensor): in
//! training that is one of the larger costs after the matrix products. Here the derivative,
//! `0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)` with `t` the forward's tanh, is
//! computed element by element in one multi-threaded pass. The forward pass evaluates exactly
//! candle's f32 expression, so decoding is unchanged to the bit. Other devices and dtypes use
//! candle's operation.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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

#[inline]
fn forward(v: f32) -> f32 {
    0.5 * v * (1.0 + f32::tanh(SQRT_TWO_OVER_PI * v * (1.0 + COEF * v * v)))
}

#[inline]
fn derivative(v: f32) -> f32 {
    let t = f32::tanh(SQRT_TWO_OVER_PI * v * (1.0 + COEF * v * v));
    0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * COEF * v * v)
}

/// The contiguous f32 values of a CPU operand.
fn values<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("gelu_new: expected f32 values");
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("gelu_new: expected a contiguous tensor"),
    }
}

struct GeluNew;

impl CustomOp1 for GeluNew {
    fn name(&self) -> &'static str {
        "gelu-new"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(s, l)?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| {
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = forward(v);
                }
            });
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
        let (x, g) = (values(s1, l1)?, values(s2, l2)?);
        if x.len() != g.len() {
            candle_core::bail!(
                "gelu_new backward: {} values, {} gradients",
                x.len(),
                g.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(o, (x, g))| {
                for ((o, &v), &gv) in o.iter_mut().zip(x).zip(g) {
                    *o = gv * derivative(v);
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
    fn forward_equals_candles_gelu_to_the_bit() {
        let x = inputs();
        let ours = gelu_new(&x).unwrap().to_vec1::<f32>().unwrap();
        let candle = x.gelu().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ours, candle);
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
}
