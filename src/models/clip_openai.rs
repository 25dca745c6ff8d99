//! OpenAI CLIP as `clip.load` builds it from a checkpoint: every size inferred from the state
//! dict exactly as OpenAI's `build_model` does (ResNet or ViT image tower by the presence of
//! `visual.proj`), the image tower ([`ModifiedResNet`], or a `VisionTransformer` run as
//! [`ClipVision`]), and the text tower ([`ClipText`]).
//!
//! `build_model` sets the text heads to `transformer_width // 64`; a model built with other
//! head counts (as the test fixture is) needs them from a `clip_dims.json` next to the weights,
//! holding the `CLIP(...)` constructor arguments. Every other value there must agree with the
//! state dict.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::clip_layout::openai_vit_as_hf;
use super::clip_resnet::{ModifiedResNet, ResNetDims};
use super::clip_text::{ClipText, TextDims};
use super::clip_vision::{ClipVision, ProjectionHead};
pub use super::clip_weights::Weights;
use crate::config::VisionConfig;
use crate::error::{Error, Result};
use crate::kernels::bf16_gemm::Split;
use crate::precision::{ConvKernel, EncoderPrecision};

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
    pub(crate) fn infer_with(w: &Weights, given: Option<(&Path, &ClipDims)>) -> Result<Self> {
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

    /// The text tower's sizes.
    pub fn text_dims(&self) -> TextDims {
        TextDims {
            vocab_size: self.vocab_size,
            context_length: self.context_length,
            width: self.transformer_width,
            layers: self.transformer_layers,
            heads: self.transformer_heads,
            embed_dim: self.embed_dim,
        }
    }

    /// A ViT image tower's sizes as a `CLIPVisionConfig` (the MLP width read from the weights;
    /// `build_model` makes it 4 × width), or an error for a ResNet or a width that does not
    /// split into `width / 64` heads.
    fn vit_config(&self, w: &Weights) -> Result<VisionConfig> {
        let bad = |msg: String| Error::checkpoint(w.path(), msg);
        let (VisionLayers::Vit(layers), Some(patch)) =
            (&self.vision_layers, self.vision_patch_size)
        else {
            return Err(bad("not a ViT image tower".into()));
        };
        let (width, heads) = (self.vision_width, self.vision_heads());
        if heads == 0
            || !width.is_multiple_of(heads)
            || patch == 0
            || !self.image_resolution.is_multiple_of(patch)
        {
            return Err(bad(format!(
                "a ViT of width {width} (so {heads} heads), patch {patch} and resolution {} cannot be built",
                self.image_resolution
            )));
        }
        let intermediate_size = match w.shape("visual.transformer.resblocks.0.mlp.c_fc.weight") {
            Some(s) => s[0],
            None => 4 * width,
        };
        Ok(VisionConfig {
            hidden_size: width,
            intermediate_size,
            num_hidden_layers: *layers,
            num_attention_heads: heads,
            num_channels: 3,
            image_size: self.image_resolution,
            patch_size: patch,
            layer_norm_eps: 1e-5,
        })
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

/// The image tower of an OpenAI CLIP.
#[derive(Debug, Clone)]
pub(crate) enum ClipVisual {
    /// OpenAI's ModifiedResNet.
    ResNet(ModifiedResNet),
    /// OpenAI's VisionTransformer, run as the crate's one ViT ([`ClipVision`]) on its weights
    /// renamed by `clip_layout`; `ln_post` and `proj` are the [`ProjectionHead`].
    Vit(ClipVision, ProjectionHead),
}

/// An OpenAI CLIP model (`clip.model.CLIP`), fp32.
#[derive(Debug, Clone)]
pub struct OpenAiClip {
    dims: ClipDims,
    /// Left out when the model is loaded for text queries only.
    visual: Option<ClipVisual>,
    /// Left out when the model is loaded for image queries only.
    text: Option<ClipText>,
    device: Device,
}

/// Which queries a CLIP model is loaded to encode; the tower they do not need is left out, which
/// saves its loading, packing and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Queries {
    /// Images and texts.
    #[default]
    All,
    /// Texts only (datastore builds, text retrieval): no image tower.
    Texts,
    /// Images only (captioning with live retrieval): no text tower.
    Images,
}

impl OpenAiClip {
    /// Loads a weight file (TorchScript `.pt`, state-dict pickle or safetensors); a
    /// [`DIMS_FILE`] in the same folder supplies the head count where `build_model` cannot.
    /// `precision` chooses how the ResNet image tower computes ([`EncoderPrecision`]).
    pub fn load(path: &Path, device: &Device, precision: EncoderPrecision) -> Result<Self> {
        Self::load_kernel(path, device, precision.conv_kernel(), Queries::All)
    }

    /// [`OpenAiClip::load`] for the `queries` given: the tower they do not need is left out
    /// ([`Queries`]).
    pub fn load_for(
        path: &Path,
        device: &Device,
        precision: EncoderPrecision,
        queries: Queries,
    ) -> Result<Self> {
        Self::load_kernel(path, device, precision.conv_kernel(), queries)
    }

    /// [`OpenAiClip::load`] with the ResNet's kernel given.
    pub(crate) fn load_kernel(
        path: &Path,
        device: &Device,
        kernel: ConvKernel,
        queries: Queries,
    ) -> Result<Self> {
        let weights = Weights::open(path, device)?;
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
        Self::from_weights_kernel(&weights, dims, device, kernel, queries)
    }

    /// Builds the model from its weights and sizes.
    pub fn from_weights(
        w: &Weights,
        dims: ClipDims,
        device: &Device,
        precision: EncoderPrecision,
    ) -> Result<Self> {
        Self::from_weights_kernel(w, dims, device, precision.conv_kernel(), Queries::All)
    }

    fn from_weights_kernel(
        w: &Weights,
        dims: ClipDims,
        device: &Device,
        kernel: ConvKernel,
        queries: Queries,
    ) -> Result<Self> {
        let kernel = match device {
            Device::Cpu => kernel,
            _ => ConvKernel::F32,
        };
        // The text tower takes the blocks for bf16 only: its rows are few per product (a
        // caption's tokens), where f32 split into parts gains nothing over f32 GEMMs.
        let text_kernel = match kernel {
            ConvKernel::Blocks(_, Split::One) => kernel,
            _ => ConvKernel::F32,
        };
        let visual = match &dims.vision_layers {
            _ if queries == Queries::Texts => None,
            VisionLayers::ResNet(layers) => Some(ClipVisual::ResNet(ModifiedResNet::load(
                w,
                &ResNetDims {
                    layers: *layers,
                    width: dims.vision_width,
                    output_dim: dims.embed_dim,
                    heads: dims.vision_heads(),
                    input_resolution: dims.image_resolution,
                },
                kernel,
            )?)),
            VisionLayers::Vit(_) => {
                let cfg = dims.vit_config(w)?;
                let map = openai_vit_as_hf(w, &cfg, dims.embed_dim)?;
                let vb = VarBuilder::from_tensors(map, DType::F32, device);
                let not_vit = |e: candle_core::Error| Error::checkpoint(w.path(), e.to_string());
                Some(ClipVisual::Vit(
                    ClipVision::load(vb.pp("vision_model"), &cfg).map_err(not_vit)?,
                    ProjectionHead::load(vb, &cfg, dims.embed_dim).map_err(not_vit)?,
                ))
            }
        };
        let text = match queries {
            Queries::Images => None,
            Queries::All | Queries::Texts => {
                Some(ClipText::load(w, &dims.text_dims(), text_kernel)?)
            }
        };
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
            Some(ClipVisual::ResNet(m)) => m.forward(pixel_values)?,
            Some(ClipVisual::Vit(tower, head)) => head.forward(&tower.forward(pixel_values)?)?,
            None => return Err(Error::Input(
                "this CLIP model was loaded for text queries only: its image tower was left out"
                    .into(),
            )),
        })
    }

    /// `encode_text` of `clip.tokenize` rows → `[B, embed_dim]` (not normalised).
    pub fn encode_text(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        match &self.text {
            Some(text) => text.forward(rows, &self.device),
            None => Err(Error::Input(
                "this CLIP model was loaded for image queries only: its text tower was left out"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bf16_gemm::{Level, Split};

    /// The fixture's ResNet (every convolution shape: the stride-2 stem through im2col, 3 × 3,
    /// 1 × 1, pooling, downsampling, channel counts below 32) against the reference's query
    /// embeddings, with each kernel this CPU runs: f32 (Winograd 3 × 3 convolutions and GEMMs)
    /// and three-part split products
    /// within the reference's 1e-4, two parts and bf16 within the bounds BENCHMARKS.md reports.
    #[test]
    fn every_resnet_kernel_matches_the_reference_embeddings() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smallcap-tiny/retrieval");
        let t =
            candle_core::safetensors::load(dir.join("expected_tensors.safetensors"), &Device::Cpu)
                .unwrap();
        let mut kernels = vec![(ConvKernel::F32, 1e-4)];
        for level in [Level::Amx, Level::Avx512, Level::Portable] {
            if !level.runs_here() {
                eprintln!(
                    "note: this CPU cannot run the {level:?} bf16 kernel; it is not tested here"
                );
                continue;
            }
            kernels.push((ConvKernel::Blocks(level, Split::Three), 1e-4));
            kernels.push((ConvKernel::Blocks(level, Split::Two), 1e-3));
            kernels.push((ConvKernel::Blocks(level, Split::One), 3e-2));
        }
        for (kernel, bound) in kernels {
            let model = OpenAiClip::load_kernel(
                &dir.join("clip_resnet.pt"),
                &Device::Cpu,
                kernel,
                Queries::All,
            )
            .unwrap();
            let mut n = 0;
            let mut worst = 0f32;
            for (name, px) in t.iter().filter(|(k, _)| k.ends_with(".pixel_values")) {
                let stem = name.trim_end_matches(".pixel_values");
                let mut q = model
                    .encode_image(&px.unsqueeze(0).unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let norm = q.iter().map(|v| v * v).sum::<f32>().sqrt();
                q.iter_mut().for_each(|v| *v /= norm);
                let want = t[&format!("{stem}.query_embedding")]
                    .to_vec1::<f32>()
                    .unwrap();
                let d = q
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f32>()
                    .sqrt();
                let rel = d / want.iter().map(|v| v * v).sum::<f32>().sqrt();
                worst = worst.max(rel);
                n += 1;
            }
            eprintln!("{kernel:?}: worst relative error {worst:e} over {n} images");
            assert_eq!(n, 4);
            assert!(
                worst < bound,
                "{kernel:?}: relative error {worst} (bound {bound})"
            );
        }
    }

    /// `CLIP.__init__` for ViT-B/32: `vision_heads = vision_width // 64`, MLP 4 × width, 7 × 7
    /// patches of 32 px plus the class token.
    #[test]
    fn a_vit_b32_is_sized_as_build_model_sizes_it() {
        let dims = ClipDims {
            embed_dim: 512,
            image_resolution: 224,
            vision_layers: VisionLayers::Vit(12),
            vision_width: 768,
            vision_patch_size: Some(32),
            context_length: 77,
            vocab_size: 49408,
            transformer_width: 512,
            transformer_heads: 8,
            transformer_layers: 12,
        };
        let w = Weights::new(Path::new("<none>"), Default::default());
        let cfg = dims.vit_config(&w).unwrap();
        assert_eq!(
            (
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.num_hidden_layers
            ),
            (768, 3072, 12)
        );
        assert_eq!((cfg.num_attention_heads, cfg.num_positions()), (12, 50));
        assert_eq!(dims.name(), "ViT-B/32");
        let resnet = ClipDims {
            vision_layers: VisionLayers::ResNet([3, 4, 6, 3]),
            vision_patch_size: None,
            ..dims
        };
        let e = resnet.vit_config(&w).unwrap_err().to_string();
        assert!(e.contains("not a ViT"), "{e}");
    }
}
