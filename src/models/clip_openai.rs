//! OpenAI CLIP as `clip.load` builds it from a checkpoint: every size inferred from the state
//! dict exactly as OpenAI's `build_model` does (ResNet or ViT image tower by the presence of
//! `visual.proj`), the image tower ([`ModifiedResNet`] or the OpenAI `VisionTransformer`), and the
//! text tower (token + positional embedding, causal [`ClipTransformer`], `ln_final`, pooling at
//! the arg-max token id, `text_projection`).
//!
//! `build_model` sets the text heads to `transformer_width // 64`; a model built with other
//! head counts (as the test fixture is) needs them from a `clip_dims.json` next to the weights,
//! holding the `CLIP(...)` constructor arguments. Every other value there must agree with the
//! state dict.

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use candle_nn::LayerNorm;
use serde::{Deserialize, Serialize};

use super::clip_resnet::{ModifiedResNet, ResNetDims};
use super::clip_transformer::{layer_norm, ClipTransformer};
pub use super::clip_weights::Weights;
use crate::error::{Error, Result};

/// Name of the optional constructor-arguments file next to an OpenAI CLIP weight file.
pub const DIMS_FILE: &str = "clip_dims.json";

/// `vision_layers`: four stage depths (ResNet) or a layer count (ViT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VisionLayers {
    /// A ModifiedResNet with these four stage depths.
    ResNet([usize; 4]),
    /// A ViT with this many layers.
    Vit(usize),
}

/// The `CLIP(...)` constructor arguments (`clip_dims.json`), as `build_model` infers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipDims {
    /// Width of the joint embedding (1024 for RN50x64).
    pub embed_dim: usize,
    /// Square input size of the image tower.
    pub image_resolution: usize,
    /// The image tower's depth.
    pub vision_layers: VisionLayers,
    /// Width of the image tower.
    pub vision_width: usize,
    /// Patch size of a ViT image tower.
    pub vision_patch_size: Option<usize>,
    /// Text context length (77).
    pub context_length: usize,
    /// Text vocabulary size.
    pub vocab_size: usize,
    /// Width of the text tower.
    pub transformer_width: usize,
    /// Attention heads of the text tower.
    pub transformer_heads: usize,
    /// Layers of the text tower.
    pub transformer_layers: usize,
}

/// Distinct values of the dotted component `idx` among keys starting with `prefix`.
fn count_distinct<'a>(keys: impl Iterator<Item = &'a str>, prefix: &str, idx: usize) -> usize {
    let set: std::collections::HashSet<&str> = keys
        .filter(|k| k.starts_with(prefix))
        .filter_map(|k| k.split('.').nth(idx))
        .collect();
    set.len()
}

fn exact_sqrt(n: usize) -> Option<usize> {
    let r = ((n as f64).sqrt()).round() as usize;
    (r * r == n).then_some(r)
}

impl ClipDims {
    /// `build_model`'s inference from the state dict.
    pub fn infer(w: &Weights) -> Result<Self> {
        let bad = |msg: String| Error::checkpoint(w.path(), msg);
        let vit = w.shape("visual.proj").is_some();
        let (vision_layers, vision_width, vision_patch_size, image_resolution) = if vit {
            let conv = w.need_shape("visual.conv1.weight")?.to_vec();
            if conv.len() != 4 {
                return Err(bad(format!(
                    "visual.conv1.weight has shape {conv:?}, expected 4 dims"
                )));
            }
            let layers = w
                .keys()
                .filter(|k| k.starts_with("visual.") && k.ends_with(".attn.in_proj_weight"))
                .count();
            let pos = w.need_shape("visual.positional_embedding")?[0];
            let grid = exact_sqrt(pos.saturating_sub(1)).ok_or_else(|| {
                bad(format!(
                    "visual.positional_embedding has {pos} rows, not 1 + a square"
                ))
            })?;
            (
                VisionLayers::Vit(layers),
                conv[0],
                Some(conv[3]),
                conv[3] * grid,
            )
        } else {
            let mut layers = [0usize; 4];
            for (b, l) in layers.iter_mut().enumerate() {
                *l = count_distinct(w.keys(), &format!("visual.layer{}.", b + 1), 2);
            }
            let width = w.need_shape("visual.layer1.0.conv1.weight")?[0];
            let pos = w.need_shape("visual.attnpool.positional_embedding")?[0];
            let out = exact_sqrt(pos.saturating_sub(1)).ok_or_else(|| {
                bad(format!(
                    "visual.attnpool.positional_embedding has {pos} rows, not 1 + a square"
                ))
            })?;
            (VisionLayers::ResNet(layers), width, None, out * 32)
        };
        let tp = w.need_shape("text_projection")?;
        if tp.len() != 2 {
            return Err(bad(format!(
                "text_projection has shape {tp:?}, expected 2 dims"
            )));
        }
        let embed_dim = tp[1];
        let transformer_width = w.need_shape("ln_final.weight")?[0];
        Ok(Self {
            embed_dim,
            image_resolution,
            vision_layers,
            vision_width,
            vision_patch_size,
            context_length: w.need_shape("positional_embedding")?[0],
            vocab_size: w.need_shape("token_embedding.weight")?[0],
            transformer_width,
            transformer_heads: transformer_width / 64,
            transformer_layers: count_distinct(w.keys(), "transformer.resblocks.", 2),
        })
    }

    /// [`ClipDims::infer`], with the head count taken from `given` (a `clip_dims.json`), whose
    /// other values must agree with the state dict.
    pub fn infer_with(w: &Weights, given: Option<(&Path, &ClipDims)>) -> Result<Self> {
        let mut d = Self::infer(w)?;
        if let Some((path, g)) = given {
            let mut want = g.clone();
            want.transformer_heads = d.transformer_heads;
            if want != d {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    msg: format!("disagrees with the state dict {}: the file says {g:?}, the tensors imply {d:?}", w.path().display()),
                });
            }
            d.transformer_heads = g.transformer_heads;
        }
        if d.transformer_heads == 0 || d.transformer_width % d.transformer_heads != 0 {
            return Err(Error::checkpoint(
                w.path(),
                format!(
                    "text width {} cannot be split into {} heads (build_model uses width // 64; give the head count in {DIMS_FILE})",
                    d.transformer_width, d.transformer_heads
                ),
            ));
        }
        Ok(d)
    }

    /// The image tower's attention heads, as `CLIP.__init__` computes them.
    pub fn vision_heads(&self) -> usize {
        match self.vision_layers {
            VisionLayers::ResNet(_) => self.vision_width * 32 / 64,
            VisionLayers::Vit(_) => self.vision_width / 64,
        }
    }

    /// The OpenAI model name these sizes belong to (`RN50x64`, `ViT-B/32`, …), or a description.
    pub fn name(&self) -> String {
        let known: &[(&str, VisionLayers, usize, usize, usize)] = &[
            ("RN50", VisionLayers::ResNet([3, 4, 6, 3]), 64, 224, 1024),
            ("RN101", VisionLayers::ResNet([3, 4, 23, 3]), 64, 224, 512),
            ("RN50x4", VisionLayers::ResNet([4, 6, 10, 6]), 80, 288, 640),
            ("RN50x16", VisionLayers::ResNet([6, 8, 18, 8]), 96, 384, 768),
            (
                "RN50x64",
                VisionLayers::ResNet([3, 15, 36, 10]),
                128,
                448,
                1024,
            ),
            ("ViT-B/32", VisionLayers::Vit(12), 768, 224, 512),
            ("ViT-B/16", VisionLayers::Vit(12), 768, 224, 512),
            ("ViT-L/14", VisionLayers::Vit(24), 1024, 224, 768),
            ("ViT-L/14@336px", VisionLayers::Vit(24), 1024, 336, 768),
        ];
        let patch_ok = |name: &str| match (name, self.vision_patch_size) {
            ("ViT-B/32", Some(p)) => p == 32,
            ("ViT-B/16", Some(p)) => p == 16,
            (n, Some(p)) if n.starts_with("ViT-L") => p == 14,
            (_, None) => true,
            _ => false,
        };
        for (name, layers, width, res, embed) in known {
            if *layers == self.vision_layers
                && *width == self.vision_width
                && *res == self.image_resolution
                && *embed == self.embed_dim
                && patch_ok(name)
            {
                return (*name).to_string();
            }
        }
        match &self.vision_layers {
            VisionLayers::ResNet(l) => format!(
                "RN(layers={l:?},width={},res={},embed={})",
                self.vision_width, self.image_resolution, self.embed_dim
            ),
            VisionLayers::Vit(l) => format!(
                "ViT(layers={l},width={},patch={},res={},embed={})",
                self.vision_width,
                self.vision_patch_size.unwrap_or(0),
                self.image_resolution,
                self.embed_dim
            ),
        }
    }
}

/// OpenAI's `VisionTransformer` image tower.
#[derive(Debug, Clone)]
pub struct OpenAiVit {
    conv1: Tensor,
    patch: usize,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    transformer: ClipTransformer,
    ln_post: LayerNorm,
    proj: Tensor,
}

impl OpenAiVit {
    fn load(w: &Weights, d: &ClipDims, layers: usize) -> Result<Self> {
        let width = d.vision_width;
        let patch = d.vision_patch_size.unwrap_or(0);
        let grid = d.image_resolution / patch.max(1);
        Ok(Self {
            conv1: w.get("visual.conv1.weight", &[width, 3, patch, patch])?,
            patch,
            class_embedding: w.get("visual.class_embedding", &[width])?,
            positional_embedding: w
                .get("visual.positional_embedding", &[grid * grid + 1, width])?,
            ln_pre: layer_norm(w, "visual.ln_pre", width)?,
            transformer: ClipTransformer::load(
                w,
                "visual.transformer",
                width,
                layers,
                d.vision_heads(),
            )?,
            ln_post: layer_norm(w, "visual.ln_post", width)?,
            proj: w.get("visual.proj", &[width, d.embed_dim])?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        let x = x.conv2d(&self.conv1, 0, self.patch, 1, 1)?;
        let x = x.flatten_from(2)?.transpose(1, 2)?;
        let width = x.dim(2)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, width))?
            .broadcast_as((b, 1, width))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.positional_embedding)?;
        let x = self.ln_pre.forward(&x)?;
        let x = self.transformer.forward(&x, None)?;
        let x = self.ln_post.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        x.matmul(&self.proj)
    }
}

/// The image tower of an OpenAI CLIP.
#[derive(Debug, Clone)]
pub enum ClipVisual {
    /// OpenAI's ModifiedResNet.
    ResNet(ModifiedResNet),
    /// OpenAI's VisionTransformer.
    Vit(OpenAiVit),
}

/// OpenAI's text tower.
#[derive(Debug, Clone)]
pub struct ClipText {
    token_embedding: Tensor,
    positional_embedding: Tensor,
    transformer: ClipTransformer,
    ln_final: LayerNorm,
    text_projection: Tensor,
}

impl ClipText {
    fn load(w: &Weights, d: &ClipDims) -> Result<Self> {
        let tw = d.transformer_width;
        Ok(Self {
            token_embedding: w.get("token_embedding.weight", &[d.vocab_size, tw])?,
            positional_embedding: w.get("positional_embedding", &[d.context_length, tw])?,
            transformer: ClipTransformer::load(
                w,
                "transformer",
                tw,
                d.transformer_layers,
                d.transformer_heads,
            )?,
            ln_final: layer_norm(w, "ln_final", tw)?,
            text_projection: w.get("text_projection", &[tw, d.embed_dim])?,
        })
    }

    /// Token ids (`clip.tokenize` rows, all of one length ≤ context) → text features `[B, E]`.
    fn forward(&self, rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let b = rows.len();
        let l = rows.first().map_or(0, Vec::len);
        let ctx = self.positional_embedding.dim(0)?;
        if l == 0 || l > ctx || rows.iter().any(|r| r.len() != l) {
            return Err(Error::Input(format!(
                "token rows must all have one length between 1 and the context {ctx}"
            )));
        }
        let vocab = self.token_embedding.dim(0)?;
        if let Some(bad) = rows.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, b * l, device)?;
        let x = self
            .token_embedding
            .index_select(&ids, 0)?
            .reshape((b, l, ()))?;
        let x = x.broadcast_add(&self.positional_embedding.narrow(0, 0, l)?)?;
        let mask: Vec<f32> = (0..l)
            .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (l, l), device)?;
        let x = self.transformer.forward(&x, Some(&mask))?;
        let x = self.ln_final.forward(&x)?;
        // `text.argmax(dim=-1)`: the first position of the largest id (the EOT token).
        let pooled = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut best = 0;
                for (j, &t) in r.iter().enumerate() {
                    if t > r[best] {
                        best = j;
                    }
                }
                x.get(i)?.get(best)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&pooled, 0)?.matmul(&self.text_projection)?)
    }
}

/// An OpenAI CLIP model (`clip.model.CLIP`), fp32.
#[derive(Debug, Clone)]
pub struct OpenAiClip {
    dims: ClipDims,
    visual: ClipVisual,
    text: ClipText,
    device: Device,
}

impl OpenAiClip {
    /// Loads a weight file (TorchScript `.pt`, state-dict pickle or safetensors); a
    /// [`DIMS_FILE`] in the same folder supplies the head count where `build_model` cannot.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let map = crate::checkpoint::read_state_dict(path, device)?;
        let weights = Weights::new(path, map);
        let dims_path = path
            .parent()
            .map(|p| p.join(DIMS_FILE))
            .filter(|p| p.is_file());
        let given = match &dims_path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                let d: ClipDims = serde_json::from_str(&text).map_err(|e| Error::Config {
                    path: p.clone(),
                    msg: e.to_string(),
                })?;
                Some(d)
            }
            None => None,
        };
        let dims = ClipDims::infer_with(&weights, dims_path.as_deref().zip(given.as_ref()))?;
        Self::from_weights(&weights, dims, device)
    }

    /// Builds the model from its weights and sizes.
    pub fn from_weights(w: &Weights, dims: ClipDims, device: &Device) -> Result<Self> {
        let visual = match &dims.vision_layers {
            VisionLayers::ResNet(layers) => ClipVisual::ResNet(ModifiedResNet::load(
                w,
                &ResNetDims {
                    layers: *layers,
                    width: dims.vision_width,
                    output_dim: dims.embed_dim,
                    heads: dims.vision_heads(),
                    input_resolution: dims.image_resolution,
                },
            )?),
            VisionLayers::Vit(layers) => ClipVisual::Vit(OpenAiVit::load(w, &dims, *layers)?),
        };
        let text = ClipText::load(w, &dims)?;
        Ok(Self {
            dims,
            visual,
            text,
            device: device.clone(),
        })
    }

    /// The model's sizes.
    pub fn dims(&self) -> &ClipDims {
        &self.dims
    }

    /// `encode_image`: `[B, 3, R, R]` → `[B, embed_dim]` (not normalised).
    pub fn encode_image(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let r = self.dims.image_resolution;
        let dims = pixel_values.dims();
        if dims.len() != 4 || dims[1] != 3 || dims[2] != r || dims[3] != r {
            return Err(Error::Input(format!(
                "pixel values have shape {dims:?}; this encoder takes [B, 3, {r}, {r}]"
            )));
        }
        Ok(match &self.visual {
            ClipVisual::ResNet(m) => m.forward(pixel_values)?,
            ClipVisual::Vit(m) => m.forward(pixel_values)?,
        })
    }

    /// `encode_text` of `clip.tokenize` rows → `[B, embed_dim]` (not normalised).
    pub fn encode_text(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        self.text.forward(rows, &self.device)
    }
}
