//! The CLIP ViT vision tower (HF `CLIPVisionTransformer`, transformers 4.21.1): the one ViT of
//! the crate, run by SmallCap's encoder and by ViT retrieval encoders (HF `CLIPModel`s, and
//! OpenAI's ViT checkpoints renamed by `clip_layout`), with the [`ProjectionHead`] that
//! maps its class token into CLIP's joint embedding.
//!
//! SmallCap uses `last_hidden_state` — the output of the last encoder layer, before
//! `post_layernorm` and without any projection — as the decoder's `encoder_hidden_states`.
//!
//! Embeddings: the patch convolution (stride = kernel, no bias) as one product over the image's
//! patches, the class embedding in front, plus the position embeddings; then `pre_layrnorm`. Each
//! layer: `h + self_attn(layer_norm1(h))` (queries scaled by `head_dim^-0.5`), then
//! `h + fc2(quick_gelu(fc1(layer_norm2(h))))`. The tower is frozen, so on CPUs with AVX-512 its
//! linear layers are packed like the decoder's (`kernels::packed_linear`): an image
//! is only 50 rows, where a general GEMM is far from its best.

use candle_core::Tensor;
use candle_nn::{LayerNorm, Module, VarBuilder};

use crate::config::VisionConfig;
use crate::kernels::packed_linear::{self, WeightType};
use crate::models::linear::Linear;

/// An `nn.Linear` (`[out, in]` weight, with bias). Where [`ClipVision::load`] packs the layers
/// (a CPU with AVX-512), the weight stays a transposed view of its storage, which packing reads
/// directly, instead of a contiguous copy that packing would copy again.
fn linear(vb: VarBuilder, d_in: usize, d_out: usize) -> candle_core::Result<Linear> {
    if vb.device().is_cpu() && packed_linear::simd_available() {
        let weight = vb.get((d_out, d_in), "weight")?.t()?;
        return Ok(Linear::from_tensors(weight, Some(vb.get(d_out, "bias")?)));
    }
    Linear::nn_linear(vb, d_in, d_out, true)
}

#[derive(Debug, Clone)]
struct Layer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// SmallCap's frozen CLIP ViT: pixels to `last_hidden_state`.
#[derive(Debug, Clone)]
pub struct ClipVision {
    /// The patch convolution as `[channels·patch·patch, hidden]`, without bias.
    patch_embedding: Linear,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<Layer>,
    cfg: VisionConfig,
}

impl ClipVision {
    /// `vb` points at the tower's root (`encoder` in a SmallCap checkpoint).
    pub fn load(vb: VarBuilder, cfg: &VisionConfig) -> candle_core::Result<Self> {
        let (h, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let eps = cfg.layer_norm_eps;
        let e = vb.pp("embeddings");
        let conv = e.get((h, c, p, p), "patch_embedding.weight")?;
        let patch_embedding = Linear::from_tensors(
            conv.reshape((h, c * p * p))?.t()?.contiguous()?,
            Some(Tensor::zeros(h, conv.dtype(), conv.device())?),
        );
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp("encoder").pp("layers").pp(i);
            let a = l.pp("self_attn");
            layers.push(Layer {
                layer_norm1: candle_nn::layer_norm(h, eps, l.pp("layer_norm1"))?,
                q_proj: linear(a.pp("q_proj"), h, h)?,
                k_proj: linear(a.pp("k_proj"), h, h)?,
                v_proj: linear(a.pp("v_proj"), h, h)?,
                out_proj: linear(a.pp("out_proj"), h, h)?,
                layer_norm2: candle_nn::layer_norm(h, eps, l.pp("layer_norm2"))?,
                fc1: linear(l.pp("mlp").pp("fc1"), h, cfg.intermediate_size)?,
                fc2: linear(l.pp("mlp").pp("fc2"), cfg.intermediate_size, h)?,
            });
        }
        let mut tower = Self {
            patch_embedding,
            class_embedding: e.get(h, "class_embedding")?,
            position_embedding: e.get((cfg.num_positions(), h), "position_embedding.weight")?,
            pre_layrnorm: candle_nn::layer_norm(h, eps, vb.pp("pre_layrnorm"))?,
            layers,
            cfg: cfg.clone(),
        };
        if tower.class_embedding.device().is_cpu() && packed_linear::simd_available() {
            for l in &mut tower.layers {
                for layer in [
                    &mut l.q_proj,
                    &mut l.k_proj,
                    &mut l.v_proj,
                    &mut l.out_proj,
                    &mut l.fc1,
                    &mut l.fc2,
                ] {
                    layer.pack(WeightType::F32)?;
                }
            }
            tower.patch_embedding.pack(WeightType::F32)?;
        }
        Ok(tower)
    }

    /// The tower's sizes.
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// `pixel_values` `[B, 3, size, size]` → `last_hidden_state` `[B, tokens, hidden]`.
    pub fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (b, c, size, _) = pixel_values.dims4()?;
        let (p, h) = (cfg.patch_size, cfg.hidden_size);
        let g = size / p;
        // Patches in row-major order, each flattened as the convolution kernel is (c, y, x).
        let patches = pixel_values
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let patches = self
            .patch_embedding
            .forward(&patches)?
            .reshape((b, g * g, h))?;
        let class = self
            .class_embedding
            .reshape((1, 1, h))?
            .broadcast_as((b, 1, h))?;
        let x = Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        let t = g * g + 1;
        let mut x = self.pre_layrnorm.forward(&x)?.reshape((b * t, h))?;
        let heads = cfg.num_attention_heads;
        let d = h / heads;
        let scale = (d as f64).powf(-0.5);
        for l in &self.layers {
            let y = l.layer_norm1.forward(&x)?;
            let split = |t_: Tensor| -> candle_core::Result<Tensor> {
                t_.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let q = split((l.q_proj.forward(&y)? * scale)?)?;
            let k = split(l.k_proj.forward(&y)?)?;
            let v = split(l.v_proj.forward(&y)?)?;
            let probs = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
            let o = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, h))?;
            x = (x + l.out_proj.forward(&o)?)?;
            let y = l.fc1.forward(&l.layer_norm2.forward(&x)?)?;
            let y = (&y * candle_nn::ops::sigmoid(&(&y * 1.702)?)?)?;
            x = (x + l.fc2.forward(&y)?)?;
        }
        x.reshape((b, t, h))
    }
}

/// The image tower's head into CLIP's joint embedding: `visual_projection(post_layernorm(h[:, 0]))`
/// of a `last_hidden_state` `h` (HF `get_image_features`; OpenAI's `ln_post` and `@ proj`).
#[derive(Debug, Clone)]
pub struct ProjectionHead {
    post_layernorm: LayerNorm,
    /// `[hidden, embed]` (the transpose of `visual_projection.weight`).
    projection: Tensor,
}

impl ProjectionHead {
    /// `vb` at a `CLIPModel`'s root: `vision_model.post_layernorm` and
    /// `visual_projection.weight` `[embed_dim, hidden]`.
    pub fn load(vb: VarBuilder, cfg: &VisionConfig, embed_dim: usize) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let post_layernorm = candle_nn::layer_norm(
            h,
            cfg.layer_norm_eps,
            vb.pp("vision_model").pp("post_layernorm"),
        )?;
        let w = vb.get((embed_dim, h), "visual_projection.weight")?;
        Self::new(post_layernorm, &w)
    }

    /// From the LayerNorm and `visual_projection.weight` `[embed, hidden]`.
    pub fn new(post_layernorm: LayerNorm, visual_projection: &Tensor) -> candle_core::Result<Self> {
        Ok(Self {
            post_layernorm,
            projection: visual_projection.t()?.contiguous()?,
        })
    }

    /// Width of the tower's states it takes.
    pub fn hidden_size(&self) -> usize {
        self.projection.dims()[0]
    }

    /// Width of the joint embedding it gives.
    pub fn embed_dim(&self) -> usize {
        self.projection.dims()[1]
    }

    /// `last_hidden_state` `[B, T, hidden]` → image features `[B, embed]` (not normalised).
    pub fn forward(&self, last_hidden_state: &Tensor) -> candle_core::Result<Tensor> {
        let cls = last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
        self.post_layernorm.forward(&cls)?.matmul(&self.projection)
    }
}
