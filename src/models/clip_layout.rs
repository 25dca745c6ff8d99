//! Tensor names between OpenAI's and Hugging Face's CLIP checkpoints, so that each tower has
//! one implementation: the ViT image tower is [`super::clip_vision`] (HF names, packed), the text
//! tower is [`super::clip_text`] (OpenAI names, fused qkv). The two layouts hold the same
//! numbers; only names, the q/k/v fusion and the projections' orientation differ:
//!
//! | OpenAI (`clip.model.CLIP`)              | HF (`CLIPModel`)                                   |
//! |-----------------------------------------|----------------------------------------------------|
//! | `visual.conv1.weight`                   | `vision_model.embeddings.patch_embedding.weight`   |
//! | `visual.class_embedding`                | `vision_model.embeddings.class_embedding`          |
//! | `visual.positional_embedding`           | `vision_model.embeddings.position_embedding.weight`|
//! | `visual.ln_pre`                         | `vision_model.pre_layrnorm`                        |
//! | `….resblocks.{i}.ln_1` / `ln_2`         | `….layers.{i}.layer_norm1` / `layer_norm2`         |
//! | `….attn.in_proj_weight` `[3w, w]`       | `….self_attn.{q,k,v}_proj.weight`, stacked in order |
//! | `….attn.out_proj`                       | `….self_attn.out_proj`                             |
//! | `….mlp.c_fc` / `mlp.c_proj`             | `….mlp.fc1` / `mlp.fc2`                            |
//! | `visual.ln_post`                        | `vision_model.post_layernorm`                      |
//! | `visual.proj` `[w, E]`                  | `visual_projection.weight` `[E, w]`                |
//! | `token_embedding.weight`                | `text_model.embeddings.token_embedding.weight`     |
//! | `positional_embedding`                  | `text_model.embeddings.position_embedding.weight`  |
//! | `transformer.resblocks.{i}`             | `text_model.encoder.layers.{i}`                    |
//! | `ln_final`                              | `text_model.final_layer_norm`                      |
//! | `text_projection` `[w, E]`              | `text_projection.weight` `[E, w]`                  |

use std::collections::HashMap;

use candle_core::Tensor;

use super::clip_text::TextDims;
use super::clip_weights::Weights;
use crate::config::VisionConfig;
use crate::error::Result;

/// Per-layer weight/bias pairs that differ only by their stem: (OpenAI, HF).
const LAYER_RENAMES: [(&str, &str); 5] = [
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("attn.out_proj", "self_attn.out_proj"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
];

/// Copies `from.weight`/`from.bias` of `w` to `to.weight`/`to.bias` of `out`, shapes unchecked
/// (the loader of the renamed layout checks them).
fn rename_affine(
    w: &Weights,
    from: &str,
    to: &str,
    out: &mut HashMap<String, Tensor>,
) -> Result<()> {
    for part in ["weight", "bias"] {
        let name = format!("{from}.{part}");
        let shape = w.need_shape(&name)?.to_vec();
        out.insert(format!("{to}.{part}"), w.get(&name, &shape)?);
    }
    Ok(())
}

/// An OpenAI ViT image tower (`visual.*`, sized by `cfg`) in `CLIPModel`'s names:
/// `vision_model.*` (what [`super::ClipVision`] loads) plus `visual_projection.weight`.
pub(crate) fn openai_vit_as_hf(
    w: &Weights,
    cfg: &VisionConfig,
    embed_dim: usize,
) -> Result<HashMap<String, Tensor>> {
    let (h, p) = (cfg.hidden_size, cfg.patch_size);
    let mut out = HashMap::new();
    let mut put = |name: &str, t: Tensor| out.insert(name.to_string(), t);
    put(
        "vision_model.embeddings.patch_embedding.weight",
        w.get("visual.conv1.weight", &[h, cfg.num_channels, p, p])?,
    );
    put(
        "vision_model.embeddings.class_embedding",
        w.get("visual.class_embedding", &[h])?,
    );
    put(
        "vision_model.embeddings.position_embedding.weight",
        w.get("visual.positional_embedding", &[cfg.num_positions(), h])?,
    );
    put(
        "visual_projection.weight",
        w.get("visual.proj", &[h, embed_dim])?.t()?.contiguous()?,
    );
    rename_affine(w, "visual.ln_pre", "vision_model.pre_layrnorm", &mut out)?;
    rename_affine(w, "visual.ln_post", "vision_model.post_layernorm", &mut out)?;
    for i in 0..cfg.num_hidden_layers {
        let from = format!("visual.transformer.resblocks.{i}");
        let to = format!("vision_model.encoder.layers.{i}");
        for (a, b) in LAYER_RENAMES {
            rename_affine(w, &format!("{from}.{a}"), &format!("{to}.{b}"), &mut out)?;
        }
        let in_w = w.get(&format!("{from}.attn.in_proj_weight"), &[3 * h, h])?;
        let in_b = w.get(&format!("{from}.attn.in_proj_bias"), &[3 * h])?;
        for (j, qkv) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            let stem = format!("{to}.self_attn.{qkv}");
            out.insert(format!("{stem}.weight"), in_w.narrow(0, j * h, h)?);
            out.insert(format!("{stem}.bias"), in_b.narrow(0, j * h, h)?);
        }
    }
    Ok(out)
}

/// A `CLIPModel`'s text tower (`text_model.*`, `text_projection.weight`) in OpenAI's names,
/// which [`super::clip_text::ClipText`] loads.
pub(crate) fn hf_text_as_openai(w: &Weights, d: &TextDims) -> Result<Weights> {
    let h = d.width;
    let mut out = HashMap::new();
    let e = "text_model.embeddings";
    out.insert(
        "token_embedding.weight".to_string(),
        w.get(&format!("{e}.token_embedding.weight"), &[d.vocab_size, h])?,
    );
    out.insert(
        "positional_embedding".to_string(),
        w.get(
            &format!("{e}.position_embedding.weight"),
            &[d.context_length, h],
        )?,
    );
    out.insert(
        "text_projection".to_string(),
        w.get("text_projection.weight", &[d.embed_dim, h])?
            .t()?
            .contiguous()?,
    );
    rename_affine(w, "text_model.final_layer_norm", "ln_final", &mut out)?;
    for i in 0..d.layers {
        let from = format!("text_model.encoder.layers.{i}");
        let to = format!("transformer.resblocks.{i}");
        for (a, b) in LAYER_RENAMES {
            rename_affine(w, &format!("{from}.{b}"), &format!("{to}.{a}"), &mut out)?;
        }
        let part = |qkv: &str, p: &str, shape: &[usize]| {
            w.get(&format!("{from}.self_attn.{qkv}.{p}"), shape)
        };
        let qkv = ["q_proj", "k_proj", "v_proj"];
        let ws = qkv.map(|n| part(n, "weight", &[h, h]));
        let bs = qkv.map(|n| part(n, "bias", &[h]));
        let ws = ws.into_iter().collect::<Result<Vec<_>>>()?;
        let bs = bs.into_iter().collect::<Result<Vec<_>>>()?;
        out.insert(format!("{to}.attn.in_proj_weight"), Tensor::cat(&ws, 0)?);
        out.insert(format!("{to}.attn.in_proj_bias"), Tensor::cat(&bs, 0)?);
    }
    Ok(Weights::new(w.path(), out))
}

#[cfg(test)]
mod tests {
    //! The fixture SmallCap encoder (HF names; the reference computed its `last_hidden_state`),
    //! written here in OpenAI's layout, must give the reference's states again once
    //! [`openai_vit_as_hf`] has renamed it back, and its head must compute
    //! `ln_post(h[:, 0]) @ proj`.

    use std::path::PathBuf;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;
    use crate::config::SmallCapConfig;
    use crate::models::clip_vision::{ClipVision, ProjectionHead};

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/smallcap-tiny")
            .join(rel)
    }

    /// The fixture's `encoder.*` tensors in OpenAI's names (`visual.*`), q/k/v fused in order.
    fn as_openai(
        sd: &HashMap<String, Tensor>,
        layers: usize,
        embed: usize,
    ) -> HashMap<String, Tensor> {
        let g = |k: &str| sd[&format!("encoder.{k}")].clone();
        let width = g("embeddings.class_embedding").dims()[0];
        let mut m = HashMap::new();
        m.insert(
            "visual.conv1.weight".into(),
            g("embeddings.patch_embedding.weight"),
        );
        m.insert(
            "visual.class_embedding".into(),
            g("embeddings.class_embedding"),
        );
        m.insert(
            "visual.positional_embedding".into(),
            g("embeddings.position_embedding.weight"),
        );
        for p in ["weight", "bias"] {
            m.insert(
                format!("visual.ln_pre.{p}"),
                g(&format!("pre_layrnorm.{p}")),
            );
            let ln_post =
                (Tensor::arange(0f32, width as f32, &Device::Cpu).unwrap() * 0.01).unwrap();
            m.insert(format!("visual.ln_post.{p}"), ln_post);
        }
        let proj = Tensor::arange(0f32, (width * embed) as f32, &Device::Cpu).unwrap();
        let proj = ((proj.reshape((width, embed)).unwrap() * 0.37)
            .unwrap()
            .sin())
        .unwrap();
        m.insert("visual.proj".into(), proj);
        for i in 0..layers {
            let (o, h) = (
                format!("visual.transformer.resblocks.{i}"),
                format!("encoder.layers.{i}"),
            );
            for (a, b) in [
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("attn.out_proj", "self_attn.out_proj"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ] {
                for p in ["weight", "bias"] {
                    m.insert(format!("{o}.{a}.{p}"), g(&format!("{h}.{b}.{p}")).clone());
                }
            }
            for p in ["weight", "bias"] {
                let parts: Vec<Tensor> = ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .map(|x| g(&format!("{h}.self_attn.{x}.{p}")))
                    .collect();
                m.insert(
                    format!("{o}.attn.in_proj_{p}"),
                    Tensor::cat(&parts, 0).unwrap(),
                );
            }
        }
        m
    }

    #[test]
    fn an_openai_vit_runs_on_the_one_vit_and_gives_the_reference_states() {
        let dev = Device::Cpu;
        let cfg = SmallCapConfig::from_file(&fixture("model/config.json"))
            .unwrap()
            .encoder;
        let sd =
            crate::checkpoint::read_state_dict(&fixture("model/pytorch_model.bin"), &dev).unwrap();
        let embed = 8;
        let openai = as_openai(&sd, cfg.num_hidden_layers, embed);
        let proj = openai["visual.proj"].clone();
        let ln_w = openai["visual.ln_post.weight"].clone();
        let w = Weights::new(std::path::Path::new("<openai layout>"), openai);
        let map = openai_vit_as_hf(&w, &cfg, embed).unwrap();
        let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
        let tower = ClipVision::load(vb.pp("vision_model"), &cfg).unwrap();
        let head = ProjectionHead::load(vb, &cfg, embed).unwrap();

        let want =
            candle_core::safetensors::load(fixture("expected_tensors.safetensors"), &dev).unwrap();
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap();
        let mut checked = 0;
        for case in cases["cases"].as_array().unwrap() {
            let image = case["image"].as_str().unwrap().rsplit('/').next().unwrap();
            let px = want[&format!("{image}.pixel_values")].unsqueeze(0).unwrap();
            let got = tower.forward(&px).unwrap().squeeze(0).unwrap();
            let expected = &want[&format!("{}.encoder_hidden", case["id"].as_str().unwrap())];
            let (g, e) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                expected.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let d: f32 = g.iter().zip(&e).map(|(a, b)| (a - b).powi(2)).sum();
            let n: f32 = e.iter().map(|b| b * b).sum();
            assert!(
                (d / n).sqrt() < 1e-4,
                "{image}: relative error {}",
                (d / n).sqrt()
            );

            // ln_post (bias = weight here) of the reference's class token, then `@ proj`.
            let h = cfg.hidden_size;
            let cls = &e[..h];
            let mean = cls.iter().sum::<f32>() / h as f32;
            let var = cls.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / h as f32;
            let lw = ln_w.to_vec1::<f32>().unwrap();
            let normed: Vec<f32> = (0..h)
                .map(|j| (cls[j] - mean) / (var + 1e-5).sqrt() * lw[j] + lw[j])
                .collect();
            let p = proj.to_vec2::<f32>().unwrap();
            let feats = head
                .forward(&got.unsqueeze(0).unwrap())
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (k, f) in feats.iter().enumerate() {
                let want_k: f32 = (0..h).map(|j| normed[j] * p[j][k]).sum();
                assert!(
                    (f - want_k).abs() < 1e-3 * (1.0 + want_k.abs()),
                    "{image}[{k}]"
                );
            }
            checked += 1;
        }
        assert!(checked >= 3, "only {checked} cases");
    }
}
