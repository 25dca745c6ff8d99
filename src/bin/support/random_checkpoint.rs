//! Random full-size checkpoints for the benchmarks and the learning test (shared through
//! `#[path]`, so that this scaffolding stays out of the library): SmallCap7M's sizes and
//! weights drawn as the reference's `perf_reference.py --make` draws them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use smallcap::checkpoint::{
    expected_tensors, ExpectedTensor, LM_HEAD, PYTORCH_FILE, SAFETENSORS_FILE,
};
use smallcap::Rng;
use smallcap::{Error, Result, SmallCapConfig};

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// config.json of SmallCap7M's sizes (what the reference's `perf_reference.py --make` writes).
pub fn full_size_config() -> Value {
    json!({
        "architectures": ["SmallCap"], "model_type": "smallcap", "is_encoder_decoder": true,
        "eos_token_id": 13, "pad_token_id": 0, "k": 4, "rag": true, "max_length": 25,
        "retrieval_encoder": "RN50x64", "tie_word_embeddings": false, "vocab_size": 50257,
        "encoder": {"model_type": "clip", "vision_config": {
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}},
        "decoder": {"model_type": "this_gpt2", "vocab_size": 50257, "n_positions": 1024,
            "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": null,
            "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
            "add_cross_attention": true, "cross_attention_reduce_factor": 4}
    })
}

/// Writes a checkpoint folder (`config.json` + `model.safetensors`) of random weights for the
/// config `config_json`, as `perf_reference.py` makes them: N(0, 0.02)·3 for matrices and the
/// class embedding, LayerNorms at ones/zeros, biases zero. Deterministic for a seed; kept when
/// the folder already holds one.
pub fn write_random_checkpoint(dir: &Path, config_json: &Value, seed: u64) -> Result<()> {
    if dir.join(SAFETENSORS_FILE).is_file() || dir.join(PYTORCH_FILE).is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let cfg = SmallCapConfig::from_json(&config_json.to_string())?;
    let dev = Device::Cpu;
    let mut rng = Rng::new(seed);
    let mut tensors = HashMap::new();
    let mut all = expected_tensors(&cfg);
    all.push(ExpectedTensor {
        name: LM_HEAD.into(),
        shape: vec![cfg.decoder.vocab_size, cfg.decoder.n_embd],
    });
    for t in all {
        let is_ln =
            t.name.contains("ln") || t.name.contains("layer_norm") || t.name.contains("layrnorm");
        let value = if t.shape.len() >= 2 || t.name.ends_with("class_embedding") {
            let n: usize = t.shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| 0.06 * rng.normal()).collect();
            Tensor::from_vec(data, t.shape.as_slice(), &dev)?
        } else if is_ln && t.name.ends_with("weight") {
            Tensor::ones(t.shape.as_slice(), DType::F32, &dev)?
        } else {
            Tensor::zeros(t.shape.as_slice(), DType::F32, &dev)?
        };
        tensors.insert(t.name, value);
    }
    let tmp = dir.join(format!("{SAFETENSORS_FILE}.partial"));
    candle_core::safetensors::save(&tensors, &tmp)?;
    let cfg_text =
        serde_json::to_string_pretty(config_json).map_err(|e| Error::Input(e.to_string()))?;
    std::fs::write(dir.join("config.json"), cfg_text).map_err(|e| io(dir, e))?;
    std::fs::rename(&tmp, dir.join(SAFETENSORS_FILE)).map_err(|e| io(dir, e))?;
    Ok(())
}
