//! The CLIP ViT vision tower SmallCap encodes images with (HF `CLIPVisionTransformer`).
//!
//! SmallCap uses `last_hidden_state` — the output of the last encoder layer, before
//! `post_layernorm` and without any projection — as the decoder's `encoder_hidden_states`.
//! The transformer itself is candle-transformers' implementation of the HF model.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::Activation;
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};

use crate::config::VisionConfig;

/// Stores every linear weight of the tower under `prefix` (`[out, in]`, as `nn.Linear` keeps it)
/// as a transposed view of an `[in, out]` row-major copy. The transformer multiplies by
/// `weight.t()`, which then is row-major: gemm streams that several times faster than a
/// transposed operand. Values are unchanged.
pub fn lay_out_linear_weights(
    tensors: &mut std::collections::HashMap<String, Tensor>,
    prefix: &str,
) -> candle_core::Result<()> {
    for (name, t) in tensors.iter_mut() {
        let linear = name.starts_with(prefix)
            && name.ends_with(".weight")
            && (name.contains("_proj.") || name.contains(".fc1.") || name.contains(".fc2."));
        if linear && t.rank() == 2 {
            *t = t.t()?.contiguous()?.t()?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct ClipVision {
    inner: ClipVisionTransformer,
    num_layers: usize,
}

impl ClipVision {
    /// `vb` points at the tower's root (`encoder` in a SmallCap checkpoint).
    pub fn load(vb: VarBuilder, cfg: &VisionConfig) -> candle_core::Result<Self> {
        let c = ClipVisionConfig {
            embed_dim: cfg.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: cfg.intermediate_size,
            num_hidden_layers: cfg.num_hidden_layers,
            num_attention_heads: cfg.num_attention_heads,
            projection_dim: cfg.hidden_size,
            num_channels: cfg.num_channels,
            image_size: cfg.image_size,
            patch_size: cfg.patch_size,
        };
        Ok(Self {
            inner: ClipVisionTransformer::new(vb, &c)?,
            num_layers: cfg.num_hidden_layers,
        })
    }

    /// `pixel_values` `[B, 3, size, size]` → `last_hidden_state` `[B, tokens, hidden]`.
    pub fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        let mut states = self.inner.output_hidden_states(pixel_values)?;
        states.truncate(self.num_layers);
        match states.pop() {
            Some(last) => Ok(last),
            // A tower without layers outputs its pre-LN embeddings.
            None => candle_core::bail!("the vision tower has no layers"),
        }
    }
}
