//! `--encoder-precision` end to end on the reference fixture, through every kernel level the CPU
//! runs (`SMALLCAP_BF16_KERNEL` forces AMX, AVX-512 BF16 or the portable loop; a level the CPU
//! lacks falls back to the next one down) and every way of computing f32 (`SMALLCAP_F32_SPLIT`:
//! plain f32 GEMMs, three or two bf16 parts): `f32` retrieves the reference's top-k and gives
//! its captions; `bf16` gives scores within bf16's error of f32's; a bad value is refused.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::{assert_pipeline_cases, fixture, pipeline_cases};
use serde_json::Value;

fn smallcap(level: &str, split: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smallcap"));
    c.env_remove("HF_ENDPOINT")
        .env("HF_HUB_OFFLINE", "1")
        .env("SMALLCAP_BF16_KERNEL", level)
        .env("SMALLCAP_F32_SPLIT", split);
    c
}

fn rfix(rel: &str) -> PathBuf {
    fixture("retrieval").join(rel)
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `retrieve` of the 11 fixture images with `k` results each.
fn retrieve(level: &str, split: &str, precision: &str, k: usize) -> Vec<Value> {
    let out = smallcap(level, split)
        .args(["retrieve", "--index"])
        .arg(rfix("datastore_index"))
        .arg("--captions")
        .arg(rfix("datastore_captions.json"))
        .arg("--encoder")
        .arg(rfix("clip_resnet.pt"))
        .args([
            "--encoder-precision",
            precision,
            "--k",
            &k.to_string(),
            "--images",
        ])
        .arg(fixture("images"))
        .output()
        .unwrap();
    lines(&out)
}

const LEVELS: [&str; 3] = ["amx", "avx512", "portable"];

#[test]
fn f32_retrieves_the_reference_top_k_with_every_kernel() {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(rfix("cases.json")).unwrap()).unwrap();
    let by_image: HashMap<&str, &Value> = cases["image_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["image"].as_str().unwrap().trim_start_matches("images/"),
                c,
            )
        })
        .collect();
    for level in LEVELS {
        for split in ["off", "3", "2"] {
            let res = retrieve(level, split, "f32", 8);
            assert_eq!(res.len(), 11);
            for r in &res {
                let name = PathBuf::from(r["query"].as_str().unwrap());
                let name = name.file_name().unwrap().to_str().unwrap().to_string();
                let want = by_image[name.as_str()];
                assert_eq!(r["ids"], want["top_ids"], "{level} split {split}: {name}");
                for (s, w) in r["scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(want["top_scores"].as_array().unwrap())
                {
                    let (s, w) = (s.as_f64().unwrap(), w.as_f64().unwrap());
                    assert!(
                        (s - w).abs() < 1e-4,
                        "{level} split {split}: {name}: {s} vs {w}"
                    );
                }
            }
        }
    }
}

/// bf16 scores against the reference's (FAISS over its fp32 query embeddings): the whole store
/// is ranked, so each of the reference's top-8 captions has a bf16 score to compare; cosine
/// similarities of embeddings that agree to bf16's 8 bits.
#[test]
fn bf16_scores_agree_with_the_reference_scores() {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(rfix("cases.json")).unwrap()).unwrap();
    let want: HashMap<String, Vec<(i64, f64)>> = cases["image_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["image"].as_str().unwrap().trim_start_matches("images/");
            let ids = c["top_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap());
            let s = c["top_scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap());
            (name.to_string(), ids.zip(s).collect())
        })
        .collect();
    let n = 588;
    for level in LEVELS {
        let mut worst = 0f64;
        for r in retrieve(level, "off", "bf16", n) {
            let name = PathBuf::from(r["query"].as_str().unwrap());
            let name = name.file_name().unwrap().to_str().unwrap().to_string();
            let ids = r["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap());
            let s = r["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap());
            let got: HashMap<i64, f64> = ids.zip(s).collect();
            assert_eq!(got.len(), n);
            for (id, score) in &want[&name] {
                worst = worst.max((got[id] - score).abs());
            }
        }
        eprintln!("{level}: bf16 scores within {worst:e} of the reference's");
        assert!(worst < 5e-3, "{level}: {worst}");
        assert!(
            worst > 1e-5,
            "{level}: bf16 gave f32's scores; was it used?"
        );
    }
}

/// `caption` with live retrieval from the fixture's FAISS store through `encoder`.
fn caption_live(level: &str, split: &str, encoder: &str, precision: &str) -> Command {
    let mut c = smallcap(level, split);
    c.args(["caption", "--model"])
        .arg(fixture("model"))
        .arg("--tokenizer")
        .arg(fixture("tokenizer"))
        .arg("--datastore")
        .arg(format!(
            "{},captions={}",
            rfix("datastore_index").display(),
            rfix("datastore_captions.json").display()
        ))
        .arg("--retrieval-encoder")
        .arg(rfix(encoder))
        .args(["--encoder-precision", precision]);
    c
}

#[test]
fn live_retrieval_captions_as_the_reference_with_every_kernel() {
    let cases = pipeline_cases();
    for level in LEVELS {
        for split in ["3", "2"] {
            let mut c = caption_live(level, split, "clip_resnet_jit_fp16.pt", "f32");
            for case in &cases {
                c.arg(fixture(&format!(
                    "images/{}",
                    case["image"].as_str().unwrap()
                )));
            }
            assert_pipeline_cases(&lines(&c.output().unwrap()), &cases);
        }
    }
}

#[test]
fn bf16_captions_every_image_and_a_bad_precision_is_refused() {
    let mut c = caption_live("amx", "3", "clip_resnet.pt", "bf16");
    c.arg("--images").arg(fixture("images"));
    let out = lines(&c.output().unwrap());
    assert_eq!(out.len(), 11);
    for l in &out {
        assert_eq!(l["retrieved_captions"].as_array().unwrap().len(), 4);
        assert!(!l["caption"].as_str().unwrap().is_empty() || l["generated_ids"].is_array());
    }
    let bad = smallcap("amx", "3")
        .args(["retrieve", "--index"])
        .arg(rfix("datastore_index"))
        .arg("--captions")
        .arg(rfix("datastore_captions.json"))
        .args(["--encoder-precision", "f16", "--text", "a dog"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(
        e.contains("--encoder-precision") && e.contains("f16"),
        "{e}"
    );
}

/// `datastore build --encoder-precision bf16`: the text tower's linear layers on the bf16
/// blocks, with every kernel level; each caption embedding within bf16's error of the
/// reference's (unit vectors: an L2 distance), and not equal to f32's.
#[test]
fn bf16_datastore_build_embeds_captions_close_to_the_reference() {
    for level in LEVELS {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("store");
        let status = smallcap(level, "3")
            .args(["datastore", "build", "--captions"])
            .arg(rfix("datastore_captions.json"))
            .arg("--encoder")
            .arg(rfix("clip_resnet.pt"))
            .arg("--out")
            .arg(&out)
            .args(["--batch-size", "100", "--encoder-precision", "bf16"])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let worst = common::store_rows_vs_reference(&out, 32);
        eprintln!("{level}: bf16 caption embeddings within {worst:e} of the reference's");
        assert!(worst < 5e-2 && worst > 1e-6, "{level}: {worst}");
    }
}
