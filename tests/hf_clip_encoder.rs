//! The Hugging Face `CLIPModel` retrieval encoder, and the option that reuses the captioning
//! encoder's vision tower. A tiny `CLIPModel` folder is assembled from the fixture SmallCap
//! checkpoint's CLIP vision tower (whose `last_hidden_state` the model tests check against the
//! reference) plus the reference OpenAI CLIP fixture's text tower in HF's names and a random
//! `visual_projection`; the text tower must give the reference's caption embeddings, and
//! retrieval queries computed from the captioner's encoder states must equal those of the full
//! encoder path.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::fixture;
use smallcap::checkpoint::read_state_dict;
use smallcap::retrieval::RetrievalEncoder;
use smallcap::SmallCap;

/// A tiny `CLIPModel` folder: the vision tower is the fixture SmallCap checkpoint's, the text
/// tower is the reference OpenAI CLIP fixture's (`retrieval/clip_resnet.pt`: width 32, 2 heads,
/// 2 layers, embed 32), written here in HF's names, and `visual_projection` is random.
fn tiny_clip_model(dir: &std::path::Path) {
    let dev = Device::Cpu;
    let sd = read_state_dict(&fixture("model/pytorch_model.bin"), &dev).unwrap();
    let mut out: HashMap<String, Tensor> = sd
        .into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("encoder.")
                .map(|r| (format!("vision_model.{r}"), v))
        })
        .collect();
    let (hv, ht, e) = (64usize, 32usize, 32usize);
    out.insert(
        "visual_projection.weight".into(),
        (Tensor::randn(0f32, 1f32, (e, hv), &dev).unwrap() * 0.05).unwrap(),
    );
    let clip = read_state_dict(&fixture("retrieval/clip_resnet.pt"), &dev).unwrap();
    // (HF name, OpenAI name) of the tensors that are only renamed.
    let mut renames: Vec<(String, String)> = vec![
        (
            "text_model.embeddings.token_embedding.weight".into(),
            "token_embedding.weight".into(),
        ),
        (
            "text_model.embeddings.position_embedding.weight".into(),
            "positional_embedding".into(),
        ),
    ];
    for p in ["weight", "bias"] {
        renames.push((
            format!("text_model.final_layer_norm.{p}"),
            format!("ln_final.{p}"),
        ));
    }
    for i in 0..2 {
        let (hf, oa) = (
            format!("text_model.encoder.layers.{i}"),
            format!("transformer.resblocks.{i}"),
        );
        for (h, o) in [
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("self_attn.out_proj", "attn.out_proj"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ] {
            for p in ["weight", "bias"] {
                renames.push((format!("{hf}.{h}.{p}"), format!("{oa}.{o}.{p}")));
            }
        }
        // nn.MultiheadAttention's in_proj holds q, k and v one after another.
        for (j, x) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            let w = &clip[&format!("{oa}.attn.in_proj_weight")];
            let b = &clip[&format!("{oa}.attn.in_proj_bias")];
            out.insert(
                format!("{hf}.self_attn.{x}.weight"),
                w.narrow(0, j * ht, ht).unwrap().contiguous().unwrap(),
            );
            out.insert(
                format!("{hf}.self_attn.{x}.bias"),
                b.narrow(0, j * ht, ht).unwrap().contiguous().unwrap(),
            );
        }
    }
    for (hf, openai) in renames {
        out.insert(hf, clip[&openai].clone());
    }
    out.insert(
        "text_projection.weight".into(),
        clip["text_projection"].t().unwrap().contiguous().unwrap(),
    );
    candle_core::safetensors::save(&out, dir.join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({
        "architectures": ["CLIPModel"], "projection_dim": e,
        "text_config": {"hidden_size": ht, "intermediate_size": 4 * ht, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "vocab_size": 49408, "max_position_embeddings": 77,
                        "hidden_act": "quick_gelu"},
        "vision_config": {"hidden_size": hv, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 224, "patch_size": 32,
                          "hidden_act": "quick_gelu"}
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

/// HF's `CLIPTextModel` + `text_projection` computes OpenAI's `encode_text`: the renamed text
/// tower gives the reference's caption embeddings (`retrieval/expected_tensors.safetensors`).
#[test]
fn the_hf_text_tower_gives_the_reference_caption_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_clip_model(tmp.path());
    let enc = RetrievalEncoder::load(tmp.path().to_str().unwrap(), &Device::Cpu).unwrap();
    let caps: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixture("retrieval/datastore_captions.json")).unwrap(),
    )
    .unwrap();
    let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
    let got = enc.encode_texts(&refs).unwrap();
    let want = candle_core::safetensors::load(
        fixture("retrieval/expected_tensors.safetensors"),
        &Device::Cpu,
    )
    .unwrap()["caption_embeddings"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.chunks(32).zip(want.chunks(32)).enumerate() {
        let d: f32 = g.iter().zip(w).map(|(a, b)| (a - b).powi(2)).sum();
        let n: f32 = w.iter().map(|b| b * b).sum();
        assert!(
            (d / n).sqrt() < 1e-4,
            "caption {i}: relative error {}",
            (d / n).sqrt()
        );
    }
}

#[test]
fn reusing_the_captioning_vision_tower_gives_the_encoder_queries() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_clip_model(tmp.path());
    let dev = Device::Cpu;
    let enc = RetrievalEncoder::load(tmp.path().to_str().unwrap(), &dev).unwrap();
    assert_eq!(enc.dim(), 32);
    let identity = enc.identity().unwrap();
    assert!(identity.starts_with("hf-clip:"), "{identity}");
    let captioner = SmallCap::load_dir(&fixture("model"), &dev).unwrap();
    let names = [
        "chelsea.png",
        "synth_0_640x480_RGB.jpg",
        "synth_3_300x301_L.png",
    ];
    let imgs: Vec<_> = names
        .iter()
        .map(|n| smallcap_image::load(&fixture(&format!("images/{n}"))).unwrap())
        .collect();
    let full = enc.encode_images(&imgs).unwrap();
    let px: Vec<Tensor> = imgs
        .iter()
        .map(|i| Tensor::from_vec(enc.preprocess(i), (3, 224, 224), &dev).unwrap())
        .collect();
    let states = captioner.encode(&Tensor::stack(&px, 0).unwrap()).unwrap();
    let shared = enc.encode_from_vision_states(&states).unwrap();
    assert_eq!(full.len(), 3 * 32);
    let err = full
        .iter()
        .zip(&shared)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-5, "max abs difference {err}");
    for row in full.chunks(32) {
        let n: f32 = row.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-5);
    }
    // An OpenAI CLIP does not share the captioning tower.
    let openai =
        RetrievalEncoder::load(fixture("retrieval/clip_resnet.pt").to_str().unwrap(), &dev)
            .unwrap();
    let e = openai
        .encode_from_vision_states(&states)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not share"), "{e}");
}

fn smallcap() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_smallcap"));
    c.env_remove("HF_ENDPOINT").env("HF_HUB_OFFLINE", "1");
    c
}

fn run(c: &mut std::process::Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `smallcap caption --datastore D --share-vision-tower`, or without the option.
fn caption_with_store(
    store: &std::path::Path,
    encoder: &std::path::Path,
    share: bool,
) -> std::process::Output {
    let mut c = smallcap();
    c.arg("caption")
        .arg("--model")
        .arg(fixture("model"))
        .arg("--tokenizer")
        .arg(fixture("tokenizer"))
        .arg("--datastore")
        .arg(store)
        .arg("--retrieval-encoder")
        .arg(encoder);
    if share {
        c.arg("--share-vision-tower");
    }
    for n in [
        "chelsea.png",
        "synth_0_640x480_RGB.jpg",
        "synth_3_300x301_L.png",
    ] {
        c.arg(fixture(&format!("images/{n}")));
    }
    c.output().unwrap()
}

#[test]
fn caption_can_retrieve_with_the_captioning_vision_tower() {
    let tmp = tempfile::tempdir().unwrap();
    let encoder = tmp.path().join("clip");
    std::fs::create_dir(&encoder).unwrap();
    tiny_clip_model(&encoder);
    let captions = tmp.path().join("captions.txt");
    let lines: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "caption number {i} of a {} thing",
                ["red", "blue", "small", "round"][i % 4]
            )
        })
        .collect();
    std::fs::write(&captions, lines.join("\n")).unwrap();
    let store = tmp.path().join("store");
    run(smallcap()
        .args(["datastore", "build", "--captions"])
        .arg(&captions)
        .arg("--encoder")
        .arg(&encoder)
        .arg("--out")
        .arg(&store));

    // The shared tower gives the queries of the full retrieval encoder (checked above), so the
    // same captions are retrieved and the same captions generated.
    let parse = |out: std::process::Output| -> Vec<serde_json::Value> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let own = parse(caption_with_store(&store, &encoder, false));
    let shared = parse(caption_with_store(&store, &encoder, true));
    assert_eq!(own.len(), 3);
    assert_eq!(own, shared);
    let retrieved = own[0]["retrieved_captions"].as_array().unwrap();
    assert_eq!(retrieved.len(), 4);

    // A retrieval encoder whose vision tower is not the captioner's is refused.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    tiny_clip_model(&other);
    let path = other.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let key = "vision_model.encoder.layers.0.mlp.fc1.weight";
    let noise = Tensor::randn(0f32, 0.5, t[key].shape(), &Device::Cpu).unwrap();
    let changed = (t[key].clone() + noise).unwrap();
    t.insert(key.into(), changed);
    candle_core::safetensors::save(&t, &path).unwrap();
    // A store built with it (one with other weights is refused by their SHA256).
    let other_store = tmp.path().join("other_store");
    run(smallcap()
        .args(["datastore", "build", "--captions"])
        .arg(&captions)
        .arg("--encoder")
        .arg(&other)
        .arg("--out")
        .arg(&other_store));
    let e = caption_with_store(&store, &other, true);
    assert!(String::from_utf8_lossy(&e.stderr).contains("SHA256"));
    let out = caption_with_store(&other_store, &other, true);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not have the captioning encoder's vision tower"),
        "{err}"
    );
}
