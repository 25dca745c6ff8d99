//! Shared helpers of the integration tests: fixture paths and loaders.
#![allow(dead_code)]

use std::path::PathBuf;

pub const RETRIEVAL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/smallcap-tiny/retrieval"
);

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(RETRIEVAL).join(name)
}

pub fn cases() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("cases.json")).unwrap()).unwrap()
}

/// A named f32 tensor of `expected_tensors.safetensors`.
pub fn tensor(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture("expected_tensors.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// (image name, query embedding, expected ids, expected scores) of one image case.
pub type ImageCase = (String, Vec<f32>, Vec<i64>, Vec<f32>);

/// Every image case of `cases.json`.
pub fn image_cases() -> Vec<ImageCase> {
    let c = cases();
    c["image_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let image = case["image"].as_str().unwrap();
            let name = image.rsplit('/').next().unwrap().to_string();
            let q = tensor(&format!("{name}.query_embedding"));
            let ids = case["top_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            let scores = case["top_scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            (name, q, ids, scores)
        })
        .collect()
}

pub fn ids(hits: &[(i64, f32)]) -> Vec<i64> {
    hits.iter().map(|h| h.0).collect()
}

/// A clustered synthetic set: `n` L2-normalised vectors of dimension `d` around `centres` random
/// directions (each vector: its centre plus Gaussian noise of standard deviation `noise` per
/// coordinate, normalised), and `nq` queries made the same way (new draws, not stored vectors).
pub fn clustered(
    n: usize,
    nq: usize,
    d: usize,
    centres: usize,
    noise: f32,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    use smallcap_datastore::kmeans::SplitMix64;
    use smallcap_datastore::store::normalize_l2;
    let mut rng = SplitMix64(seed);
    let mut c: Vec<f32> = (0..centres * d).map(|_| rng.normal()).collect();
    normalize_l2(&mut c, d);
    let mut draw = |count: usize| {
        let mut v = Vec::with_capacity(count * d);
        for _ in 0..count {
            let k = rng.below(centres);
            for j in 0..d {
                v.push(c[k * d + j] + noise * rng.normal());
            }
        }
        normalize_l2(&mut v, d);
        v
    };
    let base = draw(n);
    let queries = draw(nq);
    (base, queries)
}
