//! GPT-2's dropout in training mode (`embd_pdrop`, `attn_pdrop`, `resid_pdrop`, all equal in
//! SmallCap's decoder): zero each element with probability `p`, scale the rest by `1 / (1 - p)`.
//!
//! The masks come from a seeded generator per training step, so a run is reproducible from its
//! seed and a resumed run continues with the same masks. On the CPU they are drawn here; on a GPU
//! the device generator is seeded once per step and draws them in place.

use candle_core::{DType, Device, Tensor};

use crate::rng::Rng;

/// Inverted dropout with its own seeded random stream (training only).
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
    rng: Rng,
}

impl Dropout {
    /// Dropout with probability `p` for the training step `step` of a run seeded with `seed`.
    pub fn new(p: f32, seed: u64, step: u64, device: &Device) -> candle_core::Result<Self> {
        if !(0.0..1.0).contains(&p) {
            candle_core::bail!("dropout probability must be in [0, 1), got {p}");
        }
        if !device.is_cpu() && p > 0.0 {
            device.set_seed(seed.wrapping_mul(1_000_003).wrapping_add(step))?;
        }
        Ok(Self {
            p,
            rng: Rng::for_stream(seed, step),
        })
    }

    /// No dropout (evaluation, or `--dropout 0`).
    pub fn off() -> Self {
        Self {
            p: 0.0,
            rng: Rng::new(0),
        }
    }

    /// The probability of dropping an element.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// Zeroes each element with probability p and scales the rest by 1/(1-p).
    pub fn apply(&mut self, xs: Tensor) -> candle_core::Result<Tensor> {
        if self.p == 0.0 {
            return Ok(xs);
        }
        let scale = 1.0 / (1.0 - self.p as f64);
        let mask = if xs.device().is_cpu() {
            let threshold = (self.p as f64 * 4_294_967_296.0) as u64;
            let keep = scale as f32;
            let data: Vec<f32> = (0..xs.elem_count())
                .map(|_| {
                    if self.rng.next_u64() >> 32 >= threshold {
                        keep
                    } else {
                        0.0
                    }
                })
                .collect();
            Tensor::from_vec(data, xs.shape(), xs.device())?
        } else {
            let rand = Tensor::rand(0f32, 1f32, xs.shape(), xs.device())?;
            (rand.ge(self.p as f64)?.to_dtype(DType::F32)? * scale)?
        };
        let mask = mask.to_dtype(xs.dtype())?;
        xs * mask
    }
}
