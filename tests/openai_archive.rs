//! OpenAI's CLIP files as OpenAI writes them: `retrieval/clip_resnet_jit_fp16.pt` is the fixture
//! CLIP converted to fp16 (`clip.model.convert_weights`), traced and saved with `torch.jit.save`.
//! `pipeline_cases.json` is what the reference computes from it end to end for every fixture
//! image (`clip.load(..., device="cpu")`, FAISS top-4, the prompt, beam search as infer.py): the
//! query embeddings must agree within 1e-4 (relative), and the retrieved ids, captions, prompt
//! ids, generated ids and captions exactly.

mod common;

use candle_core::Device;
use common::fixture;
use serde::Deserialize;
use smallcap::retrieval::{Queries, RetrievalEncoder};
use smallcap::{
    EncoderPrecision, GenerationConfig, ImageInput, Pipeline, PipelineOptions, PromptSource,
};

#[derive(Deserialize)]
struct Case {
    image: String,
    query_embedding: Vec<f32>,
    top_ids: Vec<i64>,
    top_scores: Vec<f32>,
    retrieved_captions: Vec<String>,
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    caption: String,
}

#[derive(Deserialize)]
struct Generation {
    max_new_tokens: usize,
    length_penalty: f64,
    num_beams: usize,
    early_stopping: bool,
    eos_token_id: u32,
}

#[derive(Deserialize)]
struct Cases {
    generation: Generation,
    k: usize,
    cases: Vec<Case>,
}

fn cases() -> Cases {
    serde_json::from_slice(&std::fs::read(fixture("pipeline_cases.json")).unwrap()).unwrap()
}

fn archive() -> String {
    fixture("retrieval/clip_resnet_jit_fp16.pt")
        .display()
        .to_string()
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let d: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let n: f32 = b.iter().map(|y| y * y).sum();
    (d / n).sqrt()
}

#[test]
fn the_fp16_torchscript_archive_gives_the_reference_query_embeddings() {
    let enc = RetrievalEncoder::load(&archive(), &Device::Cpu).unwrap();
    reference_query_embeddings(&enc);
}

/// Loaded for image queries alone (as `caption` loads it), the encoder leaves its text tower
/// out: image queries still give the reference's embeddings, and a text query is a clear error.
#[test]
fn an_encoder_loaded_for_images_gives_the_reference_embeddings_and_refuses_texts() {
    let enc = RetrievalEncoder::load_for(
        &archive(),
        &Device::Cpu,
        EncoderPrecision::F32,
        Queries::Images,
    )
    .unwrap();
    reference_query_embeddings(&enc);
    let e = enc.encode_texts(&["a dog"]).unwrap_err().to_string();
    assert!(
        e.contains("image queries only") && e.contains("text tower"),
        "{e}"
    );
}

/// Loaded for text queries alone (as datastore builds load it), the encoder leaves its image
/// tower out: encoding an image is a clear error (its texts are checked against the reference's
/// store by the datastore build tests).
#[test]
fn an_encoder_loaded_for_texts_refuses_images() {
    let enc = RetrievalEncoder::load_for(
        &archive(),
        &Device::Cpu,
        EncoderPrecision::F32,
        Queries::Texts,
    )
    .unwrap();
    let image = smallcap_image::load(&fixture("images/chelsea.png")).unwrap();
    let e = enc.encode_images(&[image]).unwrap_err().to_string();
    assert!(
        e.contains("text queries only") && e.contains("image tower"),
        "{e}"
    );
    assert_eq!(enc.encode_texts(&["a dog"]).unwrap().len(), enc.dim());
}

/// `enc` embeds the 11 fixture images within 1e-4 of the reference's query embeddings.
fn reference_query_embeddings(enc: &RetrievalEncoder) {
    assert_eq!(enc.image_size(), 448);
    let c = cases();
    assert_eq!(c.cases.len(), 11);
    let images: Vec<_> = c
        .cases
        .iter()
        .map(|case| smallcap_image::load(&fixture(&format!("images/{}", case.image))).unwrap())
        // As the reference's pipeline does: `Image.open(path).convert("RGB")`, then `_transform`.
        .map(|img| smallcap_image::SourceImage::from(img.to_rgb()))
        .collect();
    let got = enc.encode_images(&images).unwrap();
    let dim = enc.dim();
    for (case, row) in c.cases.iter().zip(got.chunks(dim)) {
        let e = rel(row, &case.query_embedding);
        assert!(e < 1e-4, "{}: relative error {e}", case.image);
    }
}

#[test]
fn the_pipeline_through_the_archive_gives_the_reference_captions() {
    let c = cases();
    let p = Pipeline::load(&PipelineOptions {
        tokenizer: Some(fixture("tokenizer").display().to_string()),
        datastores: vec![format!(
            "{},captions={}",
            fixture("retrieval/datastore_index").display(),
            fixture("retrieval/datastore_captions.json").display()
        )],
        retrieval_encoder: Some(archive()),
        ..PipelineOptions::new(fixture("model").display().to_string())
    })
    .unwrap();
    let g = &c.generation;
    let generation = GenerationConfig {
        num_beams: g.num_beams,
        early_stopping: g.early_stopping,
        length_penalty: g.length_penalty,
        max_new_tokens: g.max_new_tokens,
        eos_token_id: g.eos_token_id,
        ..p.default_generation()
    };
    let inputs = c
        .cases
        .iter()
        .map(|case| ImageInput::Path(fixture(&format!("images/{}", case.image))))
        .collect();
    let out = p
        .caption(inputs, &PromptSource::Datastore(None), c.k, &generation)
        .unwrap();
    for (case, got) in c.cases.iter().zip(out) {
        let got = got.unwrap();
        let r = got.retrieved.as_ref().unwrap();
        assert_eq!(r.ids, case.top_ids, "{}", case.image);
        for (a, b) in r.scores.iter().zip(&case.top_scores) {
            assert!((a - b).abs() < 1e-4, "{}: score {a} vs {b}", case.image);
        }
        assert_eq!(
            got.retrieved_captions, case.retrieved_captions,
            "{}",
            case.image
        );
        assert_eq!(got.prompt_ids, case.prompt_ids, "{}", case.image);
        assert_eq!(got.generated_ids, case.generated_ids, "{}", case.image);
        assert_eq!(got.caption, case.caption, "{}", case.image);
    }
}
