//! [`Retriever`]: named caption stores sharing one [`QueryEncoder`], each checked to be in the
//! encoder's embedding space (dimension, and the encoder its manifest records). Used alike by
//! `smallcap retrieve`, `caption --datastore`, `serve`, training data preparation and the library
//! pipeline.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use smallcap_datastore::{CaptionRecord, Manifest};
use smallcap_image::SourceImage;

use super::{CaptionStore, NamedSpec, Queries, RetrievalEncoder, SelfExclusion};
use crate::error::{Error, Result};
use crate::precision::EncoderPrecision;

/// One query's neighbours, best first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Retrieved {
    /// Row ids in the store (FAISS's ids).
    pub ids: Vec<i64>,
    /// Inner products of the L2-normalised query and caption embeddings (cosine similarities).
    pub scores: Vec<f32>,
    /// The captions of those rows.
    pub captions: Vec<String>,
}

/// A store as requests see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DatastoreInfo {
    /// The name requests choose it by.
    pub name: String,
    /// Number of captions.
    pub size: usize,
}

/// Embeds queries in the stores' space (CLIP RN50x64 in the paper). Rows are L2-normalised, as
/// `faiss.normalize_L2` leaves them.
pub trait QueryEncoder: Send + Sync {
    /// The embedding dimension.
    fn dim(&self) -> usize;
    /// The model description recorded in datastore manifests (e.g. `openai-clip:RN50x64`).
    fn description(&self) -> String;
    /// Row-major `[images.len(), dim]` image embeddings.
    fn encode_images(&self, images: &[&SourceImage]) -> Result<Vec<f32>>;
    /// Row-major `[texts.len(), dim]` text embeddings.
    fn encode_texts(&self, texts: &[&str]) -> Result<Vec<f32>>;
    /// The CLIP encoder behind this one, when it is one (for `--share-vision-tower`).
    fn as_clip(&self) -> Option<&RetrievalEncoder> {
        None
    }
}

/// The CLIP retrieval encoder embeds queries as `smallcap retrieve` always has: its own
/// preprocessing (`clip._transform` on the image in its Pillow mode), then the model.
impl QueryEncoder for RetrievalEncoder {
    fn dim(&self) -> usize {
        RetrievalEncoder::dim(self)
    }
    fn description(&self) -> String {
        RetrievalEncoder::description(self).to_string()
    }
    fn encode_images(&self, images: &[&SourceImage]) -> Result<Vec<f32>> {
        let pixels: Vec<Vec<f32>> = images.iter().map(|i| self.preprocess(i)).collect();
        self.encode_pixels(&pixels)
    }
    fn encode_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        RetrievalEncoder::encode_texts(self, texts)
    }
    fn as_clip(&self) -> Option<&RetrievalEncoder> {
        Some(self)
    }
}

/// Refuses a datastore whose manifest records another encoder than `encoder`: another model,
/// or (where both are known) other weights of the same model, told apart by SHA256 (RN50 and
/// RN50x64 are both 1024-dimensional; two checkpoints of one size have one description).
pub(crate) fn check_recorded_encoder(
    encoder: &dyn QueryEncoder,
    manifest: &Manifest,
    store_name: &str,
) -> Result<()> {
    let description = encoder.description();
    let recorded = RetrievalEncoder::description_of_identity(&manifest.encoder);
    if recorded.contains(':') && recorded != description {
        return Err(Error::Input(format!(
            "the datastore {store_name} was built with {recorded}, not {description}"
        )));
    }
    let recorded_sha = RetrievalEncoder::sha256_of_identity(&manifest.encoder);
    let sha = match (recorded_sha, encoder.as_clip()) {
        (Some(_), Some(clip)) => Some(clip.weights_sha256()?),
        _ => None,
    };
    if let (Some(want), Some(got)) = (recorded_sha, sha) {
        if want != got {
            return Err(Error::Input(format!(
                "the datastore {store_name} was built with {recorded} weights of SHA256 {want}; this encoder's weights have SHA256 {got}"
            )));
        }
    }
    Ok(())
}

/// Named stores and the encoder they share. The first store is the default.
pub struct Retriever {
    encoder: Arc<dyn QueryEncoder>,
    stores: Vec<(String, CaptionStore)>,
}

impl Retriever {
    /// Checks that there is a store, that names are unique and not empty, and that every store
    /// has the encoder's dimension and records no other encoder model.
    pub fn new(
        encoder: Arc<dyn QueryEncoder>,
        stores: Vec<(String, CaptionStore)>,
    ) -> Result<Self> {
        if stores.is_empty() {
            return Err(Error::Input("no datastore given".into()));
        }
        let description = encoder.description();
        for (i, (name, store)) in stores.iter().enumerate() {
            if name.is_empty() {
                return Err(Error::Input(format!(
                    "datastore {}: empty name",
                    store.location()
                )));
            }
            if stores[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::Input(format!(
                    "two datastores are named \"{name}\"; name them with NAME=SPEC"
                )));
            }
            if store.dim() != encoder.dim() {
                return Err(Error::Input(format!(
                    "the encoder {description} embeds into {} dimensions but the datastore \"{name}\" ({}) has dimension {}",
                    encoder.dim(),
                    store.location(),
                    store.dim()
                )));
            }
            if let Some(manifest) = store.manifest() {
                check_recorded_encoder(
                    encoder.as_ref(),
                    manifest,
                    &format!("\"{name}\" ({})", store.location()),
                )?;
            }
        }
        Ok(Self { encoder, stores })
    }

    /// One unnamed store (named `datastore`) with a CLIP encoder.
    pub fn single(encoder: RetrievalEncoder, store: CaptionStore) -> Result<Self> {
        Self::new(Arc::new(encoder), vec![("datastore".into(), store)])
    }

    /// Opens the stores and loads `encoder` (an OpenAI CLIP name or file, a `CLIPModel` folder or
    /// hub id), or, when `None`, the encoder the first store's manifest records. Stores of
    /// different encoders are refused.
    pub fn open(specs: &[NamedSpec], encoder: Option<&str>, device: &Device) -> Result<Self> {
        Self::open_with_default(
            specs,
            encoder,
            None,
            device,
            EncoderPrecision::default(),
            Queries::All,
        )
    }

    /// [`Retriever::open`], with `default` (a checkpoint's `retrieval_encoder`, `RN50x64` in
    /// SmallCap7M) as the encoder when none is given and the first store records none (as a
    /// FAISS file does not), and the encoder's `precision`, loaded for `queries` (the other kind
    /// of query is then an error).
    pub fn open_with_default(
        specs: &[NamedSpec],
        encoder: Option<&str>,
        default: Option<&str>,
        device: &Device,
        precision: EncoderPrecision,
        queries: Queries,
    ) -> Result<Self> {
        let mut stores = Vec::with_capacity(specs.len());
        for s in specs {
            stores.push((s.name.clone(), s.spec.open()?));
        }
        let Some((first_name, first)) = stores.first() else {
            return Err(Error::Input("no datastore given".into()));
        };
        let encoder_spec = match encoder {
            Some(s) => s.to_string(),
            None => {
                let recorded = first
                    .manifest()
                    .map(|m| m.encoder.clone())
                    .unwrap_or_default();
                RetrievalEncoder::spec_of_identity(&recorded)
                    .map(|s| RetrievalEncoder::resolve_recorded_spec(s, first.folder()))
                    .or(default.filter(|_| recorded.is_empty()).map(str::to_string))
                    .ok_or_else(|| {
                        Error::Input(if recorded.is_empty() {
                            format!(
                                "the datastore \"{first_name}\" ({}) records no encoder (a FAISS file records none); give the retrieval encoder",
                                first.location()
                            )
                        } else {
                            format!(
                                "the datastore \"{first_name}\" ({}) records the encoder {recorded:?}, which is not loadable; give the retrieval encoder",
                                first.location()
                            )
                        })
                    })?
            }
        };
        let enc = RetrievalEncoder::load_for(&encoder_spec, device, precision, queries)?;
        Self::new(Arc::new(enc), stores)
    }

    /// The encoder.
    pub fn encoder(&self) -> &dyn QueryEncoder {
        self.encoder.as_ref()
    }

    /// The stores, the default first.
    pub fn datastores(&self) -> Vec<DatastoreInfo> {
        self.stores
            .iter()
            .map(|(name, s)| DatastoreInfo {
                name: name.clone(),
                size: s.len(),
            })
            .collect()
    }

    /// The store named `name`, or the default one for `None`.
    pub fn store(&self, name: Option<&str>) -> Result<&CaptionStore> {
        match name {
            None => Ok(&self.stores[0].1),
            Some(name) => self
                .stores
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s)
                .ok_or_else(|| {
                    let known: Vec<&str> = self.stores.iter().map(|(n, _)| n.as_str()).collect();
                    Error::Input(format!(
                        "unknown datastore \"{name}\"; loaded: {}",
                        known.join(", ")
                    ))
                }),
        }
    }

    /// Neighbours of L2-normalised query rows in the store `datastore` (the default for `None`).
    /// With `exclude` (and one image id per query), captions of the query image itself are
    /// skipped and the next ones taken.
    pub fn search(
        &self,
        datastore: Option<&str>,
        queries: &[f32],
        k: usize,
        exclude: Option<(&SelfExclusion, &[i64])>,
    ) -> Result<Vec<Retrieved>> {
        let store = self.store(datastore)?;
        let dim = store.dim();
        let nq = queries.len() / dim;
        let Some((ex, ids)) = exclude else {
            let hits = store.search(queries, k)?;
            return hits
                .into_iter()
                .map(|h| collect(store, h, k, None))
                .collect();
        };
        if ids.len() != nq {
            return Err(Error::Input(format!(
                "{nq} queries but {} image ids",
                ids.len()
            )));
        }
        (0..nq)
            .map(|q| {
                let row = &queries[q * dim..(q + 1) * dim];
                let mut want = (k + 16).min(store.len());
                loop {
                    let hits = store.search(row, want)?.remove(0);
                    let r = collect(store, hits, k, Some((ex, ids[q])))?;
                    if r.ids.len() == k {
                        return Ok(r);
                    }
                    if want == store.len() {
                        return Err(Error::Input(format!(
                            "image {}: fewer than {k} captions of other images in the store",
                            ids[q]
                        )));
                    }
                    want = (want * 2).min(store.len());
                }
            })
            .collect()
    }

    /// Top-k captions of each decoded image, encoded together.
    pub fn retrieve_images(
        &self,
        datastore: Option<&str>,
        images: &[&SourceImage],
        k: usize,
    ) -> Result<Vec<Retrieved>> {
        self.store(datastore)?;
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let q = self.encoder.encode_images(images)?;
        self.search(datastore, &q, k, None)
    }

    /// Top-k captions of each image from the captioning encoder's `last_hidden_state`
    /// `[B, tokens, width]`, for a Hugging Face CLIP retrieval encoder with the same vision tower
    /// (see [`RetrievalEncoder::encode_from_vision_states`]).
    pub fn retrieve_from_vision_states(
        &self,
        datastore: Option<&str>,
        states: &Tensor,
        k: usize,
    ) -> Result<Vec<Retrieved>> {
        let clip = self.encoder.as_clip().ok_or_else(|| {
            Error::Input(format!(
                "the retrieval encoder {} is not a CLIP model",
                self.encoder.description()
            ))
        })?;
        let q = clip.encode_from_vision_states(states)?;
        self.search(datastore, &q, k, None)
    }

    /// Top-k captions of each text, encoded together.
    pub fn retrieve_texts(
        &self,
        datastore: Option<&str>,
        texts: &[&str],
        k: usize,
    ) -> Result<Vec<Retrieved>> {
        self.store(datastore)?;
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let q = self.encoder.encode_texts(texts)?;
        self.search(datastore, &q, k, None)
    }
}

/// The first `k` hits that are not excluded, with their captions. FAISS pads with id -1 when
/// a store has fewer than k rows; such ids are dropped.
fn collect(
    store: &CaptionStore,
    hits: Vec<(i64, f32)>,
    k: usize,
    exclude: Option<(&SelfExclusion, i64)>,
) -> Result<Retrieved> {
    let mut r = Retrieved {
        ids: Vec::with_capacity(k),
        scores: Vec::with_capacity(k),
        captions: Vec::with_capacity(k),
    };
    for (id, score) in hits.into_iter().filter(|(id, _)| *id >= 0) {
        if r.ids.len() == k {
            break;
        }
        let rec: CaptionRecord = store.caption(id)?;
        if let Some((ex, q)) = exclude {
            if ex.is_own(&rec, q) {
                continue;
            }
        }
        r.ids.push(id);
        r.scores.push(score);
        r.captions.push(rec.text);
    }
    Ok(r)
}
