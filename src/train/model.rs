//! The model being trained: a SmallCap checkpoint's tensors with the trainable ones turned into
//! `Var`s (decoder parameters named `crossattention` for GPT-2, `encoder_attn` for OPT, or the
//! whole decoder with `--train-decoder`), the decoder built over them, and the reference's loss.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{expected_tensors, token_embedding_name, LM_HEAD};
use crate::config::{DecoderConfig, SmallCapConfig};
use crate::error::{Error, Result};
use crate::models::{Decoder, Dropout};
use crate::train::dataset::IGNORE_INDEX;

/// Which decoder parameters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainable {
    /// Only the cross-attention, as train.py chooses it by name: `crossattention` for GPT-2,
    /// `encoder_attn` for OPT (its layer norm included); see
    /// [`DecoderConfig::cross_attention_marker`].
    CrossAttention,
    /// Every decoder parameter (`--train_decoder`).
    Decoder,
}

impl Trainable {
    /// The reference's filter on `model.decoder.named_parameters()` for a decoder `cfg`.
    pub fn trains(self, name: &str, cfg: &DecoderConfig) -> bool {
        name.starts_with("decoder.")
            && match self {
                Trainable::CrossAttention => name.contains(cfg.cross_attention_marker()),
                Trainable::Decoder => true,
            }
    }
}

/// How training computes the frozen layers' products (`train --precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainPrecision {
    /// f32 throughout (the reference's fixture to 1e-4).
    #[default]
    F32,
    /// Every linear product of the decoder and LM head, forward and backward, with operands in
    /// bf16 and f32 sums (what torch's bf16 autocast does to them), on AMX where the CPU has
    /// it. The trained parameters (master weights), their gradients, the optimiser state and
    /// every other operation stay f32.
    Bf16,
}

impl std::str::FromStr for TrainPrecision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(format!(
                "unknown training precision {s:?} (expected f32 or bf16)"
            )),
        }
    }
}

impl std::fmt::Display for TrainPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

/// A padded training batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, T]` u32.
    pub input_ids: Tensor,
    /// `[B·T]` labels, −100 where ignored.
    pub labels: Vec<i64>,
    /// `[B, S, n_embd]`.
    pub encoder_hidden: Tensor,
}

impl Batch {
    /// Number of samples (rows).
    pub fn len(&self) -> usize {
        self.input_ids.dim(0).unwrap_or(0)
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of labels that enter the loss.
    pub fn labelled(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// Samples `start..start + len`.
    pub fn rows(&self, start: usize, len: usize) -> Result<Batch> {
        let t = self.input_ids.dim(1)?;
        Ok(Batch {
            input_ids: self.input_ids.narrow(0, start, len)?,
            labels: self.labels[start * t..(start + len) * t].to_vec(),
            encoder_hidden: self.encoder_hidden.narrow(0, start, len)?,
        })
    }
}

/// SmallCap for training: every tensor, the trainable ones as `Var`s, and the decoder over them.
pub struct TrainModel {
    /// The checkpoint's `config.json`.
    pub config: SmallCapConfig,
    /// Every checkpoint tensor, trainable ones sharing storage with their `Var`.
    pub tensors: HashMap<String, Tensor>,
    /// Trainable parameters in checkpoint order (the reference's `named_parameters` order).
    pub params: Vec<(String, Var)>,
    /// The decoder, sharing the tensors above.
    pub decoder: Decoder,
    /// Whether `decoder.lm_head.weight` is the same tensor as the token embedding (a model
    /// built from a pretrained GPT-2 or OPT).
    pub tied_lm_head: bool,
}

impl TrainModel {
    /// Builds the trainable model from a checkpoint's tensors (already checked against the
    /// config). When `tied_lm_head`, the LM head is `wte` itself (trained together with it).
    pub fn new(
        config: SmallCapConfig,
        mut tensors: HashMap<String, Tensor>,
        trainable: Trainable,
        tied_lm_head: bool,
        device: &Device,
    ) -> Result<Self> {
        let mut names: Vec<String> = expected_tensors(&config)
            .into_iter()
            .map(|t| t.name)
            .collect();
        if !tied_lm_head {
            names.push(LM_HEAD.to_string());
        }
        let mut params = Vec::new();
        for name in &names {
            let t = tensors
                .get(name)
                .ok_or_else(|| Error::Input(format!("missing tensor {name}")))?
                .to_device(device)?
                .to_dtype(DType::F32)?;
            if trainable.trains(name, &config.decoder) {
                let var = Var::from_tensor(&t)?;
                tensors.insert(name.clone(), var.as_tensor().clone());
                params.push((name.clone(), var));
            } else {
                tensors.insert(name.clone(), t);
            }
        }
        if tied_lm_head {
            let wte = tensors[token_embedding_name(&config.decoder)].clone();
            tensors.insert(LM_HEAD.to_string(), wte);
        }
        let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, device);
        let decoder = Decoder::load(vb.pp("decoder"), &config.decoder)?;
        Ok(Self {
            config,
            tensors,
            params,
            decoder,
            tied_lm_head,
        })
    }

    /// Computes the decoder's linear products in `precision` from now on (f32 leaves the
    /// model as built; see [`TrainPrecision`]). bf16 runs on the CPU only.
    pub fn use_precision(&mut self, precision: TrainPrecision) -> Result<()> {
        if precision == TrainPrecision::F32 {
            return Ok(());
        }
        let device = self.decoder.device().clone();
        if !device.is_cpu() {
            return Err(Error::Input(format!(
                "--precision {precision} runs on the CPU's bf16 kernels; this run is on {device:?} (use --precision f32 there)"
            )));
        }
        self.decoder
            .use_bf16_products(crate::kernels::bf16_gemm::Level::detect())?;
        Ok(())
    }

    /// Number of trainable scalars.
    pub fn trainable_parameters(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// SmallCap's training loss: cross-entropy, averaged over the labels that are not −100, of
    /// the un-shifted logits (the labels are already shifted). Only the labelled positions go
    /// through the LM head: the others do not enter the loss.
    pub fn loss(&self, batch: &Batch, dropout: &mut Dropout) -> Result<Tensor> {
        let hidden =
            self.decoder
                .forward_train(&batch.input_ids, &batch.encoder_hidden, dropout)?;
        let (rows, targets): (Vec<u32>, Vec<u32>) = batch
            .labels
            .iter()
            .enumerate()
            .filter(|(_, &l)| l != IGNORE_INDEX)
            .map(|(i, &l)| (i as u32, l as u32))
            .unzip();
        if rows.is_empty() {
            return Err(Error::Input(
                "a training batch has no labelled token".into(),
            ));
        }
        if let Some(&bad) = targets
            .iter()
            .find(|&&t| t as usize >= self.config.decoder.vocab_size)
        {
            return Err(Error::Input(format!(
                "label {bad} is outside the vocabulary"
            )));
        }
        let device = hidden.device();
        let rows = Tensor::new(rows.as_slice(), device)?;
        let targets = Tensor::new(targets.as_slice(), device)?;
        let logits = self.decoder.logits(&hidden.index_select(&rows, 0)?, true)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    }

    /// The loss of a batch and the gradients of the trainable parameters, computed
    /// `micro_batch` samples at a time when given (gradient accumulation, for batches whose
    /// activations do not fit in memory). Each part's mean loss is weighted by its share of the
    /// batch's labels, so the parts add up to the whole batch's loss and gradients (up to the
    /// order of float additions). Dropout masks are drawn part after part, so with dropout
    /// they differ from those of the batch in one piece.
    pub fn loss_and_gradients(
        &self,
        batch: &Batch,
        micro_batch: Option<usize>,
        dropout: &mut Dropout,
    ) -> Result<(f64, GradStore)> {
        let part = micro_batch.unwrap_or(usize::MAX).max(1);
        if part >= batch.len() {
            let loss = self.loss(batch, dropout)?;
            let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            return Ok((value, loss.backward()?));
        }
        let total = batch.labelled();
        let mut value = 0f64;
        let mut grads = GradStore::default();
        let mut start = 0;
        while start < batch.len() {
            let rows = batch.rows(start, part.min(batch.len() - start))?;
            start += rows.len();
            let share = rows.labelled() as f64 / total as f64;
            if share == 0.0 {
                continue;
            }
            let loss = (self.loss(&rows, dropout)? * share)?;
            value += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let part_grads = loss.backward()?;
            for (_, var) in &self.params {
                if let Some(g) = part_grads.get(var.as_tensor()) {
                    // A parameter's gradient still references this part's forward graph (candle
                    // detaches only the intermediate gradients): keep only its values.
                    let g = g.detach();
                    let sum = match grads.get(var.as_tensor()) {
                        Some(acc) => (acc + g)?,
                        None => g,
                    };
                    grads.insert(var.as_tensor(), sum);
                }
            }
        }
        Ok((value, grads))
    }
}
