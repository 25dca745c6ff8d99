//! `config.json` of a SmallCap checkpoint: the top-level `SmallCapConfig` with its CLIP vision
//! `encoder` and its `decoder` section (GPT-2, `this_gpt2`; OPT, `this_opt`; XGLM, `this_xglm`;
//! chosen by the section's `model_type`), parsed and checked for consistency.
//!
//! Every model dimension comes from here; nothing is hard-coded to the published sizes.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Reduce factors the reference supports (`PARAMS2REDUCE_FACTOR` in train.py).
pub const REDUCE_FACTORS: [usize; 5] = [1, 2, 4, 8, 16];

/// The CLIP vision tower's sizes (HF `CLIPVisionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Width of the tower (768 for ViT-B/32).
    pub hidden_size: usize,
    /// Width of the MLPs.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Square input size in pixels.
    pub image_size: usize,
    /// Patch size in pixels.
    pub patch_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Number of encoder tokens: the class token plus one per patch (50 for ViT-B/32 at 224 px).
    pub fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

impl VisionConfig {
    /// A `CLIPVisionConfig` (or a `CLIPConfig` with `vision_config`) as JSON, checked.
    pub fn from_value(value: &serde_json::Value) -> std::result::Result<Self, String> {
        let vision_value = value.get("vision_config").cloned().unwrap_or(value.clone());
        let v: RawVision = serde_json::from_value(vision_value)
            .map_err(|e| format!("encoder.vision_config: {e}"))?;
        if v.hidden_act != "quick_gelu" {
            return Err(format!(
                "encoder.vision_config.hidden_act: only quick_gelu is supported, found {:?}",
                v.hidden_act
            ));
        }
        if v.layer_norm_eps != 1e-5 {
            return Err(format!(
                "encoder.vision_config.layer_norm_eps: only 1e-5 is supported, found {}",
                v.layer_norm_eps
            ));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "encoder.vision_config: image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "encoder.vision_config: hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        Ok(VisionConfig {
            hidden_size: v.hidden_size,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            num_channels: v.num_channels,
            image_size: v.image_size,
            patch_size: v.patch_size,
            layer_norm_eps: v.layer_norm_eps,
        })
    }
}

/// The decoder families of the reference, by the `model_type` of the `decoder` section.
#[derive(Debug, Clone, PartialEq)]
pub enum DecoderArch {
    /// `this_gpt2` (`src/gpt2.py`): learned positions from 0, pre-LN blocks, `gelu_new`, GPT-2
    /// `Conv1D` weights, cross-attention scaled by its reduced head size.
    Gpt2,
    /// `this_opt` (`src/opt.py`): learned positions offset by 2, pre- or post-LN blocks, ReLU,
    /// `nn.Linear` weights, cross-attention reading 768-wide encoder states and scaled by the
    /// full head size.
    Opt(OptLayout),
    /// `this_xglm` (`src/xglm.py`): sinusoidal positions offset by 2, token embeddings scaled by
    /// `√d_model`, pre-LN blocks, GELU, `nn.Linear` weights, the cross-attention as OPT's.
    Xglm(XglmLayout),
}

/// What an XGLM decoder has beyond the shared sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct XglmLayout {
    /// `scale_embedding`: token embeddings multiplied by `√d_model`.
    pub scale_embedding: bool,
    /// The decoder's `pad_token_id` (1), XGLM's `padding_idx`: a token with this id sits at
    /// position `padding_idx` (a zero row), and the others are numbered from `padding_idx + 1`
    /// without counting it.
    pub padding_idx: u32,
}

/// What an OPT decoder has beyond the shared sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct OptLayout {
    /// Width of the token embeddings (`word_embed_proj_dim`): `project_in` / `project_out` map
    /// it to and from `hidden_size` when the two differ (opt-350m).
    pub word_embed_proj_dim: usize,
    /// `do_layer_norm_before`: pre-LN blocks (opt-125m and most sizes) or post-LN (opt-350m).
    pub do_layer_norm_before: bool,
    /// Whether the decoder ends with `final_layer_norm` (pre-LN and not
    /// `_remove_final_layer_norm`).
    pub final_layer_norm: bool,
}

/// The width of the encoder states OPT's and XGLM's cross-attention reads: `src/opt.py` and
/// `src/xglm.py` build its `k_proj` / `v_proj` as `nn.Linear(768, …)` whatever the config says.
pub const OPT_CROSS_ATTENTION_INPUT: usize = 768;

/// The decoder with SmallCap's cross-attention (`ThisGPT2Config`, `ThisOPTConfig` or
/// `ThisXGLMConfig`), in GPT-2's names: for OPT `n_embd` is `hidden_size`, `n_layer`
/// `num_hidden_layers`, `n_head` `num_attention_heads`, `n_inner` `ffn_dim` and `n_positions`
/// `max_position_embeddings`; for XGLM `d_model`, `num_layers`, `attention_heads`, `ffn_dim`,
/// `max_position_embeddings`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// The family and its own layout.
    pub arch: DecoderArch,
    /// Vocabulary size (50257 for GPT-2; OPT's 50265 tokens padded to 50272).
    pub vocab_size: usize,
    /// Learned positions: the longest prompt plus caption.
    pub n_positions: usize,
    /// Width of the decoder.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Width of the MLPs (`4 * n_embd` when a GPT-2 `config.json` gives none).
    pub n_inner: usize,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// How much narrower the cross-attention is than `n_embd` (SmallCap's r; 4 in SmallCap7M).
    pub cross_attention_reduce_factor: usize,
}

impl DecoderConfig {
    /// The `model_type` of the section (`this_gpt2`, `this_opt`, `this_xglm`).
    pub fn model_type(&self) -> &'static str {
        match self.arch {
            DecoderArch::Gpt2 => "this_gpt2",
            DecoderArch::Opt(_) => "this_opt",
            DecoderArch::Xglm(_) => "this_xglm",
        }
    }

    /// Whether the decoder is one of the fairseq families (OPT, XGLM), which share the
    /// reference's cross-attention (768-wide input, full-head scale, `encoder_attn` names).
    fn fairseq(&self) -> bool {
        !matches!(self.arch, DecoderArch::Gpt2)
    }
    /// Size of one self-attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
    /// Width of the reduced cross-attention projections (`n_embd / r`).
    pub fn cross_attention_dim(&self) -> usize {
        self.n_embd / self.cross_attention_reduce_factor
    }
    /// Head size of the reduced cross-attention (`head_dim / r`).
    pub fn cross_attention_head_dim(&self) -> usize {
        self.head_dim() / self.cross_attention_reduce_factor
    }
    /// The cross-attention's softmax scale: `1/√(head_dim / r)` in GPT-2 (transformers divides
    /// by the reduced value size), `1/√head_dim` in OPT and XGLM (`src/opt.py` and `src/xglm.py`
    /// take it before reducing).
    pub fn cross_attention_scale(&self) -> f64 {
        if self.fairseq() {
            1.0 / (self.head_dim() as f64).sqrt()
        } else {
            1.0 / (self.cross_attention_head_dim() as f64).sqrt()
        }
    }
    /// Width of the encoder states the cross-attention's keys and values are computed from.
    pub fn cross_attention_input_dim(&self) -> usize {
        if self.fairseq() {
            OPT_CROSS_ATTENTION_INPUT
        } else {
            self.n_embd
        }
    }
    /// Width of the token embeddings (and of the LM head's input).
    pub fn embedding_dim(&self) -> usize {
        match &self.arch {
            DecoderArch::Gpt2 | DecoderArch::Xglm(_) => self.n_embd,
            DecoderArch::Opt(o) => o.word_embed_proj_dim,
        }
    }
    /// Where positions start in the position table (OPT's learned and XGLM's sinusoidal
    /// positions are offset by 2).
    pub fn position_offset(&self) -> usize {
        if self.fairseq() {
            2
        } else {
            0
        }
    }
    /// The part of a decoder parameter's name that train.py trains by default: `crossattention`
    /// for GPT-2, `encoder_attn` for OPT and XGLM (their cross-attention layer norm included).
    pub fn cross_attention_marker(&self) -> &'static str {
        if self.fairseq() {
            "encoder_attn"
        } else {
            "crossattention"
        }
    }
}

/// The whole checkpoint configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SmallCapConfig {
    /// The CLIP vision tower.
    pub encoder: VisionConfig,
    /// The GPT-2 decoder.
    pub decoder: DecoderConfig,
    /// End-of-caption token (`.` = 13 in SmallCap).
    pub eos_token_id: u32,
    /// Padding token (`!` = 0 in SmallCap).
    pub pad_token_id: u32,
    /// Number of retrieved captions the model was trained with.
    pub k: usize,
    /// Whether the model was trained with retrieval (`rag`).
    pub rag: bool,
    /// The retrieval encoder named at training time (e.g. `RN50x64`), if recorded.
    pub retrieval_encoder: Option<String>,
}

#[derive(Deserialize)]
struct RawTop {
    encoder: serde_json::Value,
    decoder: serde_json::Value,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    k: Option<usize>,
    rag: Option<bool>,
    retrieval_encoder: Option<String>,
}

/// `CLIPVisionConfig` as transformers reads it: a field that is absent takes its default
/// there (ViT-B/32's sizes), so a `config.json` means the same tower here as in the reference.
#[derive(Deserialize)]
#[serde(default)]
struct RawVision {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_channels: usize,
    image_size: usize,
    patch_size: usize,
    layer_norm_eps: f64,
    hidden_act: String,
}

impl Default for RawVision {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: three(),
            image_size: 224,
            patch_size: 32,
            layer_norm_eps: ln_eps(),
            hidden_act: quick_gelu(),
        }
    }
}

#[derive(Deserialize)]
struct RawGpt2 {
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_inner: Option<usize>,
    #[serde(default = "ln_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "one")]
    cross_attention_reduce_factor: usize,
    #[serde(default = "gelu_new")]
    activation_function: String,
    #[serde(default)]
    add_cross_attention: bool,
}

/// `ThisOPTConfig` as transformers 4.21.1 reads it: absent fields take `OPTConfig`'s defaults.
#[derive(Deserialize)]
struct RawOpt {
    #[serde(default = "opt_vocab")]
    vocab_size: usize,
    #[serde(default = "opt_hidden")]
    hidden_size: usize,
    #[serde(default = "twelve")]
    num_hidden_layers: usize,
    #[serde(default = "opt_ffn")]
    ffn_dim: usize,
    #[serde(default = "opt_positions")]
    max_position_embeddings: usize,
    #[serde(default = "yes")]
    do_layer_norm_before: bool,
    #[serde(default)]
    _remove_final_layer_norm: bool,
    word_embed_proj_dim: Option<usize>,
    #[serde(default = "twelve")]
    num_attention_heads: usize,
    #[serde(default = "relu")]
    activation_function: String,
    #[serde(default = "yes")]
    layer_norm_elementwise_affine: bool,
    #[serde(default = "one")]
    cross_attention_reduce_factor: usize,
    #[serde(default)]
    add_cross_attention: bool,
}

/// `ThisXGLMConfig` as transformers 4.21.1 reads it: absent fields take `XGLMConfig`'s defaults
/// (xglm-564M's sizes).
#[derive(Deserialize)]
struct RawXglm {
    #[serde(default = "xglm_vocab")]
    vocab_size: usize,
    #[serde(default = "opt_positions")]
    max_position_embeddings: usize,
    #[serde(default = "xglm_width")]
    d_model: usize,
    #[serde(default = "xglm_ffn")]
    ffn_dim: usize,
    #[serde(default = "xglm_layers")]
    num_layers: usize,
    #[serde(default = "xglm_heads")]
    attention_heads: usize,
    #[serde(default = "gelu")]
    activation_function: String,
    #[serde(default = "yes")]
    scale_embedding: bool,
    #[serde(default = "one_u32")]
    pad_token_id: u32,
    #[serde(default = "one")]
    cross_attention_reduce_factor: usize,
    #[serde(default)]
    add_cross_attention: bool,
}

fn xglm_vocab() -> usize {
    256008
}
fn xglm_width() -> usize {
    1024
}
fn xglm_ffn() -> usize {
    4096
}
fn xglm_layers() -> usize {
    24
}
fn xglm_heads() -> usize {
    16
}
fn gelu() -> String {
    "gelu".into()
}
fn one_u32() -> u32 {
    1
}
fn opt_vocab() -> usize {
    50272
}
fn opt_hidden() -> usize {
    768
}
fn opt_ffn() -> usize {
    3072
}
fn opt_positions() -> usize {
    2048
}
fn twelve() -> usize {
    12
}
fn yes() -> bool {
    true
}
fn relu() -> String {
    "relu".into()
}
fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn ln_eps() -> f64 {
    1e-5
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn gelu_new() -> String {
    "gelu_new".into()
}

impl DecoderConfig {
    /// The `decoder` section of a `config.json`, by its `model_type` (`this_gpt2` when absent).
    pub fn from_value(value: &serde_json::Value) -> std::result::Result<Self, String> {
        let model_type = value.get("model_type").and_then(|t| t.as_str());
        let d = match model_type {
            None | Some("this_gpt2") | Some("gpt2") => Self::gpt2(value)?,
            Some("this_opt") | Some("opt") => Self::opt(value)?,
            Some("this_xglm") | Some("xglm") => Self::xglm(value)?,
            Some(other) => {
                return Err(format!(
                    "decoder.model_type {other:?} is not supported (supported: this_gpt2, this_opt, this_xglm)"
                ))
            }
        };
        let r = d.cross_attention_reduce_factor;
        if !REDUCE_FACTORS.contains(&r) {
            return Err(format!(
                "decoder.cross_attention_reduce_factor must be one of {REDUCE_FACTORS:?}, found {r}"
            ));
        }
        if d.n_head == 0
            || !d.n_embd.is_multiple_of(d.n_head)
            || !(d.n_embd / d.n_head).is_multiple_of(r)
        {
            return Err(format!(
                "decoder: width {} / {} heads / reduce factor {r} do not divide evenly",
                d.n_embd, d.n_head
            ));
        }
        Ok(d)
    }

    fn gpt2(value: &serde_json::Value) -> std::result::Result<Self, String> {
        let d: RawGpt2 =
            serde_json::from_value(value.clone()).map_err(|e| format!("decoder: {e}"))?;
        if d.activation_function != "gelu_new" {
            return Err(format!(
                "decoder.activation_function: only gelu_new is supported, found {:?}",
                d.activation_function
            ));
        }
        if !d.add_cross_attention {
            return Err("decoder.add_cross_attention must be true".into());
        }
        Ok(DecoderConfig {
            arch: DecoderArch::Gpt2,
            vocab_size: d.vocab_size,
            n_positions: d.n_positions,
            n_embd: d.n_embd,
            n_layer: d.n_layer,
            n_head: d.n_head,
            n_inner: d.n_inner.unwrap_or(4 * d.n_embd),
            layer_norm_epsilon: d.layer_norm_epsilon,
            cross_attention_reduce_factor: d.cross_attention_reduce_factor,
        })
    }

    fn opt(value: &serde_json::Value) -> std::result::Result<Self, String> {
        let d: RawOpt =
            serde_json::from_value(value.clone()).map_err(|e| format!("decoder: {e}"))?;
        if d.activation_function != "relu" {
            return Err(format!(
                "decoder.activation_function: only relu is supported for OPT, found {:?}",
                d.activation_function
            ));
        }
        if !d.add_cross_attention {
            return Err("decoder.add_cross_attention must be true".into());
        }
        if !d.layer_norm_elementwise_affine {
            return Err(
                "decoder.layer_norm_elementwise_affine false is not supported (every published OPT checkpoint has affine layer norms)"
                    .into(),
            );
        }
        let proj = d.word_embed_proj_dim.unwrap_or(d.hidden_size);
        if proj == 0 || d.hidden_size == 0 {
            return Err("decoder: hidden_size and word_embed_proj_dim must be positive".into());
        }
        Ok(DecoderConfig {
            arch: DecoderArch::Opt(OptLayout {
                word_embed_proj_dim: proj,
                do_layer_norm_before: d.do_layer_norm_before,
                final_layer_norm: d.do_layer_norm_before && !d._remove_final_layer_norm,
            }),
            vocab_size: d.vocab_size,
            n_positions: d.max_position_embeddings,
            n_embd: d.hidden_size,
            n_layer: d.num_hidden_layers,
            n_head: d.num_attention_heads,
            n_inner: d.ffn_dim,
            layer_norm_epsilon: 1e-5,
            cross_attention_reduce_factor: d.cross_attention_reduce_factor,
        })
    }
}

impl DecoderConfig {
    fn xglm(value: &serde_json::Value) -> std::result::Result<Self, String> {
        let d: RawXglm =
            serde_json::from_value(value.clone()).map_err(|e| format!("decoder: {e}"))?;
        if d.activation_function != "gelu" {
            return Err(format!(
                "decoder.activation_function: only gelu is supported for XGLM, found {:?}",
                d.activation_function
            ));
        }
        if !d.add_cross_attention {
            return Err("decoder.add_cross_attention must be true".into());
        }
        if d.d_model < 4 || !d.d_model.is_multiple_of(2) {
            return Err(format!(
                "decoder.d_model must be even and at least 4 (sinusoidal positions), found {}",
                d.d_model
            ));
        }
        if d.pad_token_id as usize >= d.vocab_size {
            return Err(format!(
                "decoder.pad_token_id {} is outside the vocabulary of {}",
                d.pad_token_id, d.vocab_size
            ));
        }
        Ok(DecoderConfig {
            arch: DecoderArch::Xglm(XglmLayout {
                scale_embedding: d.scale_embedding,
                padding_idx: d.pad_token_id,
            }),
            vocab_size: d.vocab_size,
            n_positions: d.max_position_embeddings,
            n_embd: d.d_model,
            n_layer: d.num_layers,
            n_head: d.attention_heads,
            n_inner: d.ffn_dim,
            layer_norm_epsilon: 1e-5,
            cross_attention_reduce_factor: d.cross_attention_reduce_factor,
        })
    }
}

impl SmallCapConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config { msg, .. } => Error::Config {
                path: path.to_path_buf(),
                msg,
            },
            other => other,
        })
    }

    /// Parses and validates the JSON text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |msg: String| Error::Config {
            path: "config.json".into(),
            msg,
        };
        let raw: RawTop = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        // The encoder section is a full CLIPConfig (with `vision_config`) or a CLIPVisionConfig.
        let vision_value = raw
            .encoder
            .get("vision_config")
            .cloned()
            .unwrap_or(raw.encoder.clone());
        let encoder = VisionConfig::from_value(&vision_value).map_err(bad)?;
        let decoder = DecoderConfig::from_value(&raw.decoder).map_err(bad)?;
        let needed = decoder.cross_attention_input_dim();
        if encoder.hidden_size != needed {
            return Err(bad(match decoder.arch {
                DecoderArch::Gpt2 => format!(
                    "encoder hidden_size {} differs from decoder n_embd {needed}: SmallCap feeds the encoder states to the cross-attention unprojected",
                    encoder.hidden_size
                ),
                DecoderArch::Opt(_) | DecoderArch::Xglm(_) => format!(
                    "encoder hidden_size {} with a {} decoder: the reference's cross-attention for it reads {needed}-wide encoder states (nn.Linear(768, …) in src/opt.py and src/xglm.py), so it cannot run this checkpoint either",
                    encoder.hidden_size,
                    decoder.model_type()
                ),
            }));
        }
        Ok(Self {
            encoder,
            decoder,
            eos_token_id: raw.eos_token_id.unwrap_or(13),
            pad_token_id: raw.pad_token_id.unwrap_or(0),
            k: raw.k.unwrap_or(4),
            rag: raw.rag.unwrap_or(true),
            retrieval_encoder: raw.retrieval_encoder,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_vision_fields_take_transformers_defaults() {
        // transformers' CLIPVisionConfig defaults are ViT-B/32's sizes.
        let v =
            VisionConfig::from_value(&serde_json::json!({"vision_config": {"image_size": 448}}))
                .unwrap();
        assert_eq!(
            (
                v.hidden_size,
                v.intermediate_size,
                v.num_hidden_layers,
                v.num_attention_heads
            ),
            (768, 3072, 12, 12)
        );
        assert_eq!((v.image_size, v.patch_size, v.num_channels), (448, 32, 3));
        assert_eq!(v.num_positions(), (448 / 32) * (448 / 32) + 1);
        let e = VisionConfig::from_value(&serde_json::json!({"hidden_act": "gelu"})).unwrap_err();
        assert!(e.contains("hidden_act"), "{e}");
        let e = VisionConfig::from_value(&serde_json::json!({"patch_size": 30})).unwrap_err();
        assert!(e.contains("not a multiple of patch_size 30"), "{e}");
    }
}
