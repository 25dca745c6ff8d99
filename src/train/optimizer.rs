//! The optimisation step of the reference's `Seq2SeqTrainer` (transformers 4.21.1 defaults with
//! train.py's settings): HF `AdamW` (`adamw_hf`: bias correction folded into the step size, eps
//! added to the uncorrected `sqrt(v)`, decoupled weight decay after the update), the linear
//! schedule without warm-up, and `clip_grad_norm_` at 1.0.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// HF AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay (0.9).
    pub beta1: f64,
    /// Second-moment decay (0.999).
    pub beta2: f64,
    /// Denominator epsilon (1e-8, as train.py's Trainer uses).
    pub eps: f64,
    /// Decoupled weight decay (0, as in train.py).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// `Seq2SeqTrainingArguments` defaults: (0.9, 0.999), 1e-8, no weight decay.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// `transformers.AdamW` (4.21.1) over named parameters.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<(String, Var)>,
    /// First and second moments per parameter (`exp_avg`, `exp_avg_sq`).
    moments: Vec<(Tensor, Tensor)>,
    step: u64,
}

impl AdamW {
    /// An optimiser over `params` with zeroed moments.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> candle_core::Result<Self> {
        let moments = params
            .iter()
            .map(|(_, v)| Ok((v.zeros_like()?, v.zeros_like()?)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            params,
            moments,
            step: 0,
        })
    }

    /// The parameters, by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Number of updates done.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        let step_size = lr * bc2.sqrt() / bc1;
        for ((_, var), (m, v)) in self.params.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // A gradient keeps the graph of the step it came from; the moments must not, or
            // every step's activations would stay alive through them.
            let g = &g.detach();
            *m = ((&*m * beta1)? + (g * (1.0 - beta1))?)?;
            *v = ((&*v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = (v.sqrt()? + eps)?;
            let mut p = (var.as_tensor() - ((&*m / denom)? * step_size)?)?;
            if weight_decay > 0.0 {
                p = (&p - (&p * (lr * weight_decay))?)?;
            }
            var.set(&p)?;
        }
        Ok(())
    }

    /// The optimiser state as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`).
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for ((name, _), (m, v)) in self.params.iter().zip(&self.moments) {
            out.insert(format!("exp_avg.{name}"), m.clone());
            out.insert(format!("exp_avg_sq.{name}"), v.clone());
        }
        out
    }

    /// Restores the state written by [`AdamW::state_tensors`] after `steps` updates.
    pub(crate) fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: u64,
    ) -> std::result::Result<(), String> {
        for ((name, var), (m, v)) in self.params.iter().zip(self.moments.iter_mut()) {
            for (prefix, slot) in [("exp_avg", &mut *m), ("exp_avg_sq", &mut *v)] {
                let key = format!("{prefix}.{name}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| format!("optimiser state has no tensor {key}"))?;
                if t.dims() != var.dims() {
                    return Err(format!(
                        "optimiser tensor {key} has shape {:?}, the parameter {:?}",
                        t.dims(),
                        var.dims()
                    ));
                }
                *slot = t
                    .to_device(var.device())
                    .and_then(|t| t.to_dtype(var.dtype()))
                    .map_err(|e| e.to_string())?;
            }
        }
        self.step = steps;
        Ok(())
    }
}

/// `get_linear_schedule_with_warmup(opt, 0, total)`: the learning rate of the update made at
/// step `step` (0-based), `lr · max(0, (total − step) / max(1, total))`.
pub fn linear_lr(lr: f64, step: u64, total: u64) -> f64 {
    let total = total as f64;
    lr * ((total - step as f64) / total.max(1.0)).max(0.0)
}

/// `torch.nn.utils.clip_grad_norm_`: scales every gradient by `max_norm / (norm + 1e-6)` when
/// that is below 1, where `norm` is the 2-norm of all gradients together. Returns that norm
/// (before clipping).
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[(String, Var)],
    max_norm: f64,
) -> candle_core::Result<f64> {
    let mut sum = 0f64;
    for (_, var) in params {
        if let Some(g) = grads.get(var.as_tensor()) {
            let n = g
                .sqr()?
                .sum_all()?
                .sqrt()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            sum += n * n;
        }
    }
    let norm = sum.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (_, var) in params {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_starts_at_lr_and_reaches_zero() {
        // The fixture's learning rates: 1e-4, 9e-5, 8e-5 over 10 steps.
        assert_eq!(linear_lr(1e-4, 0, 10), 1e-4);
        assert!((linear_lr(1e-4, 1, 10) - 9e-5).abs() < 1e-18);
        assert!((linear_lr(1e-4, 2, 10) - 8e-5).abs() < 1e-18);
        assert_eq!(linear_lr(1e-4, 10, 10), 0.0);
        assert_eq!(linear_lr(1e-4, 12, 10), 0.0);
    }

    #[test]
    fn first_adamw_step_moves_each_weight_by_lr() {
        // Step 1: m = 0.1 g, v = 0.001 g², step size = lr·sqrt(0.001)/0.1, so the update is
        // lr·g/|g| (up to eps) whatever the gradient's scale.
        let dev = candle_core::Device::Cpu;
        let var = Var::new(&[1.0f32, -2.0, 3.0], &dev).unwrap();
        let loss = (var.as_tensor() * &Tensor::new(&[2.0f32, -0.5, 0.0], &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default()).unwrap();
        opt.step(&grads, 0.1).unwrap();
        let w = var.as_tensor().to_vec1::<f32>().unwrap();
        assert!((w[0] - 0.9).abs() < 1e-6, "{w:?}");
        assert!((w[1] - -1.9).abs() < 1e-6, "{w:?}");
        assert_eq!(w[2], 3.0);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let dev = candle_core::Device::Cpu;
        let a = Var::new(&[0.0f32, 0.0], &dev).unwrap();
        let loss = (a.as_tensor() * &Tensor::new(&[3.0f32, 4.0], &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let mut grads = loss.backward().unwrap();
        let params = vec![("a".to_string(), a.clone())];
        let norm = clip_grad_norm(&mut grads, &params, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let g = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let expect = 1.0 / (5.0 + 1e-6);
        assert!(
            (g[0] - 3.0 * expect as f32).abs() < 1e-6 && (g[1] - 4.0 * expect as f32).abs() < 1e-6
        );
    }
}
