//! Retrieval encoders against the reference fixture (`smallcap-tiny/retrieval/`, made by
//! openai/CLIP `model.CLIP` + faiss-cpu): query embeddings within 1e-4 (relative), top-k ids
//! identical to FAISS's for every image and text case, caption embeddings recomputed by the text
//! tower, CLIP token ids identical to `clip.tokenize`.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::fixture;
use serde::Deserialize;
use smallcap::models::clip_openai::{ClipDims, VisionLayers};
use smallcap::retrieval::{CaptionStore, RetrievalEncoder, Retriever};

#[derive(Deserialize)]
struct ImageCase {
    image: String,
    top_ids: Vec<i64>,
    top_scores: Vec<f32>,
}

#[derive(Deserialize)]
struct TextCase {
    text: String,
    token_ids: Vec<u32>,
    top_ids: Vec<i64>,
}

#[derive(Deserialize)]
struct Cases {
    k: usize,
    image_cases: Vec<ImageCase>,
    text_cases: Vec<TextCase>,
}

fn rfix(rel: &str) -> std::path::PathBuf {
    fixture("retrieval").join(rel)
}

fn cases() -> Cases {
    serde_json::from_str(&std::fs::read_to_string(rfix("cases.json")).unwrap()).unwrap()
}

fn tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(rfix("expected_tensors.safetensors"), &Device::Cpu).unwrap()
}

fn encoder() -> RetrievalEncoder {
    RetrievalEncoder::load(rfix("clip_resnet.pt").to_str().unwrap(), &Device::Cpu).unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let d: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let n: f32 = b.iter().map(|y| y * y).sum();
    (d / n).sqrt()
}

fn image_name(case: &ImageCase) -> &str {
    case.image.trim_start_matches("images/")
}

#[test]
fn dims_are_inferred_like_build_model() {
    let enc = encoder();
    assert_eq!(enc.dim(), 32);
    assert_eq!(enc.image_size(), 448);
    assert_eq!(
        enc.description(),
        "openai-clip:RN(layers=[1, 1, 1, 1],width=16,res=448,embed=32)"
    );
    // The state dict alone gives build_model's values; clip_dims.json only adds the text heads.
    let map = smallcap::checkpoint::read_state_dict(&rfix("clip_resnet.pt"), &Device::Cpu).unwrap();
    let w = smallcap::models::clip_openai::Weights::new(&rfix("clip_resnet.pt"), map);
    let d = ClipDims::infer(&w).unwrap();
    let given: ClipDims =
        serde_json::from_str(&std::fs::read_to_string(rfix("clip_dims.json")).unwrap()).unwrap();
    assert_eq!(d.vision_layers, VisionLayers::ResNet([1, 1, 1, 1]));
    assert_eq!(d.transformer_heads, 0, "build_model: 32 // 64");
    assert_eq!(
        ClipDims {
            transformer_heads: 2,
            ..d
        },
        given
    );
}

#[test]
fn query_embeddings_match_the_reference_from_its_pixels() {
    let enc = encoder();
    let t = tensors();
    let c = cases();
    let mut n = 0;
    for case in &c.image_cases {
        let name = image_name(case);
        let Some(px) = t.get(&format!("{name}.pixel_values")) else {
            continue;
        };
        let q = enc.encode_image_tensor(&px.unsqueeze(0).unwrap()).unwrap();
        let want = t[&format!("{name}.query_embedding")]
            .to_vec1::<f32>()
            .unwrap();
        let e = rel(&q, &want);
        assert!(e < 1e-4, "{name}: relative error {e}");
        n += 1;
    }
    assert_eq!(n, 4);
}

#[test]
fn images_give_faiss_top_k_on_the_reference_index() {
    let enc = encoder();
    let t = tensors();
    let c = cases();
    let store =
        CaptionStore::open_faiss(&rfix("datastore_index"), &rfix("datastore_captions.json"))
            .unwrap();
    let retriever = Retriever::single(enc, store).unwrap();
    assert_eq!(c.image_cases.len(), 11);
    for case in &c.image_cases {
        let name = image_name(case);
        let img = smallcap_image::load(&fixture(&case.image)).unwrap();
        // Our preprocessing + encoder, against the reference's query embedding.
        let q = retriever.encoder().encode_images(&[&img]).unwrap();
        let want = t[&format!("{name}.query_embedding")]
            .to_vec1::<f32>()
            .unwrap();
        let e = rel(&q, &want);
        assert!(e < 1e-4, "{name}: relative error {e}");
        let got = retriever.retrieve_images(None, &[&img], c.k).unwrap();
        assert_eq!(got[0].ids, case.top_ids, "{name}");
        for (s, w) in got[0].scores.iter().zip(&case.top_scores) {
            assert!((s - w).abs() < 1e-4, "{name}: score {s} vs faiss {w}");
        }
    }
}

#[test]
fn caption_embeddings_and_text_queries_match_the_reference() {
    let enc = encoder();
    let caps: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(rfix("datastore_captions.json")).unwrap())
            .unwrap();
    let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
    let got = enc.encode_texts(&refs).unwrap();
    let want = tensors()["caption_embeddings"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for i in 0..caps.len() {
        let e = rel(&got[i * 32..(i + 1) * 32], &want[i * 32..(i + 1) * 32]);
        assert!(e < 1e-4, "caption {i} {:?}: relative error {e}", caps[i]);
    }
    let c = cases();
    let store =
        CaptionStore::open_faiss(&rfix("datastore_index"), &rfix("datastore_captions.json"))
            .unwrap();
    let tokens: Vec<Vec<u32>> = c
        .text_cases
        .iter()
        .map(|case| enc.tokenize(&[&case.text]).unwrap().remove(0))
        .collect();
    let retriever = Retriever::single(enc, store).unwrap();
    for (case, tokens) in c.text_cases.iter().zip(tokens) {
        assert_eq!(tokens, case.token_ids, "{}", case.text);
        let got = retriever.retrieve_texts(None, &[&case.text], c.k).unwrap();
        assert_eq!(got[0].ids, case.top_ids, "{}", case.text);
    }
}

#[test]
fn a_text_row_is_encoded_the_same_whatever_it_is_batched_with() {
    // Each row runs up to its end-of-text token, rows ending together in one batch: a caption
    // truncated at the 77-token context, captions of equal and of different lengths must come
    // out as when each is encoded alone (up to float summation order).
    let enc = encoder();
    let long = vec!["a dog"; 60].join(" and ");
    let texts = [
        long.as_str(),
        "a cat",
        "a dog",
        "two men riding horses on the beach",
        "a cat",
        "",
    ];
    let rows = enc.tokenize(&texts).unwrap();
    assert_eq!(
        rows[0][76], 49407,
        "the long caption is truncated with its end token last"
    );
    let together = enc.encode_texts(&texts).unwrap();
    let d = together.len() / texts.len();
    for (i, t) in texts.iter().enumerate() {
        let alone = enc.encode_texts(&[t]).unwrap();
        let e = rel(&together[i * d..(i + 1) * d], &alone);
        assert!(e < 1e-6, "{t:?}: relative difference {e}");
    }
}
