//! Shared helpers for the integration tests: the reference fixture pack and tensor comparisons.
#![allow(dead_code)]

pub mod annotations;
pub mod decoder_pack;
pub mod fixture_server;
pub mod http;
pub mod hub_server;
pub mod openai_server;
pub mod serve_cli;
pub mod train_steps;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::Deserialize;

/// A file of the fixture pack. `SMALLCAP_REPO` points a test binary run away from its build
/// (the GPU bundle of scripts/cuda-build.sh) at a copy of the repository.
pub fn fixture(rel: &str) -> PathBuf {
    std::env::var_os("SMALLCAP_REPO")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/fixtures/smallcap-tiny")
        .join(rel)
}

#[derive(Deserialize, Clone)]
pub struct Decoded {
    pub generated_ids: Vec<u32>,
    pub caption: String,
}

#[derive(Deserialize, Clone)]
pub struct Case {
    pub id: String,
    pub image: String,
    pub retrieved_captions: Option<Vec<String>>,
    pub k: usize,
    pub prompt_ids: Vec<u32>,
    pub expected: std::collections::BTreeMap<String, Decoded>,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

pub fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("cases.json")).unwrap();
    serde_json::from_str::<Cases>(&text).unwrap().cases
}

pub fn expected_tensors() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("expected_tensors.safetensors"), &Device::Cpu).unwrap()
}

/// max |a − b|.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// max |a|.
pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let diff: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm).sqrt() as f32
}

pub fn max_abs_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The decode settings of the fixture pack.
pub fn settings() -> Vec<(&'static str, smallcap::GenerationConfig)> {
    let base = smallcap::GenerationConfig {
        num_beams: 3,
        early_stopping: true,
        length_penalty: 0.0,
        max_new_tokens: 25,
        eos_token_id: 13,
        pad_token_id: 0,
    };
    vec![
        ("beam3_early", base.clone()),
        (
            "beam3",
            smallcap::GenerationConfig {
                early_stopping: false,
                ..base.clone()
            },
        ),
        (
            "greedy",
            smallcap::GenerationConfig {
                num_beams: 1,
                ..base
            },
        ),
    ]
}

/// A throwaway PostgreSQL + pgvector server from `$SMALLCAP_PG_BIN` (which `scripts/test` sets),
/// or `None` with a message when none can start; under CI that fails the test instead.
pub fn local_postgres_or_skip(test: &str) -> Option<smallcap_datastore::pg_local::LocalPostgres> {
    let msg = match smallcap_datastore::pg_local::LocalPostgres::from_env() {
        Ok(Some(s)) => return Some(s),
        Err(e) => format!("the PostgreSQL server did not start: {e}"),
        Ok(None) => "SMALLCAP_PG_BIN is not set (scripts/test sets it)".into(),
    };
    assert!(std::env::var_os("CI").is_none(), "{test} under CI: {msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

/// Runs a command that must succeed (its stderr in the failure message); returns its output.
pub fn run_ok(c: &mut std::process::Command) -> std::process::Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `smallcap datastore import` of the fixture's FAISS index (the reference's) into our folder
/// format at `out`, recording the fixture's OpenAI CLIP as its encoder.
pub fn import_fixture_store(out: &std::path::Path) {
    run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_smallcap"))
            .args(["datastore", "import", "--index"])
            .arg(fixture("retrieval/datastore_index"))
            .arg("--captions")
            .arg(fixture("retrieval/datastore_captions.json"))
            .arg("--encoder")
            .arg(fixture("retrieval/clip_resnet.pt"))
            .arg("--out")
            .arg(out),
    );
}

/// The worst L2 distance of a datastore folder's `dim`-wide f32 rows (`embeddings.bin`) from the
/// reference's caption embeddings (`retrieval/expected_tensors`).
pub fn store_rows_vs_reference(dir: &std::path::Path, dim: usize) -> f32 {
    let got: Vec<f32> = std::fs::read(dir.join("embeddings.bin"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let t = candle_core::safetensors::load(
        fixture("retrieval/expected_tensors.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want = t["caption_embeddings"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(got.len(), want.len());
    let worst = got
        .chunks(dim)
        .zip(want.chunks(dim))
        .map(|(g, w)| {
            g.iter()
                .zip(w)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt()
        })
        .fold(0f32, f32::max);
    worst
}

/// The cases of `pipeline_cases.json` (the reference's live-retrieval pipeline, end to end).
pub fn pipeline_cases() -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("pipeline_cases.json")).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

/// `caption` output lines against `pipeline_cases.json`: retrieved captions, generated ids and
/// captions, image by image.
pub fn assert_pipeline_cases(lines: &[serde_json::Value], cases: &[serde_json::Value]) {
    assert_eq!(lines.len(), cases.len());
    for (got, want) in lines.iter().zip(cases) {
        let name = want["image"].as_str().unwrap();
        assert_eq!(
            got["retrieved_captions"], want["retrieved_captions"],
            "{name}"
        );
        assert_eq!(got["generated_ids"], want["generated_ids"], "{name}");
        assert_eq!(got["caption"], want["caption"], "{name}");
    }
}

/// Every case decoded in every setting, all cases in one batch and each alone (`states` are the
/// cases' encoder states): the generated ids and captions equal the pack's, either way.
pub fn assert_cases_decode(
    label: &str,
    cases: &[Case],
    states: &[Tensor],
    decoder: &smallcap::models::Decoder,
    tok: &smallcap::Tokenizer,
    settings: &[(&str, smallcap::GenerationConfig)],
) {
    use smallcap::generation::{generate, Request};
    for (name, cfg) in settings {
        let requests: Vec<Request> = cases
            .iter()
            .zip(states)
            .map(|(c, s)| Request {
                prompt_ids: &c.prompt_ids,
                encoder_hidden_states: s.clone(),
            })
            .collect();
        let batched = generate(decoder, &requests, cfg).unwrap();
        for (i, case) in cases.iter().enumerate() {
            let want = &case.expected[*name];
            let what = format!("{label} {} {name}", case.id);
            assert_eq!(batched[i], want.generated_ids, "{what}, batched");
            let alone = generate(decoder, &requests[i..i + 1], cfg).unwrap();
            assert_eq!(alone[0], want.generated_ids, "{what}, alone");
            let mut full = case.prompt_ids.clone();
            full.extend(&alone[0]);
            assert_eq!(tok.caption(&full).unwrap(), want.caption, "{what}");
        }
    }
}

/// Form fields of `/v1/captions` for a case's prompt and a decode setting of the pack.
/// `POST /v1/captions` of one case's image (`bytes`, uploaded as `filename`) with its prompt
/// fields for `setting`, on the server at `addr`.
pub fn post_case_image(
    addr: &str,
    case: &Case,
    filename: &str,
    bytes: &[u8],
    setting: &str,
) -> http::Resp {
    let fields = case_fields(case, setting);
    let mut parts = vec![http::Part::File {
        name: "image",
        filename,
        bytes,
    }];
    parts.extend(
        fields
            .iter()
            .map(|(n, v)| http::Part::Field { name: n, value: v }),
    );
    http::post_multipart(&format!("http://{addr}/v1/captions"), &parts)
}

pub fn case_fields(case: &Case, setting: &str) -> Vec<(&'static str, String)> {
    let mut f: Vec<(&'static str, String)> = Vec::new();
    match &case.retrieved_captions {
        Some(caps) if case.k > 0 => {
            for c in caps {
                f.push(("captions", c.clone()));
            }
            f.push(("k", case.k.to_string()));
        }
        _ => f.push(("no_retrieval", "true".into())),
    }
    match setting {
        "beam3_early" => {
            f.push(("beams", "3".into()));
            f.push(("early_stopping", "true".into()));
        }
        "beam3" => {
            f.push(("beams", "3".into()));
            f.push(("early_stopping", "false".into()));
        }
        "greedy" => f.push(("beams", "1".into())),
        other => panic!("unknown setting {other}"),
    }
    f
}
