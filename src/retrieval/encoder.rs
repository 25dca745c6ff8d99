//! Retrieval encoders: the CLIP models that embed query images and datastore captions into one
//! space. [`RetrievalEncoder`] wraps an OpenAI CLIP ([`OpenAiClip`]: ResNet or ViT, from a `.pt`
//! TorchScript archive, a state-dict pickle or safetensors) or a Hugging Face `CLIPModel`
//! (a folder or hub id such as `openai/clip-vit-base-patch32`), with each model's own
//! preprocessing (`clip._transform(n)` for OpenAI, `CLIPFeatureExtractor` for HF) and CLIP's
//! BPE (`clip.tokenize`, context 77), and returns rows L2-normalised as `faiss.normalize_L2`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{LayerNorm, Module, VarBuilder};
use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::clip::vision_model::ClipVisionConfig;
use candle_transformers::models::clip::{ClipConfig, ClipModel};
use serde::Deserialize;
use smallcap_datastore::store::normalize_l2;

use crate::config::VisionConfig;
use crate::error::{Error, Result};
use crate::hub;
use crate::models::clip_openai::OpenAiClip;
use crate::models::clip_tokenizer::{ClipTokenizer, CONTEXT_LENGTH};

/// Separates the model description from the spec it was loaded from in [`RetrievalEncoder::identity`].
const IDENTITY_SEP: &str = " @ ";

/// An image/text encoder for retrieval. `Send + Sync`: share one between threads.
pub struct RetrievalEncoder {
    model: Model,
    description: String,
    spec: String,
    device: Device,
}

enum Model {
    OpenAi(OpenAiClip),
    Hf {
        model: ClipModel,
        image_size: usize,
        dim: usize,
        context: usize,
        /// `vision_model.post_layernorm` and `visual_projection.weight`, for
        /// [`RetrievalEncoder::encode_from_vision_states`].
        head: (LayerNorm, Tensor),
    },
}

/// `visual_projection(post_layernorm(states[:, 0]))`, L2-normalised: HF `get_image_features`
/// from a vision tower's `last_hidden_state` `[B, T, H]` (`proj` is `[E, H]`).
pub fn project_class_token(states: &Tensor, ln: &LayerNorm, proj: &Tensor) -> Result<Vec<f32>> {
    let cls = states.narrow(1, 0, 1)?.squeeze(1)?;
    let feats = ln.forward(&cls)?.matmul(&proj.t()?)?;
    let dim = proj.dim(0)?;
    let mut v = feats.flatten_all()?.to_vec1::<f32>()?;
    normalize_l2(&mut v, dim);
    Ok(v)
}

/// The parts of an HF `CLIPModel` `config.json` the encoder needs (HF defaults where absent).
#[derive(Deserialize)]
struct HfClipConfig {
    #[serde(default = "d512")]
    projection_dim: usize,
    #[serde(default)]
    text_config: HfTextConfig,
}
fn d512() -> usize {
    512
}
#[derive(Deserialize)]
#[serde(default)]
struct HfTextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
}
impl Default for HfTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
        }
    }
}
impl RetrievalEncoder {
    /// Loads an encoder: a file is an OpenAI CLIP checkpoint (`RN50x64.pt`, a state-dict
    /// pickle or safetensors, with an optional `clip_dims.json` beside it); a folder or a hub
    /// id is a Hugging Face `CLIPModel` (`config.json` + weights).
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_file() {
            let model = OpenAiClip::load(path, device)?;
            let canonical = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
            return Ok(Self {
                description: format!("openai-clip:{}", model.dims().name()),
                model: Model::OpenAi(model),
                spec: canonical.display().to_string(),
                device: device.clone(),
            });
        }
        let files = hub::model_files(spec)?;
        let text =
            std::fs::read_to_string(&files.config).map_err(|e| Error::io(&files.config, e))?;
        let not_clip = |e: String| Error::Config {
            path: files.config.clone(),
            msg: format!("not a CLIPModel config: {e}"),
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| not_clip(e.to_string()))?;
        let cfg: HfClipConfig =
            serde_json::from_value(json.clone()).map_err(|e| not_clip(e.to_string()))?;
        // The one CLIPVisionConfig reader, the captioner's (transformers' defaults, checked).
        let v = &VisionConfig::from_value(&json).map_err(not_clip)?;
        let act = &cfg.text_config.hidden_act;
        if act != "quick_gelu" {
            return Err(Error::Config {
                path: files.config.clone(),
                msg: format!("hidden_act {act:?} is not supported (only quick_gelu)"),
            });
        }
        let t = &cfg.text_config;
        let c = ClipConfig {
            text_config: ClipTextConfig {
                vocab_size: t.vocab_size,
                embed_dim: t.hidden_size,
                activation: Activation::QuickGelu,
                intermediate_size: t.intermediate_size,
                max_position_embeddings: t.max_position_embeddings,
                pad_with: None,
                num_hidden_layers: t.num_hidden_layers,
                num_attention_heads: t.num_attention_heads,
                projection_dim: cfg.projection_dim,
            },
            vision_config: ClipVisionConfig {
                embed_dim: v.hidden_size,
                activation: Activation::QuickGelu,
                intermediate_size: v.intermediate_size,
                num_hidden_layers: v.num_hidden_layers,
                num_attention_heads: v.num_attention_heads,
                projection_dim: cfg.projection_dim,
                num_channels: v.num_channels,
                image_size: v.image_size,
                patch_size: v.patch_size,
            },
            logit_scale_init_value: 2.6592,
            image_size: v.image_size,
        };
        let map = crate::checkpoint::read_state_dict(&files.weights, device)?;
        let weights = crate::models::clip_openai::Weights::new(&files.weights, map.clone());
        let h = v.hidden_size;
        let head = (
            LayerNorm::new(
                weights.get("vision_model.post_layernorm.weight", &[h])?,
                weights.get("vision_model.post_layernorm.bias", &[h])?,
                1e-5,
            ),
            weights.get("visual_projection.weight", &[cfg.projection_dim, h])?,
        );
        drop(weights);
        let vb = VarBuilder::from_tensors(map, DType::F32, device);
        let model = ClipModel::new(vb, &c)
            .map_err(|e| Error::checkpoint(&files.weights, format!("not a CLIPModel: {e}")))?;
        let spec = match Path::new(spec).is_dir() {
            true => std::fs::canonicalize(spec)
                .map_err(|e| Error::io(Path::new(spec), e))?
                .display()
                .to_string(),
            false => spec.to_string(),
        };
        Ok(Self {
            description: format!(
                "hf-clip:ViT(width={},layers={},patch={},res={},embed={})",
                v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size, cfg.projection_dim
            ),
            model: Model::Hf {
                model,
                image_size: v.image_size,
                dim: cfg.projection_dim,
                context: t.max_position_embeddings.min(CONTEXT_LENGTH),
                head,
            },
            spec,
            device: device.clone(),
        })
    }

    /// `"<description> @ <spec>"`, recorded in datastore manifests: the description
    /// (`openai-clip:RN50x64`) says which embedding space the store is in, the spec (an absolute
    /// path or a hub id) where to load the encoder again.
    pub fn identity(&self) -> String {
        format!("{}{IDENTITY_SEP}{}", self.description, self.spec)
    }

    /// The model description, e.g. `openai-clip:RN50x64`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The spec recorded in an identity string written by [`RetrievalEncoder::identity`].
    pub fn spec_of_identity(identity: &str) -> Option<&str> {
        identity.split_once(IDENTITY_SEP).map(|(_, s)| s)
    }

    /// The description part of an identity string.
    pub fn description_of_identity(identity: &str) -> &str {
        identity
            .split_once(IDENTITY_SEP)
            .map_or(identity, |(d, _)| d)
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        match &self.model {
            Model::OpenAi(m) => m.dims().embed_dim,
            Model::Hf { dim, .. } => *dim,
        }
    }

    /// The square input size of the image tower.
    pub fn image_size(&self) -> usize {
        match &self.model {
            Model::OpenAi(m) => m.dims().image_resolution,
            Model::Hf { image_size, .. } => *image_size,
        }
    }

    /// The model's own preprocessing of a decoded image: `[3, n, n]` CHW values.
    pub fn preprocess(&self, img: &smallcap_image::SourceImage) -> Vec<f32> {
        let n = self.image_size() as u32;
        match &self.model {
            Model::OpenAi(_) => smallcap_image::clip_transform(img, n),
            Model::Hf { .. } => smallcap_image::clip_feature_extractor(&img.to_rgb(), n),
        }
    }

    /// Preprocessed images (each `[3, n, n]` as [`RetrievalEncoder::preprocess`] returns) →
    /// L2-normalised rows, `images.len() × dim`.
    pub fn encode_pixels(&self, images: &[Vec<f32>]) -> Result<Vec<f32>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.image_size();
        let flat: Vec<f32> = images.iter().flatten().copied().collect();
        if flat.len() != images.len() * 3 * n * n {
            return Err(Error::Input(format!("each image must be [3, {n}, {n}]")));
        }
        let x = Tensor::from_vec(flat, (images.len(), 3, n, n), &self.device)?;
        self.encode_image_tensor(&x)
    }

    /// `[B, 3, n, n]` pixel values → L2-normalised rows.
    pub fn encode_image_tensor(&self, x: &Tensor) -> Result<Vec<f32>> {
        let feats = match &self.model {
            Model::OpenAi(m) => m.encode_image(x)?,
            Model::Hf { model, .. } => model.get_image_features(x)?,
        };
        self.normalised(&feats)
    }

    /// For a Hugging Face CLIP encoder whose vision tower is the captioning encoder's (SmallCap's
    /// frozen `openai/clip-vit-base-patch32`): the image rows from the captioner's
    /// `last_hidden_state` `[B, T, H]`, so that retrieval costs only the class token's
    /// `post_layernorm` and `visual_projection` on top of captioning.
    pub fn encode_from_vision_states(&self, states: &Tensor) -> Result<Vec<f32>> {
        match &self.model {
            Model::Hf { head: (ln, proj), .. } => {
                let h = proj.dim(1)?;
                if states.rank() != 3 || states.dim(2)? != h {
                    return Err(Error::Input(format!(
                        "vision states have shape {:?}; this encoder's tower has width {h}",
                        states.dims()
                    )));
                }
                project_class_token(states, ln, proj)
            }
            Model::OpenAi(_) => Err(Error::Input(format!(
                "{} does not share the captioning encoder's vision tower (use a Hugging Face CLIPModel such as openai/clip-vit-base-patch32)",
                self.description
            ))),
        }
    }

    /// Decoded images → L2-normalised rows.
    pub fn encode_images(&self, images: &[smallcap_image::SourceImage]) -> Result<Vec<f32>> {
        let px: Vec<Vec<f32>> = images.iter().map(|i| self.preprocess(i)).collect();
        self.encode_pixels(&px)
    }

    /// `clip.tokenize(texts, truncate=True)` rows for this model's context.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let ctx = match &self.model {
            Model::OpenAi(m) => m.dims().context_length,
            Model::Hf { context, .. } => *context,
        };
        ClipTokenizer::global().tokenize_batch(texts, ctx, true)
    }

    /// Texts → L2-normalised rows (`clip.tokenize` with truncation, `encode_text`).
    pub fn encode_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.tokenize(texts)?;
        let feats = match &self.model {
            Model::OpenAi(m) => m.encode_text(&rows)?,
            Model::Hf { model, .. } => {
                let l = rows[0].len();
                let flat: Vec<u32> = rows.into_iter().flatten().collect();
                let ids = Tensor::from_vec(flat, (texts.len(), l), &self.device)?;
                model.get_text_features(&ids)?
            }
        };
        self.normalised(&feats)
    }

    fn normalised(&self, feats: &Tensor) -> Result<Vec<f32>> {
        let mut v = feats
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        normalize_l2(&mut v, self.dim());
        Ok(v)
    }
}
