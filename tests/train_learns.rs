//! End-to-end learning: a tiny SmallCap (a random frozen 2-layer ViT, a 2-layer GPT-2 trained
//! from scratch with `--train-decoder`) learns templated captions of synthetic coloured shapes
//! and captions held-out images, and a model trained with retrieval beats the same model
//! without it when the datastore holds the right captions.
//!
//! Metric: exact match of the held-out captions (CIDEr joins when the metrics library is part
//! of the workspace). The captions are "a <colour> <shape>" with 4 colours × 3 shapes, so
//! guessing gives 1/12 ≈ 8 % and knowing only the colour gives 1/3 ≈ 33 %. The shapes are small
//! (a few pixels inside one 32-pixel patch) so that the random frozen encoder carries the colour
//! well but the shape poorly; the retrieved captions (the right ones: captions of other images of
//! the same colour and shape) carry both.

#[path = "../src/bin/support/random_checkpoint.rs"]
#[allow(dead_code)]
mod random_checkpoint;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::{json, Value};
use smallcap::models::ClipVision;
use smallcap::train::features::FeatureWriter;

const COLOURS: [(&str, [f32; 3]); 4] = [
    ("red", [220.0, 30.0, 30.0]),
    ("green", [30.0, 200.0, 40.0]),
    ("blue", [30.0, 40.0, 220.0]),
    ("yellow", [230.0, 220.0, 30.0]),
];
const SHAPES: [&str; 3] = ["square", "circle", "triangle"];
const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
// CLIP's normalisation (as f32).
#[allow(clippy::excessive_precision)]
const STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

fn tiny_config() -> Value {
    json!({
        "architectures": ["SmallCap"], "model_type": "smallcap", "eos_token_id": 13, "pad_token_id": 0,
        "encoder": {"model_type": "clip", "vision_config": {"hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_channels": 3, "image_size": 224,
            "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}},
        "decoder": {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 256, "n_embd": 64, "n_layer": 2,
            "n_head": 4, "n_inner": null, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
            "add_cross_attention": true, "cross_attention_reduce_factor": 4}
    })
}

/// Random "pretrained" CLIP and GPT-2 folders (HF key names), cut from a random SmallCap.
fn pretrained(dir: &Path) -> (PathBuf, PathBuf) {
    let cfg = tiny_config();
    let sc = dir.join("random-smallcap");
    random_checkpoint::write_random_checkpoint(&sc, &cfg, 7).unwrap();
    let all = candle_core::safetensors::load(sc.join("model.safetensors"), &Device::Cpu).unwrap();
    let (clip, gpt2) = (dir.join("clip"), dir.join("gpt2"));
    for (d, prefix, to, config) in [
        (&clip, "encoder.", "vision_model.", &cfg["encoder"]),
        (&gpt2, "decoder.transformer.", "", &cfg["decoder"]),
    ] {
        std::fs::create_dir_all(d).unwrap();
        let part: HashMap<String, Tensor> = all
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(prefix)
                    .map(|r| (format!("{to}{r}"), v.clone()))
            })
            .collect();
        candle_core::safetensors::save(&part, d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    }
    (clip, gpt2)
}

/// A 224×224 image (CLIP-normalised CHW) of a small shape on a grey background.
fn image(colour: [f32; 3], shape: usize, cx: usize, cy: usize) -> Vec<f32> {
    let n = 224;
    let r = 7i64;
    let mut out = vec![0f32; 3 * n * n];
    for y in 0..n {
        for x in 0..n {
            let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
            let inside = match shape {
                0 => dx.abs() <= r && dy.abs() <= r,
                1 => dx * dx + dy * dy <= r * r,
                _ => dy >= -r && dy <= r && dx.abs() * 2 <= dy + r,
            };
            for c in 0..3 {
                let v = if inside { colour[c] } else { 128.0 };
                out[c * n * n + y * n + x] = (v / 255.0 - MEAN[c]) / STD[c];
            }
        }
    }
    out
}

struct Data {
    ann: PathBuf,
    retrieved: PathBuf,
    features: PathBuf,
    val_ids: HashMap<String, String>,
}

fn data(dir: &Path, clip: &Path) -> Data {
    // Encoder: the random frozen ViT.
    let cfg = smallcap::config::VisionConfig::from_value(&tiny_config()["encoder"]).unwrap();
    let st = candle_core::safetensors::load(clip.join("model.safetensors"), &Device::Cpu).unwrap();
    let renamed: HashMap<String, Tensor> = st
        .into_iter()
        .map(|(k, v)| (k.replacen("vision_model.", "encoder.", 1), v))
        .collect();
    let vision = ClipVision::load(
        VarBuilder::from_tensors(renamed, DType::F32, &Device::Cpu).pp("encoder"),
        &cfg,
    )
    .unwrap();
    let mut rng = smallcap::Rng::new(11);
    let mut images = Vec::new();
    let mut by_class: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut writer = FeatureWriter::new(&dir.join("features"), false).unwrap();
    let mut val_ids = HashMap::new();
    let per_class = 20;
    let mut items = Vec::new();
    for i in 0..per_class * 12 {
        let class = i % 12;
        let (colour, shape) = (class / 3, class % 3);
        let cx = 16 + rng.below(192);
        let cy = 16 + rng.below(192);
        let px = Tensor::from_vec(
            image(COLOURS[colour].1, shape, cx, cy),
            (1, 3, 224, 224),
            &Device::Cpu,
        )
        .unwrap();
        let f = vision.forward(&px).unwrap().squeeze(0).unwrap();
        let id = (i + 1).to_string();
        items.push((id.clone(), f));
        let caption = format!("a {} {}", COLOURS[colour].0, SHAPES[shape]);
        // The last two images of each class are held out.
        let split = if i / 12 >= per_class - 2 {
            "val"
        } else {
            "train"
        };
        if split == "val" {
            val_ids.insert(id.clone(), caption.clone());
        }
        by_class.entry(class).or_default().push(i);
        images.push(
            json!({"cocoid": i + 1, "filename": format!("{}.png", i + 1), "split": split,
            "sentences": [{"tokens": caption.split(' ').collect::<Vec<_>>()}]}),
        );
    }
    writer.write_chunk(&items).unwrap();
    // The datastore holds the right captions: 7 captions of other images of the same class.
    let mut retrieved = serde_json::Map::new();
    for i in 0..images.len() {
        let others: Vec<Value> = by_class[&(i % 12)]
            .iter()
            .filter(|&&j| j != i)
            .take(7)
            .map(|&j| {
                json!(images[j]["sentences"][0]["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(" "))
            })
            .collect();
        retrieved.insert((i + 1).to_string(), Value::Array(others));
    }
    let ann = dir.join("ann.json");
    std::fs::write(&ann, json!({"images": images}).to_string()).unwrap();
    let ret = dir.join("retrieved.json");
    std::fs::write(&ret, Value::Object(retrieved).to_string()).unwrap();
    Data {
        ann,
        retrieved: ret,
        features: dir.join("features"),
        val_ids,
    }
}

/// Trains, then returns the exact-match rate and the CIDEr-D of the held-out captions after the
/// last epoch.
fn train(
    d: &Data,
    clip: &Path,
    gpt2: &Path,
    out: &Path,
    retrieval: bool,
    extra: &[&str],
) -> (f64, f64) {
    let tok =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smallcap-tiny/tokenizer");
    let epochs = "12";
    let mut args: Vec<String> = [
        "train",
        "--annotations",
        d.ann.to_str().unwrap(),
        "--features",
        d.features.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--encoder",
        clip.to_str().unwrap(),
        "--decoder",
        gpt2.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--lr",
        "3e-3",
        "--batch-size",
        "16",
        "--epochs",
        epochs,
        "--dropout",
        "0",
        "--seed",
        "3",
        "--val-annotations",
        d.ann.to_str().unwrap(),
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    if retrieval {
        args.extend([
            "--retrieved".to_string(),
            d.retrieved.to_str().unwrap().to_string(),
        ]);
    } else {
        args.push("--no-retrieval".into());
    }
    let res = Command::new(env!("CARGO_BIN_EXE_smallcap"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let steps_per_epoch = (12 * 18usize).div_ceil(16);
    let last = out.join(format!(
        "checkpoint-{}",
        steps_per_epoch * epochs.parse::<usize>().unwrap()
    ));
    let caps: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(last.join("val_captions.json")).unwrap())
            .unwrap();
    assert_eq!(caps.len(), d.val_ids.len());
    let right = caps
        .iter()
        .filter(|c| d.val_ids[&c["image_id"].to_string()] == c["caption"].as_str().unwrap())
        .count();
    let acc = right as f64 / caps.len() as f64;
    // The last epoch's validation CIDEr-D, as the trainer logged it.
    let log = std::fs::read_to_string(out.join("train.log")).unwrap();
    let cider = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["val_CIDEr"].as_f64())
        .next_back()
        .expect("train.log records the validation CIDEr");
    eprintln!(
        "retrieval {retrieval}: exact match {acc:.3}, CIDEr {cider:.3}; {:?}",
        &caps[..4]
    );
    (acc, cider)
}

#[test]
fn a_tiny_model_learns_shapes_and_retrieval_helps() {
    let tmp = tempfile::tempdir().unwrap();
    let (clip, gpt2) = pretrained(tmp.path());
    let d = data(tmp.path(), &clip);
    let (with, with_cider) = train(
        &d,
        &clip,
        &gpt2,
        &tmp.path().join("rag"),
        true,
        &["--train-decoder"],
    );
    let (without, without_cider) = train(
        &d,
        &clip,
        &gpt2,
        &tmp.path().join("norag"),
        false,
        &["--train-decoder"],
    );
    // Chance is 1/12 ≈ 0.08 and the colour alone gives 1/3: 0.5 needs shapes read from the
    // retrieved captions. Without them the model has only the weak visual signal.
    assert!(with >= 0.5, "with retrieval: exact match {with}");
    assert!(
        with >= without + 0.2,
        "with retrieval {with}, without {without}"
    );
    // CIDEr-D of a caption equal to its (identical, templated) references is
    // 10 × mean over n = 1..4 of the n-gram cosine: "a <colour> <shape>" has uni-, bi- and
    // trigrams (cosine 1) and no 4-gram (0), so 7.5; hence an exact-match rate of at least 0.5
    // implies CIDEr ≥ 3.75 whatever the other captions score.
    assert!(with_cider >= 3.75, "with retrieval: CIDEr {with_cider}");
    assert!(
        with_cider > without_cider,
        "CIDEr with retrieval {with_cider}, without {without_cider}"
    );
}

/// `--precision bf16` (every linear product of the decoder in bf16): the model still learns to
/// read the shape from the retrieved captions.
#[test]
fn training_with_bf16_products_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let (clip, gpt2) = pretrained(tmp.path());
    let d = data(tmp.path(), &clip);
    let (acc, cider) = train(
        &d,
        &clip,
        &gpt2,
        &tmp.path().join("bf16"),
        true,
        &["--precision", "bf16", "--train-decoder"],
    );
    assert!(acc >= 0.5, "exact match {acc}");
    assert!(cider >= 3.75, "CIDEr {cider}");
}
