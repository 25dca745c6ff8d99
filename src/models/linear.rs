//! The linear layer every model here uses: `y = x · W (+ b)` with `W` held `[in, out]`, dense
//! (trainable or frozen), packed for decoding ([`PackedLinear`]) or with bf16 products for
//! training on the matrix units ([`crate::kernels::bf16_linear`]).

use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};

use crate::kernels::bf16_gemm::Level;
use crate::kernels::bf16_linear::{linear_bf16, FrozenBf16};
use crate::kernels::frozen_matmul::{frozen_linear, frozen_matmul};
use crate::kernels::packed_linear::{PackedLinear, WeightType};

/// A linear layer `y = x · W (+ b)` with `W` held `[in, out]` (GPT-2's `Conv1D` layout; an
/// `nn.Linear` weight is read through its transpose).
#[derive(Debug, Clone)]
pub struct Linear {
    weights: LinearWeights,
}

#[derive(Debug, Clone)]
enum LinearWeights {
    /// As loaded: trainable or frozen, any device.
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// Frozen and packed for decoding on the CPU (see [`PackedLinear`]); shared by clones.
    Packed(Arc<PackedLinear>),
    /// Frozen, in bf16 for both products of training (see [`FrozenBf16`]); shared by clones.
    Bf16(Arc<FrozenBf16>),
    /// Trainable, its products in bf16 on `level` (see [`linear_bf16`]).
    TrainableBf16 {
        weight: Tensor,
        bias: Option<Tensor>,
        level: Level,
    },
}

impl Linear {
    /// GPT-2's `Conv1D`: weight `[d_in, d_out]` and bias `[d_out]`.
    pub fn conv1d(vb: VarBuilder, d_in: usize, d_out: usize) -> candle_core::Result<Self> {
        Ok(Self::from_tensors(
            vb.get((d_in, d_out), "weight")?,
            Some(vb.get(d_out, "bias")?),
        ))
    }

    /// `nn.Linear`: weight `[d_out, d_in]` (read through its transpose, which shares a
    /// trainable weight's storage) and, with `bias`, bias `[d_out]`.
    pub fn nn_linear(
        vb: VarBuilder,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> candle_core::Result<Self> {
        let w = vb.get((d_out, d_in), "weight")?;
        let weight = if w.track_op() {
            w.t()?
        } else {
            w.t()?.contiguous()?
        };
        let bias = if bias {
            Some(vb.get(d_out, "bias")?)
        } else {
            None
        };
        Ok(Self::from_tensors(weight, bias))
    }

    /// A layer from its weight `[in, out]` and optional bias `[out]`.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weights: LinearWeights::Dense { weight, bias },
        }
    }

    /// Whether the weight or bias trains (a trainable layer is never fused nor packed).
    pub(crate) fn trains(&self) -> bool {
        match &self.weights {
            LinearWeights::Dense { weight, bias } => {
                weight.track_op() || bias.as_ref().is_some_and(|b| b.track_op())
            }
            LinearWeights::Packed(_) | LinearWeights::Bf16(_) => false,
            LinearWeights::TrainableBf16 { .. } => true,
        }
    }

    /// Frozen layers side by side as one (outputs concatenated), or `None` when one of them
    /// trains (a concatenated copy would not follow the optimiser's updates).
    pub(crate) fn fuse(parts: &[&Linear]) -> candle_core::Result<Option<Linear>> {
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for p in parts {
            match &p.weights {
                LinearWeights::Dense { weight, bias } if !p.trains() => {
                    weights.push(weight.clone());
                    match bias {
                        Some(b) => biases.push(b.clone()),
                        None => biases.push(Tensor::zeros(
                            weight.dim(1)?,
                            weight.dtype(),
                            weight.device(),
                        )?),
                    }
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(Self::from_tensors(
            Tensor::cat(&weights, 1)?,
            Some(Tensor::cat(&biases, 0)?),
        )))
    }

    /// Packs a frozen weight for small-batch products (once; a packed layer stays as it is).
    pub fn pack(&mut self, ty: WeightType) -> candle_core::Result<()> {
        if let LinearWeights::Dense { weight, bias } = &self.weights {
            let packed = PackedLinear::pack(weight, bias.as_ref(), ty)?;
            self.weights = LinearWeights::Packed(Arc::new(packed));
        }
        Ok(())
    }

    /// Computes training's products in bf16 on `level`: a frozen weight is held in bf16 (see
    /// [`FrozenBf16`]), a trainable one stays f32 and is rounded at each product (see
    /// [`linear_bf16`]). A packed layer stays as it is.
    pub fn to_bf16_products(&mut self, level: Level) -> candle_core::Result<()> {
        let trains = self.trains();
        if let LinearWeights::Dense { weight, bias } = &self.weights {
            self.weights = if trains {
                LinearWeights::TrainableBf16 {
                    weight: weight.clone(),
                    bias: bias.clone(),
                    level,
                }
            } else {
                LinearWeights::Bf16(Arc::new(FrozenBf16::new(weight, bias.as_ref(), level)?))
            };
        }
        Ok(())
    }
}

impl Module for Linear {
    /// `xs` is `[N, in]`. A frozen weight gets no gradient (see [`frozen_linear`]).
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match &self.weights {
            LinearWeights::Dense {
                weight,
                bias: Some(bias),
            } => frozen_linear(xs, weight, bias),
            LinearWeights::Dense { weight, bias: None } => frozen_matmul(xs, weight),
            LinearWeights::Packed(packed) => packed.forward(xs),
            LinearWeights::Bf16(layer) => layer.forward(xs),
            LinearWeights::TrainableBf16 {
                weight,
                bias,
                level,
            } => linear_bf16(xs, weight, bias.as_ref(), *level),
        }
    }
}
