//! The SmallCap model: the frozen CLIP vision `encoder` and the `decoder` (GPT-2 or OPT) with
//! cross-attention, loaded from a checkpoint folder (`config.json` + weights).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::StateDict;
use crate::config::SmallCapConfig;
use crate::error::{Error, Result};
use crate::hub::ModelFiles;
use crate::kernels::packed_linear::WeightType;
use crate::models::{ClipVision, Decoder};

/// The SmallCap model: CLIP vision encoder, GPT-2 or OPT decoder with reduced cross-attention.
#[derive(Debug, Clone)]
pub struct SmallCap {
    /// Its `config.json`.
    pub config: SmallCapConfig,
    /// The vision tower.
    pub encoder: ClipVision,
    /// The decoder.
    pub decoder: Decoder,
}

impl SmallCap {
    /// Loads `dir/config.json` and `dir/model.safetensors` or `dir/pytorch_model.bin`.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self> {
        let config = SmallCapConfig::from_file(&dir.join("config.json"))?;
        let weights = StateDict::load_dir(dir, &config, device)?;
        Self::from_state_dict(config, weights, device)
    }

    /// Loads a checkpoint from its resolved files (a local folder or the hub cache).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        let config = SmallCapConfig::from_file(&files.config)?;
        let weights = StateDict::load_file(&files.weights, &config, device)?;
        Self::from_state_dict(config, weights, device)
    }

    /// Builds the model from already checked tensors.
    pub fn from_state_dict(
        config: SmallCapConfig,
        weights: StateDict,
        device: &Device,
    ) -> Result<Self> {
        let path = weights.path.clone();
        let vb = VarBuilder::from_tensors(weights.tensors, DType::F32, device);
        let build = || -> candle_core::Result<(ClipVision, Decoder)> {
            Ok((
                ClipVision::load(vb.pp("encoder"), &config.encoder)?,
                Decoder::load(vb.pp("decoder"), &config.decoder)?,
            ))
        };
        let (encoder, decoder) = build().map_err(|e| Error::checkpoint(&path, e.to_string()))?;
        Ok(Self {
            config,
            encoder,
            decoder,
        })
    }

    /// Lays the decoder's frozen weights out for decoding on the CPU, in f32 (the reference's
    /// results) or, as an option, f16 or bf16 (half the memory read per step). The model can
    /// then caption but not train.
    pub fn pack_decoder(&mut self, ty: WeightType) -> Result<()> {
        Ok(self.decoder.pack_for_decoding(ty)?)
    }

    /// `pixel_values` `[B, 3, H, W]` → `encoder_hidden_states` `[B, tokens, n_embd]`.
    pub fn encode(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.encoder.forward(pixel_values)?)
    }
}
