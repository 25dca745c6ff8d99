//! A server on a loopback port with the fixture model, and a fixture datastore searched through
//! a test double of the retrieval encoder.
//!
//! Retrieval needs a query encoder (CLIP RN50x64 in the paper). The library has none yet, so the
//! tests use a documented test double, [`FixtureEncoder`]: it answers the reference's own query
//! embeddings (`retrieval/expected_tensors.safetensors`, `<image>.query_embedding`) for the
//! fixture images, found by a hash of the image file's bytes, and a datastore caption's own
//! embedding for a text equal to that caption. Everything after the embedding (normalisation,
//! exact inner-product search, caption lookup, the prompt, captioning) is the server's.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Condvar, Mutex};

use candle_core::Device;
use smallcap::captioner::Captioner;
use smallcap::pipeline::Pipeline;
use smallcap::retrieval::{CaptionStore, QueryEncoder, Retriever};
use smallcap::server::{Server, ServerConfig};
use smallcap_datastore::store::StoreOptions;
use smallcap_datastore::{Datastore, Dtype, VectorSet};
use smallcap_image::SourceImage;

use super::fixture;

/// A decoded image's key: a hash of its RGB pixels and size.
pub fn image_key(img: &SourceImage) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let rgb = img.to_rgb();
    rgb.dimensions().hash(&mut h);
    rgb.as_raw().hash(&mut h);
    h.finish()
}

/// A gate the test double can hold the batch worker at (to fill the queue deterministically).
#[derive(Default)]
pub struct Gate {
    closed: Mutex<bool>,
    cv: Condvar,
    waiting: Mutex<usize>,
}

impl Gate {
    pub fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }
    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.cv.notify_all();
    }
    fn pass(&self) {
        *self.waiting.lock().unwrap() += 1;
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.cv.wait(closed).unwrap();
        }
        *self.waiting.lock().unwrap() -= 1;
    }
    pub fn waiting(&self) -> usize {
        *self.waiting.lock().unwrap()
    }
}

/// The test double of the retrieval encoder (see the file's documentation).
pub struct FixtureEncoder {
    images: HashMap<u64, Vec<f32>>,
    texts: HashMap<String, Vec<f32>>,
    gate: Arc<Gate>,
}

impl QueryEncoder for FixtureEncoder {
    fn dim(&self) -> usize {
        32
    }
    fn description(&self) -> String {
        ENCODER.into()
    }
    fn encode_images(&self, images: &[&SourceImage]) -> smallcap::Result<Vec<f32>> {
        self.gate.pass();
        let mut out = Vec::new();
        for q in images {
            let e = self.images.get(&image_key(q)).ok_or_else(|| {
                smallcap::Error::Input("the test encoder knows only the fixture images".into())
            })?;
            out.extend_from_slice(e);
        }
        Ok(out)
    }
    fn encode_texts(&self, texts: &[&str]) -> smallcap::Result<Vec<f32>> {
        self.gate.pass();
        let mut out = Vec::new();
        for t in texts {
            let e = self.texts.get(*t).ok_or_else(|| {
                smallcap::Error::Input(
                    "the test encoder knows only the datastore's captions".into(),
                )
            })?;
            out.extend_from_slice(e);
        }
        Ok(out)
    }
}

#[derive(serde::Deserialize, Clone)]
pub struct ImageCase {
    pub image: String,
    pub top_ids: Vec<u64>,
    pub top_scores: Vec<f32>,
    pub top_captions: Vec<String>,
}

pub fn image_cases() -> Vec<ImageCase> {
    let text = std::fs::read_to_string(fixture("retrieval/cases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(v["image_cases"].clone()).unwrap()
}

pub fn datastore_captions() -> Vec<String> {
    serde_json::from_str(
        &std::fs::read_to_string(fixture("retrieval/datastore_captions.json")).unwrap(),
    )
    .unwrap()
}

pub fn caption_embeddings() -> Vec<f32> {
    let t = candle_core::safetensors::load(
        fixture("retrieval/expected_tensors.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    t["caption_embeddings"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The encoder the test stores record.
const ENCODER: &str = "openai-clip:tiny-random";

/// The fixture store ("coco": the reference's FAISS index) and a second store ("rows100": rows
/// 100..200 of it) for the per-request datastore switch.
pub struct Stores {
    _dir: tempfile::TempDir,
    encoder: Arc<FixtureEncoder>,
    pub gate: Arc<Gate>,
}

impl Stores {
    /// The folder holding the stores `coco` and `rows100`.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// The two stores, opened with the test encoder.
    pub fn retriever(&self) -> Retriever {
        let open = |name: &str| {
            (
                name.to_string(),
                CaptionStore::Datastore(Datastore::open(self.dir().join(name)).unwrap()),
            )
        };
        Retriever::new(self.encoder.clone(), vec![open("coco"), open("rows100")]).unwrap()
    }
}

pub fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        encoder: ENCODER.into(),
        dtype: Dtype::F32,
    };
    Datastore::from_faiss(
        fixture("retrieval/datastore_index"),
        fixture("retrieval/datastore_captions.json"),
        dir.path().join("coco"),
        &opts,
    )
    .unwrap();
    let emb = caption_embeddings();
    let caps = datastore_captions();
    let sub_rows = &emb[100 * 32..200 * 32];
    let sub_caps: Vec<_> = caps[100..200]
        .iter()
        .map(|c| smallcap_datastore::CaptionRecord::new(c.clone()))
        .collect();
    Datastore::create(
        dir.path().join("rows100"),
        &opts,
        &VectorSet::from_f32(sub_rows, 32).unwrap(),
        &sub_caps,
    )
    .unwrap();
    let tensors = candle_core::safetensors::load(
        fixture("retrieval/expected_tensors.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut images = HashMap::new();
    for c in image_cases() {
        let img = smallcap_image::load(&fixture(&c.image)).unwrap();
        let name = std::path::Path::new(&c.image)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let e: Vec<f32> = tensors[&format!("{name}.query_embedding")]
            .to_vec1()
            .unwrap();
        images.insert(image_key(&img), e);
    }
    let texts = caps
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), emb[i * 32..(i + 1) * 32].to_vec()))
        .collect();
    let gate = Arc::new(Gate::default());
    let encoder = Arc::new(FixtureEncoder {
        images,
        texts,
        gate: gate.clone(),
    });
    Stores {
        _dir: dir,
        encoder,
        gate,
    }
}

pub fn captioner() -> Captioner {
    Captioner::from_specs(
        fixture("model").to_str().unwrap(),
        Some(fixture("tokenizer").to_str().unwrap()),
        &Device::Cpu,
    )
    .unwrap()
}

pub fn start(config: ServerConfig, retriever: Option<Retriever>) -> Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = Server::start(listener, config, move || {
        Ok(Pipeline::new(captioner(), retriever))
    })
    .unwrap();
    server.wait_ready().unwrap();
    server
}

pub fn url(server: &Server, path: &str) -> String {
    format!("http://{}{path}", server.addr())
}

pub fn image_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap()
}

pub fn file_name(rel: &str) -> String {
    std::path::Path::new(rel)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string()
}
