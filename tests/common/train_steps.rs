//! The reference's three training steps (`train/` of a pack, made by `make_train_pack.py` or
//! `make_decoder_pack.py`): the TrainDataset layout of the pack's batch, and three steps of
//! cross-attention training (dropout 0, no shuffling): the loss of each step within 1e-5
//! relative, the gradient norm, the clipped gradients of step 1 and the parameters after step 3
//! within 1e-4 relative ([`Tolerance::F32`]; [`Tolerance::BF16`] for `--precision bf16`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use smallcap::models::Dropout;
use smallcap::train::dataset::{max_length, prep_strings};
use smallcap::train::{clip_grad_norm, linear_lr, AdamW, AdamWConfig, Batch, TrainModel};
use smallcap::Tokenizer;

use super::rel_err;

#[derive(Deserialize)]
pub struct Expected {
    pub max_len: usize,
    pub k: usize,
    steps: usize,
    total_steps: u64,
    lr: f64,
    losses: Vec<f64>,
    grad_norms_before_clip: Vec<f64>,
    lrs_used: Vec<f64>,
    samples: Vec<ExpectedSample>,
    pub trainable_parameters: usize,
    #[serde(default)]
    pub trainable: Vec<String>,
}

#[derive(Deserialize)]
pub struct ExpectedSample {
    text: String,
    retrieved_captions: Vec<String>,
}

/// A pack's `train/` folder.
pub struct TrainPack {
    pub dir: PathBuf,
    pub device: Device,
}

impl TrainPack {
    pub fn new(dir: &Path, device: Device) -> Self {
        Self {
            dir: dir.to_path_buf(),
            device,
        }
    }

    pub fn expected(&self) -> Expected {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("expected.json")).unwrap())
            .unwrap()
    }

    fn batch_tensors(&self) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(self.dir.join("batch.safetensors"), &self.device).unwrap()
    }

    /// The reference's training batch.
    pub fn batch(&self) -> Batch {
        let b = self.batch_tensors();
        Batch {
            input_ids: b["input_ids"].to_dtype(DType::U32).unwrap(),
            labels: b["labels"]
                .to_dtype(DType::I64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<i64>()
                .unwrap(),
            encoder_hidden: b["encoder_hidden"].clone(),
        }
    }

    /// `prep_strings` and `max_length` against the batch's `input_ids` and `labels`.
    pub fn check_layout(&self, tok: &Tokenizer, eos: u32, pad: u32) {
        let exp = self.expected();
        assert_eq!(max_length(tok, Some(exp.k)).unwrap(), exp.max_len);
        let b = self.batch_tensors();
        let ids = b["input_ids"]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2::<i64>()
            .unwrap();
        let labels = b["labels"]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2::<i64>()
            .unwrap();
        for (i, s) in exp.samples.iter().enumerate() {
            let enc = prep_strings(
                tok,
                &s.text,
                Some(&s.retrieved_captions),
                exp.k,
                exp.max_len,
                eos,
                pad,
            )
            .unwrap();
            let got: Vec<i64> = enc.input_ids.iter().map(|&x| x as i64).collect();
            assert_eq!(got, ids[i], "input_ids of sample {i}");
            assert_eq!(enc.labels, labels[i], "labels of sample {i}");
        }
    }

    /// Three steps of `m` (built with `Trainable::CrossAttention`) against the reference.
    /// `key_bias` names the cross-attention's key bias (softmax is invariant to it, so its true
    /// gradient is 0 and Adam turns rounding noise into full-size steps there): its update is
    /// not compared, only its value. `c_attn` holds it as the first half of a fused bias.
    pub fn check_three_steps(
        &self,
        m: &TrainModel,
        micro_batch: Option<usize>,
        key_bias: KeyBias,
        tol: &Tolerance,
    ) {
        let exp = self.expected();
        let want = candle_core::safetensors::load(
            self.dir.join("expected_tensors.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(m.trainable_parameters(), exp.trainable_parameters);
        let batch = self.batch();
        let before: HashMap<String, Tensor> = m
            .params
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    v.as_tensor()
                        .to_device(&Device::Cpu)
                        .unwrap()
                        .copy()
                        .unwrap(),
                )
            })
            .collect();
        let mut opt = AdamW::new(m.params.clone(), AdamWConfig::default()).unwrap();
        for step in 0..exp.steps {
            let (l, mut grads) = m
                .loss_and_gradients(&batch, micro_batch, &mut Dropout::off())
                .unwrap();
            if micro_batch.is_some() {
                // Accumulated gradients hold values only, not the parts' forward graphs (which
                // would keep every part's activations alive until the update).
                for (name, var) in &m.params {
                    assert!(!grads.get(var.as_tensor()).unwrap().track_op(), "{name}");
                }
            }
            let rel = (l - exp.losses[step]).abs() / exp.losses[step].abs();
            assert!(
                rel < tol.loss,
                "step {step} (micro-batch {micro_batch:?}): loss {l} vs {} (rel {rel:e})",
                exp.losses[step]
            );
            let norm = clip_grad_norm(&mut grads, &m.params, 1.0).unwrap();
            let want_norm = exp.grad_norms_before_clip[step];
            assert!(
                (norm - want_norm).abs() / want_norm < tol.grad_norm,
                "step {step}: grad norm {norm} vs {want_norm}"
            );
            if step == 0 {
                for (name, var) in &m.params {
                    let g = grads
                        .get(var.as_tensor())
                        .unwrap_or_else(|| panic!("no gradient for {name}"));
                    let g = g.to_device(&Device::Cpu).unwrap();
                    let w = &want[&format!("grad.{name}")];
                    if matches!(key_bias, KeyBias::Whole(s) if name.ends_with(s)) {
                        // Zero up to rounding on both sides (the clipped global norm is 1).
                        for (side, t) in [("ours", &g), ("reference", w)] {
                            let n = t
                                .sqr()
                                .unwrap()
                                .sum_all()
                                .unwrap()
                                .to_scalar::<f32>()
                                .unwrap();
                            assert!(n.sqrt() < 1e-5, "{name}: {side} gradient norm {}", n.sqrt());
                        }
                        continue;
                    }
                    let e = rel_err(&g, w);
                    assert!(
                        e < tol.gradient,
                        "gradient of {name} (micro-batch {micro_batch:?}): relative error {e:e}"
                    );
                }
            }
            let lr = linear_lr(exp.lr, step as u64, exp.total_steps);
            assert!((lr - exp.lrs_used[step]).abs() <= 1e-12 * exp.lr);
            opt.step(&grads, lr).unwrap();
        }
        for (name, var) in &m.params {
            let w = &want[&format!("param_after.{name}")];
            let got = var.as_tensor().to_device(&Device::Cpu).unwrap();
            let e = rel_err(&got, w);
            assert!(
                e < tol.param,
                "{name} after {} steps: relative error {e:e}",
                exp.steps
            );
            // The update itself (about 1e-2 of the weights) to 1e-3 relative. Not for the key
            // bias (the first half of `crossattention.c_attn.bias`): softmax is invariant to it, so
            // its true gradient is 0 and Adam turns rounding noise into full-size steps there.
            let mut got_delta = (&got - &before[name]).unwrap();
            let mut want_delta = (w - &before[name]).unwrap();
            match key_bias {
                KeyBias::FirstHalfOf(suffix) if name.ends_with(suffix) => {
                    let c = got_delta.dim(0).unwrap() / 2;
                    got_delta = got_delta.narrow(0, c, c).unwrap();
                    want_delta = want_delta.narrow(0, c, c).unwrap();
                }
                KeyBias::Whole(suffix) if name.ends_with(suffix) => continue,
                _ => {}
            }
            let e = rel_err(&got_delta, &want_delta);
            assert!(e < tol.update, "{name}: update differs by {e:e} relative");
        }
    }
}

/// Where the cross-attention's key bias is (see [`TrainPack::check_three_steps`]).
#[derive(Clone, Copy)]
pub enum KeyBias {
    /// The first half of a fused `[k | v]` bias ending so (GPT-2's `crossattention.c_attn.bias`).
    FirstHalfOf(&'static str),
    /// A bias of its own ending so (OPT's `encoder_attn.k_proj.bias`).
    Whole(&'static str),
}

/// How close three steps must come to the reference's.
pub struct Tolerance {
    /// Relative error of each step's loss.
    pub loss: f64,
    /// Relative error of the gradient norm before clipping.
    pub grad_norm: f64,
    /// Relative L2 error of the clipped gradients of step 1.
    pub gradient: f32,
    /// Relative L2 error of the parameters after the steps.
    pub param: f32,
    /// Relative L2 error of the parameters' change over the steps.
    pub update: f32,
}

impl Tolerance {
    /// f32 throughout.
    pub const F32: Tolerance = Tolerance {
        loss: 1e-5,
        grad_norm: 1e-4,
        gradient: 1e-4,
        param: 1e-4,
        update: 1e-3,
    };

    /// bf16 products (`--precision bf16`), in units of bf16's rounding `u = 2^-9`, each about
    /// five times the error measured on the fixture (loss 1.8e-5, gradient norm 1.5e-3,
    /// gradients 7.8e-3, parameters 1.8e-4, updates 5.5e-2: Adam's update divides by the
    /// gradient's own scale, so its error is that of the gradients' small entries).
    pub const BF16: Tolerance = Tolerance {
        loss: 1.0 / 8192.0,     // u / 16
        grad_norm: 4.0 / 512.0, // 4u
        gradient: 16.0 / 512.0, // 16u
        param: 0.5 / 512.0,     // u / 2
        update: 0.25,
    };
}
