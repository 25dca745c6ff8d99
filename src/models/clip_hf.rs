//! A Hugging Face `CLIPModel` (`config.json` + weights, e.g. `openai/clip-vit-base-patch32`) as
//! transformers builds it: the image tower is the crate's one ViT ([`ClipVision`] at
//! `vision_model`) with its [`ProjectionHead`] (`post_layernorm`, `visual_projection`); the
//! text tower (`text_model.*`, `text_projection`) is [`ClipText`] on the weights renamed into
//! OpenAI's layout by `clip_layout`. `CLIPTextTransformer` computes what OpenAI's
//! `encode_text` does (causal mask, features at the arg-max token id).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::clip_layout::hf_text_as_openai;
use super::clip_text::{ClipText, TextDims};
use super::clip_vision::{ClipVision, ProjectionHead};
use super::clip_weights::Weights;
use crate::config::VisionConfig;
use crate::error::{Error, Result};

/// The parts of a `CLIPConfig` besides `vision_config` (transformers' defaults where absent).
#[derive(Deserialize)]
struct HfClipConfig {
    #[serde(default = "default_projection_dim")]
    projection_dim: usize,
    #[serde(default)]
    text_config: HfTextConfig,
}

fn default_projection_dim() -> usize {
    512
}

/// `CLIPTextConfig`, transformers' defaults where absent.
#[derive(Deserialize)]
#[serde(default)]
struct HfTextConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
    layer_norm_eps: f64,
}

impl Default for HfTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

/// A `CLIPModel`: image and text towers into one joint embedding.
#[derive(Debug, Clone)]
pub struct HfClip {
    vision: ClipVision,
    head: ProjectionHead,
    text: ClipText,
    text_dims: TextDims,
}

impl HfClip {
    /// Loads `config.json` (a `CLIPConfig`) and the weight file beside it.
    pub fn load(config: &Path, weights: &Path, device: &Device) -> Result<Self> {
        let text = std::fs::read_to_string(config).map_err(|e| Error::io(config, e))?;
        let not_clip = |e: String| Error::Config {
            path: config.to_path_buf(),
            msg: format!("not a CLIPModel config: {e}"),
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| not_clip(e.to_string()))?;
        let cfg: HfClipConfig =
            serde_json::from_value(json.clone()).map_err(|e| not_clip(e.to_string()))?;
        // The one CLIPVisionConfig reader, the captioner's (transformers' defaults, checked).
        let vision_cfg = VisionConfig::from_value(&json).map_err(not_clip)?;
        let t = &cfg.text_config;
        if t.hidden_act != "quick_gelu" || t.layer_norm_eps != 1e-5 {
            return Err(not_clip(format!(
                "text_config: only hidden_act quick_gelu with layer_norm_eps 1e-5 is supported, found {:?} with {}",
                t.hidden_act, t.layer_norm_eps
            )));
        }
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(not_clip(format!(
                "text_config: hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            )));
        }
        let text_dims = TextDims {
            vocab_size: t.vocab_size,
            context_length: t.max_position_embeddings,
            width: t.hidden_size,
            layers: t.num_hidden_layers,
            heads: t.num_attention_heads,
            embed_dim: cfg.projection_dim,
        };
        let map = crate::checkpoint::read_state_dict(weights, device)?;
        let text = ClipText::load(
            &hf_text_as_openai(&Weights::new(weights, map.clone()), &text_dims)?,
            &text_dims,
            crate::precision::ConvKernel::F32,
        )?;
        let vb = VarBuilder::from_tensors(map, DType::F32, device);
        let not_model =
            |e: candle_core::Error| Error::checkpoint(weights, format!("not a CLIPModel: {e}"));
        Ok(Self {
            vision: ClipVision::load(vb.pp("vision_model"), &vision_cfg).map_err(not_model)?,
            head: ProjectionHead::load(vb, &vision_cfg, cfg.projection_dim).map_err(not_model)?,
            text,
            text_dims,
        })
    }

    /// The image tower's sizes.
    pub fn vision_config(&self) -> &VisionConfig {
        self.vision.config()
    }

    /// The text tower's sizes.
    pub fn text_dims(&self) -> &TextDims {
        &self.text_dims
    }

    /// The image tower's head (for features from a `last_hidden_state` computed elsewhere).
    pub fn head(&self) -> &ProjectionHead {
        &self.head
    }

    /// `get_image_features`: `[B, 3, n, n]` → `[B, projection_dim]` (not normalised).
    pub fn encode_image(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (c, n) = (
            self.vision_config().num_channels,
            self.vision_config().image_size,
        );
        let dims = pixel_values.dims();
        if dims.len() != 4 || dims[1] != c || dims[2] != n || dims[3] != n {
            return Err(Error::Input(format!(
                "pixel values have shape {dims:?}; this encoder takes [B, {c}, {n}, {n}]"
            )));
        }
        Ok(self.head.forward(&self.vision.forward(pixel_values)?)?)
    }

    /// `get_text_features` of `clip.tokenize` rows → `[B, projection_dim]` (not normalised).
    pub fn encode_text(&self, rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        self.text.forward(rows, device)
    }
}
