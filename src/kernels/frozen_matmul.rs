//! Matrix products with a frozen weight: `x · W` (and `x · W + b`) whose backward pass computes
//! only the gradient of `x`.
//!
//! candle's `matmul` backward always computes the gradients of both operands, so a frozen weight
//! (the GPT-2 layers, and above all the 50257-wide LM head) would still cost a weight-sized
//! matmul and buffer on every training step. [`frozen_matmul`] runs the same storage matmul in
//! its forward pass (so its results are identical to `Tensor::matmul`) and returns no gradient
//! for the weight.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

struct FrozenMatmul;

/// `(b, m, n, k)` and the output shape of `[m, k] · [k, n]`.
fn dims(l1: &Layout, l2: &Layout) -> Result<((usize, usize, usize, usize), Shape)> {
    let (a, b) = (l1.dims(), l2.dims());
    if a.len() != 2 || b.len() != 2 || a[1] != b[0] {
        candle_core::bail!("frozen_matmul: shapes {a:?} and {b:?} do not multiply");
    }
    Ok(((1, a[0], b[1], a[1]), Shape::from((a[0], b[1]))))
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bmnk, shape) = dims(l1, l2)?;
        Ok((s1.matmul(s2, bmnk, l1, l2)?, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (bmnk, shape) = dims(l1, l2)?;
        Ok((s1.matmul(s2, bmnk, l1, l2)?, shape))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(input_gradient(w, grad)?), None))
    }
}

/// The only gradient of `x · W (+ b)` with a frozen `W`: `grad · Wᵀ`.
fn input_gradient(w: &Tensor, grad: &Tensor) -> Result<Tensor> {
    grad.matmul(&w.t()?)
}

/// `x · w` for `x` `[m, k]` and `w` `[k, n]`. A `w` that is or derives from a trainable `Var`
/// (e.g. the transpose of a trained LM head) goes through the ordinary matmul; a frozen one gets
/// no gradient.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.track_op() {
        x.matmul(w)
    } else {
        x.apply_op2(w, FrozenMatmul)
    }
}

/// `x · W + b` in one operation: the product's storage gets the bias added in place, so training
/// saves the separate addition forward and its gradient copy backward. Same values as
/// `frozen_matmul(x, w)?.broadcast_add(b)`.
struct FrozenLinear;

impl CustomOp3 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
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
        let (mut out, shape) = FrozenMatmul.cpu_fwd(s1, l1, s2, l2)?;
        let bias = super::fused::contiguous_f32(s3, l3, "frozen_linear")?;
        let CpuStorage::F32(values) = &mut out else {
            candle_core::bail!("frozen_linear: expected f32 values");
        };
        let outputs = shape.dims()[1];
        if bias.len() != outputs {
            candle_core::bail!(
                "frozen_linear: bias of {} for {outputs} outputs",
                bias.len()
            );
        }
        for row in values.chunks_mut(bias.len()) {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        Ok((out, shape))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(input_gradient(w, grad)?), None, None))
    }
}

/// `x · w + b` for `x` `[m, k]`, `w` `[k, n]` and `b` `[n]`. Trainable weights or biases, other
/// devices and dtypes go through the ordinary operations; frozen f32 ones on the CPU through one
/// fused operation whose only gradient is that of `x`.
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fused = !w.track_op()
        && !b.track_op()
        && x.device().is_cpu()
        && [x, w, b]
            .iter()
            .all(|t| t.dtype() == candle_core::DType::F32);
    if fused {
        x.apply_op3(w, &b.contiguous()?, FrozenLinear)
    } else {
        frozen_matmul(x, w)?.broadcast_add(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    #[test]
    fn frozen_linear_equals_matmul_plus_bias_and_only_x_gets_a_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_vec(values(5 * 7, 1), (5, 7), &dev).unwrap();
        let w = Tensor::from_vec(values(7 * 3, 2), (7, 3), &dev).unwrap();
        let b = Tensor::from_vec(values(3, 3), 3, &dev).unwrap();
        let probe = Tensor::from_vec(values(5 * 3, 4), (5, 3), &dev).unwrap();
        let fused = frozen_linear(x.as_tensor(), &w, &b).unwrap();
        let plain = x.as_tensor().matmul(&w).unwrap().broadcast_add(&b).unwrap();
        assert_eq!(
            fused.to_vec2::<f32>().unwrap(),
            plain.to_vec2::<f32>().unwrap()
        );
        let grads = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gp) = (grads(&fused), grads(&plain));
        // candle's own product also computes the weight's gradient; the fused one does not.
        assert!(gf.get(&w).is_none() && gf.get(&b).is_none());
        assert_eq!(
            gf.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            gp.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap()
        );
    }
}
