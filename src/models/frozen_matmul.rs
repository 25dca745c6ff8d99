//! Matrix products with a frozen weight: `x · W` whose backward pass computes only the gradient
//! of `x`.
//!
//! candle's `matmul` backward always computes the gradients of both operands, so a frozen weight
//! (the GPT-2 layers, and above all the 50257-wide LM head) would still cost a weight-sized
//! matmul and buffer on every training step. [`frozen_matmul`] runs the same storage matmul in
//! its forward pass (so its results are identical to `Tensor::matmul`) and returns no gradient
//! for the weight.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

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
        Ok((Some(grad.matmul(&w.t()?)?), None))
    }
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
