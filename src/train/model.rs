//! The model being trained: a SmallCap checkpoint's tensors with the trainable ones turned into
//! `Var`s (decoder parameters named `crossattention`, or the whole decoder with
//! `--train-decoder`), the decoder built over them, and the reference's loss.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

use crate::checkpoint::{expected_tensors, LM_HEAD};
use crate::config::SmallCapConfig;
use crate::error::{Error, Result};
use crate::models::{Dropout, Gpt2};
use crate::train::dataset::IGNORE_INDEX;

/// Which decoder parameters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainable {
    /// Only names containing `crossattention` (the reference's default).
    CrossAttention,
    /// Every decoder parameter (`--train_decoder`).
    Decoder,
}

impl Trainable {
    /// The reference's filter on `model.decoder.named_parameters()`.
    pub fn trains(self, name: &str) -> bool {
        name.starts_with("decoder.")
            && match self {
                Trainable::CrossAttention => name.contains("crossattention"),
                Trainable::Decoder => true,
            }
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

pub struct TrainModel {
    pub config: SmallCapConfig,
    /// Every checkpoint tensor, trainable ones sharing storage with their `Var`.
    pub tensors: HashMap<String, Tensor>,
    /// Trainable parameters in checkpoint order (the reference's `named_parameters` order).
    pub params: Vec<(String, Var)>,
    pub decoder: Gpt2,
    /// Whether `decoder.lm_head.weight` is the same tensor as `wte` (a model built from GPT-2).
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
            if trainable.trains(name) {
                let var = Var::from_tensor(&t)?;
                tensors.insert(name.clone(), var.as_tensor().clone());
                params.push((name.clone(), var));
            } else {
                tensors.insert(name.clone(), t);
            }
        }
        if tied_lm_head {
            let wte = tensors["decoder.transformer.wte.weight"].clone();
            tensors.insert(LM_HEAD.to_string(), wte);
        }
        let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, device);
        let decoder = Gpt2::load(vb.pp("decoder"), &config.decoder)?;
        Ok(Self {
            config,
            tensors,
            params,
            decoder,
            tied_lm_head,
        })
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
}
