//! A new SmallCap to train, as the reference's `SmallCap.from_encoder_decoder_pretrained`: the
//! CLIP vision tower of a CLIP checkpoint (`vision_model.*` → `encoder.*`), the decoder (GPT-2:
//! `h.*`, `wte`, … → `decoder.transformer.*`; OPT, as `facebook/opt-*` holds it: `decoder.*` or
//! `model.decoder.*` → `decoder.model.decoder.*`; XGLM, as `facebook/xglm-*` holds it: `model.*`
//! → `decoder.model.*`, its sinusoidal position table computed when the file lacks it), its LM
//! head tied to the token embedding, and new cross-attention layers initialised as the decoder's
//! `_init_weights` does: GPT-2's Conv1D weights N(0, initializer_range) and `c_proj.weight`
//! N(0, initializer_range/√(2·n_layer)), OPT's and XGLM's Linear weights N(0, init_std); biases
//! 0, LayerNorms 1 and 0.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::checkpoint::{
    expected_tensors, read_tensors, token_embedding_name, xglm_positions, ExpectedTensor, LM_HEAD,
    XGLM_POSITIONS,
};
use crate::config::{DecoderArch, SmallCapConfig};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// `PARAMS2REDUCE_FACTOR` of train.py: cross-attention size in millions → reduce factor.
pub fn reduce_factor(attention_size: f64) -> Result<usize> {
    const TABLE: [(f64, usize); 5] = [(28.0, 1), (14.0, 2), (7.0, 4), (3.5, 8), (1.75, 16)];
    TABLE
        .iter()
        .find(|(s, _)| *s == attention_size)
        .map(|&(_, r)| r)
        .ok_or_else(|| {
            Error::Input(format!(
                "--attention-size must be one of 28, 14, 7, 3.5, 1.75 (millions of parameters), found {attention_size}"
            ))
        })
}

/// A pretrained model's folder: `config.json` and its weight file.
pub struct Pretrained {
    /// Its `config.json`.
    pub config: Value,
    /// Its weight file.
    pub weights: PathBuf,
}

impl Pretrained {
    /// A local folder, or a hub id resolved through [`crate::hub`].
    pub fn resolve(spec: &str) -> Result<Self> {
        let files = crate::hub::model_files(spec)?;
        let text =
            std::fs::read_to_string(&files.config).map_err(|e| Error::io(&files.config, e))?;
        let config = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: files.config.clone(),
            msg: e.to_string(),
        })?;
        Ok(Self {
            config,
            weights: files.weights,
        })
    }
}

/// SmallCap's end and padding tokens (`.` and `!`, as train.py sets them on the tokenizer).
#[derive(Debug, Clone, Copy)]
pub struct SpecialIds {
    /// The id of `.`.
    pub eos: u32,
    /// The id of `!`.
    pub pad: u32,
}

/// The new model's `config.json`, in the layout `save_pretrained` gives a SmallCap: the
/// decoder's section becomes `this_gpt2`, `this_opt` or `this_xglm` by its `model_type`.
pub(crate) fn smallcap_config_json(
    encoder: &Value,
    decoder: &Value,
    r: usize,
    k: Option<usize>,
    ids: SpecialIds,
) -> Result<Value> {
    let mut dec = decoder.clone();
    let model_type = dec
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("gpt2");
    let (this, class, default_vocab) = match model_type {
        "gpt2" | "this_gpt2" => ("this_gpt2", "ThisGPT2LMHeadModel", 50257),
        "opt" | "this_opt" => ("this_opt", "ThisOPTForCausalLM", 50272),
        "xglm" | "this_xglm" => ("this_xglm", "ThisXGLMForCausalLM", 256008),
        other => {
            return Err(Error::Input(format!(
                "--decoder: model_type {other:?} is not supported (supported: gpt2, opt, xglm)"
            )))
        }
    };
    if let Some(d) = dec.as_object_mut() {
        d.insert("model_type".into(), json!(this));
        d.insert("architectures".into(), json!([class]));
        d.insert("add_cross_attention".into(), json!(true));
        d.insert("is_decoder".into(), json!(true));
        d.insert("cross_attention_reduce_factor".into(), json!(r));
        if this == "this_opt" {
            // src/opt.py reads it; OPTConfig has it only after transformers 4.21.1.
            d.entry("layer_norm_elementwise_affine")
                .or_insert(json!(true));
        }
    }
    let vocab = dec
        .get("vocab_size")
        .cloned()
        .unwrap_or(json!(default_vocab));
    let mut top = json!({
        "architectures": ["SmallCap"], "model_type": "smallcap", "is_encoder_decoder": true,
        "encoder": encoder, "decoder": dec, "vocab_size": vocab, "decoder_start_token_id": null,
        "pad_token_id": ids.pad, "eos_token_id": ids.eos, "max_length": 25, "rag": k.is_some(),
        "tie_word_embeddings": false,
    });
    if let Some(k) = k {
        top["k"] = json!(k);
        top["retrieval_encoder"] = json!("RN50x64");
    }
    Ok(top)
}

/// New cross-attention (and anything else missing) initialised like GPT-2's `_init_weights`.
fn init_value(
    t: &ExpectedTensor,
    std: f64,
    n_layer: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<Tensor> {
    let name = &t.name;
    let shape = t.shape.as_slice();
    let normal = |std: f64, rng: &mut Rng| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| (std * rng.normal() as f64) as f32).collect();
        Ok(Tensor::from_vec(data, shape, device)?)
    };
    if name.ends_with(".bias") {
        Ok(Tensor::zeros(shape, DType::F32, device)?)
    } else if name.contains("ln_") || name.contains("layer_norm") {
        Ok(Tensor::ones(shape, DType::F32, device)?)
    } else if name.ends_with("c_proj.weight") {
        normal(std / ((2 * n_layer) as f64).sqrt(), rng)
    } else {
        normal(std, rng)
    }
}

/// Builds the tensors of a new SmallCap from pretrained CLIP and GPT-2, OPT or XGLM checkpoints.
/// Returns the config JSON, the parsed config and the tensors (the LM head is the token
/// embedding).
pub fn from_pretrained(
    encoder: &Pretrained,
    decoder: &Pretrained,
    r: usize,
    k: Option<usize>,
    ids: SpecialIds,
    seed: u64,
    device: &Device,
) -> Result<(Value, SmallCapConfig, HashMap<String, Tensor>)> {
    let json = smallcap_config_json(&encoder.config, &decoder.config, r, k, ids)?;
    let config = SmallCapConfig::from_json(&json.to_string())?;
    let is_gpt2 = matches!(config.decoder.arch, DecoderArch::Gpt2);
    let marker = config.decoder.cross_attention_marker();
    let expected = expected_tensors(&config);
    // Source names in the pretrained files for each SmallCap name.
    let sources = |name: &str| -> Vec<(PathBuf, String)> {
        if let Some(rest) = name.strip_prefix("encoder.") {
            vec![(encoder.weights.clone(), format!("vision_model.{rest}"))]
        } else if let Some(rest) = name.strip_prefix("decoder.transformer.") {
            vec![
                (decoder.weights.clone(), rest.to_string()),
                (decoder.weights.clone(), format!("transformer.{rest}")),
            ]
        } else if let Some(rest) = name.strip_prefix("decoder.model.decoder.") {
            vec![
                (decoder.weights.clone(), format!("decoder.{rest}")),
                (decoder.weights.clone(), format!("model.decoder.{rest}")),
            ]
        } else if let Some(rest) = name.strip_prefix("decoder.model.") {
            vec![
                (decoder.weights.clone(), format!("model.{rest}")),
                (decoder.weights.clone(), rest.to_string()),
            ]
        } else {
            vec![]
        }
    };
    let mut wanted: HashMap<PathBuf, Vec<String>> = HashMap::new();
    for t in &expected {
        for (file, src) in sources(&t.name) {
            wanted.entry(file).or_default().push(src);
        }
    }
    let mut loaded: HashMap<PathBuf, HashMap<String, Tensor>> = HashMap::new();
    for (file, names) in &wanted {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        loaded.insert(file.clone(), read_tensors(file, &refs, device)?);
    }
    let std = decoder
        .config
        .get(if is_gpt2 {
            "initializer_range"
        } else {
            "init_std"
        })
        .and_then(Value::as_f64)
        .unwrap_or(0.02);
    let mut rng = Rng::new(seed);
    let mut tensors = HashMap::new();
    for t in &expected {
        let found = sources(&t.name)
            .into_iter()
            .find_map(|(file, src)| loaded.get(&file).and_then(|m| m.get(&src)).cloned());
        let new_part = t.name.contains(marker) || t.name.contains("ln_cross_attn");
        let value = match found {
            Some(v) if !new_part => {
                if v.dims() != t.shape.as_slice() {
                    return Err(Error::Checkpoint {
                        path: if t.name.starts_with("encoder.") {
                            encoder.weights.clone()
                        } else {
                            decoder.weights.clone()
                        },
                        msg: format!(
                            "tensor for {} has shape {:?}, its config implies {:?}",
                            t.name,
                            v.dims(),
                            t.shape
                        ),
                    });
                }
                v
            }
            _ if new_part => init_value(t, std, config.decoder.n_layer, &mut rng, device)?,
            // XGLM's position table is a buffer that pretrained files may leave out.
            None if t.name == XGLM_POSITIONS => {
                xglm_positions(&config.decoder, &decoder.weights, device)?
            }
            _ => {
                let from = if t.name.starts_with("encoder.") {
                    &encoder.weights
                } else {
                    &decoder.weights
                };
                return Err(Error::Checkpoint {
                    path: from.clone(),
                    msg: format!("no tensor for {} in the pretrained weights", t.name),
                });
            }
        };
        tensors.insert(t.name.clone(), value);
    }
    let embedding = tensors[token_embedding_name(&config.decoder)].clone();
    tensors.insert(LM_HEAD.to_string(), embedding);
    Ok((json, config, tensors))
}
