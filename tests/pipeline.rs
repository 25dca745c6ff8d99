//! The library pipeline: live retrieval from a FAISS-file datastore gives the reference's FAISS
//! top-k ids (`retrieval/cases.json`) as prompt captions, and captions that do not depend on how
//! the images are given (path, bytes, decoded) or batched. Given captions give the reference's
//! generated ids (`cases.json`).

mod common;

use std::sync::Arc;

use common::{cases, fixture};
use serde_json::Value;
use smallcap::{GenerationConfig, ImageInput, Pipeline, PipelineOptions, PromptSource};

fn pipeline() -> Pipeline {
    Pipeline::load(&PipelineOptions {
        tokenizer: Some(fixture("tokenizer").display().to_string()),
        datastores: vec![format!(
            "coco={},captions={}",
            fixture("retrieval/datastore_index").display(),
            fixture("retrieval/datastore_captions.json").display()
        )],
        retrieval_encoder: Some(fixture("retrieval/clip_resnet.pt").display().to_string()),
        ..PipelineOptions::new(fixture("model").display().to_string())
    })
    .unwrap()
}

#[test]
fn live_retrieval_is_the_reference_top_k_however_images_are_given_or_batched() {
    let p = pipeline();
    let cases: Value =
        serde_json::from_slice(&std::fs::read(fixture("retrieval/cases.json")).unwrap()).unwrap();
    let cases = cases["image_cases"].as_array().unwrap();
    let paths: Vec<_> = cases
        .iter()
        .map(|c| fixture(c["image"].as_str().unwrap()))
        .collect();
    let generation = p.default_generation();
    let source = PromptSource::Datastore(Some("coco".into()));
    let by_path: Vec<_> = p
        .caption(
            paths.iter().cloned().map(ImageInput::Path).collect(),
            &source,
            4,
            &generation,
        )
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (got, case) in by_path.iter().zip(cases) {
        let r = got.retrieved.as_ref().unwrap();
        let want: Vec<i64> = case["top_ids"].as_array().unwrap()[..4]
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(r.ids, want, "{}", case["image"]);
        assert_eq!(got.retrieved_captions, r.captions);
    }
    // Bytes and decoded images, one at a time: the same results.
    for (path, want) in paths.iter().zip(&by_path) {
        let bytes: Arc<[u8]> = std::fs::read(path).unwrap().into();
        let decoded = Arc::new(smallcap_image::decode(&bytes, "x").unwrap());
        for input in [
            ImageInput::Bytes {
                name: path.display().to_string(),
                bytes: bytes.clone(),
            },
            ImageInput::Image(decoded),
        ] {
            let got = p.caption(vec![input], &source, 4, &generation).unwrap();
            let mut got = got[0].as_ref().unwrap().clone();
            // A batch of one and a batch of eleven round the encoder's sums differently (as
            // PyTorch's convolutions do): scores agree to float rounding, everything else exactly.
            let (g, w) = (
                got.retrieved.as_mut().unwrap(),
                want.retrieved.as_ref().unwrap(),
            );
            for (a, b) in g.scores.iter().zip(&w.scores) {
                assert!((a - b).abs() < 1e-6, "{}: score {a} vs {b}", path.display());
            }
            g.scores.clone_from(&w.scores);
            assert_eq!(&got, want, "{}", path.display());
        }
    }
}

#[test]
fn given_captions_give_the_reference_ids_and_bad_items_fail_alone() {
    let p = pipeline();
    let generation = GenerationConfig {
        num_beams: 3,
        early_stopping: true,
        ..p.default_generation()
    };
    let mut items = Vec::new();
    let mut want = Vec::new();
    for c in cases() {
        let Some(d) = c.expected.get("beam3_early") else {
            continue;
        };
        let prompt = match &c.retrieved_captions {
            Some(caps) => PromptSource::Captions(caps.clone()),
            None => PromptSource::NoRetrieval,
        };
        items.push((ImageInput::Path(fixture(&c.image)), prompt, c.k));
        want.push(Some((c.prompt_ids.clone(), d.clone())));
        // An unreadable image and an unknown datastore fail alone.
        items.push((
            ImageInput::Path("/no/such/image.png".into()),
            PromptSource::NoRetrieval,
            0,
        ));
        want.push(None);
        items.push((
            ImageInput::Path(fixture(&c.image)),
            PromptSource::Datastore(Some("flickr".into())),
            4,
        ));
        want.push(None);
    }
    assert!(want.len() >= 6, "the fixture has beam3_early cases");
    let got = p.caption_each(items, &generation).unwrap();
    for (g, w) in got.iter().zip(&want) {
        match (g, w) {
            (Ok(g), Some((prompt_ids, d))) => {
                assert_eq!(&g.prompt_ids, prompt_ids);
                assert_eq!(g.generated_ids, d.generated_ids);
                assert_eq!(g.caption, d.caption);
            }
            (Err(e), None) => {
                let e = e.to_string();
                assert!(
                    e.contains("/no/such/image.png")
                        || e.contains("unknown datastore \"flickr\"; loaded: coco"),
                    "{e}"
                );
            }
            (g, w) => panic!("got {g:?}, wanted {:?}", w.is_some()),
        }
    }
}
