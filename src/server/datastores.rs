//! Where the server's retrieved captions come from: the [`RetrievalBackend`] trait (named
//! datastores searched with image or text queries: the paper's training-free domain switch is a
//! per-request choice among them), and [`DatastoreSet`], the implementation over
//! `smallcap-datastore` stores that turns queries into vectors with a [`QueryEncoder`] (the CLIP
//! retrieval encoder) and searches them exactly as the reference's FAISS `IndexFlatIP` does.

use std::sync::Arc;

use serde::Serialize;
use smallcap_datastore::Datastore;
use smallcap_image::SourceImage;

use crate::error::{Error, Result};

/// An image query: the uploaded bytes and the image decoded from them in its Pillow mode (what
/// OpenAI's `clip._transform` starts from).
#[derive(Debug, Clone)]
pub struct ImageQuery {
    pub bytes: Arc<[u8]>,
    pub image: Arc<SourceImage>,
}

/// One query's neighbours, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retrieved {
    /// Row ids in the datastore.
    pub ids: Vec<u64>,
    pub captions: Vec<String>,
    /// Inner products of the L2-normalised query and caption embeddings (cosine similarities).
    pub scores: Vec<f32>,
}

/// A datastore the server can search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatastoreInfo {
    pub name: String,
    /// Number of captions.
    pub size: usize,
}

/// Named caption datastores searched by image or text (`Send + Sync`: the batch worker calls it).
/// Each call gets every query of a batch at once, so an implementation can encode them together.
pub trait RetrievalBackend: Send + Sync {
    /// The datastores, the default first.
    fn datastores(&self) -> Vec<DatastoreInfo>;
    /// The `k` nearest captions of each image in the datastore `datastore`.
    fn retrieve_images(
        &self,
        datastore: &str,
        images: &[&ImageQuery],
        k: usize,
    ) -> Result<Vec<Retrieved>>;
    /// The `k` nearest captions of each text in the datastore `datastore`.
    fn retrieve_texts(&self, datastore: &str, texts: &[&str], k: usize) -> Result<Vec<Retrieved>>;
}

/// Embeds queries in the datastores' space: the retrieval encoder (CLIP RN50x64 in the paper).
pub trait QueryEncoder: Send + Sync {
    /// The embedding dimension.
    fn dim(&self) -> usize;
    /// Row-major `[images.len(), dim]` image embeddings, L2-normalised (`faiss.normalize_L2`).
    fn encode_images(&self, images: &[&ImageQuery]) -> Result<Vec<f32>>;
    /// Row-major `[texts.len(), dim]` text embeddings, L2-normalised.
    fn encode_texts(&self, texts: &[&str]) -> Result<Vec<f32>>;
}

/// The CLIP retrieval encoder of [`crate::retrieval`] embeds the server's queries exactly as
/// `smallcap retrieve` does (`clip._transform` on the image in its Pillow mode, then the model).
impl QueryEncoder for crate::retrieval::RetrievalEncoder {
    fn dim(&self) -> usize {
        crate::retrieval::RetrievalEncoder::dim(self)
    }
    fn encode_images(&self, images: &[&ImageQuery]) -> Result<Vec<f32>> {
        let pixels: Vec<Vec<f32>> = images.iter().map(|q| self.preprocess(&q.image)).collect();
        self.encode_pixels(&pixels)
    }
    fn encode_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        crate::retrieval::RetrievalEncoder::encode_texts(self, texts)
    }
}

/// Named [`Datastore`]s sharing one [`QueryEncoder`]. As the reference's `retrieve_caps.py`, a
/// query embedding is L2-normalised (`faiss.normalize_L2`) and the exact inner-product top-k is
/// taken.
pub struct DatastoreSet {
    stores: Vec<(String, Datastore)>,
    encoder: Arc<dyn QueryEncoder>,
}

impl DatastoreSet {
    /// Checks that the names are unique and non-empty, that there is at least one store, and that
    /// every store has the encoder's dimension.
    pub fn new(encoder: Arc<dyn QueryEncoder>, stores: Vec<(String, Datastore)>) -> Result<Self> {
        if stores.is_empty() {
            return Err(Error::Input("no datastore given".into()));
        }
        for (i, (name, store)) in stores.iter().enumerate() {
            if name.is_empty() {
                return Err(Error::Input(format!(
                    "datastore {}: empty name",
                    store.dir().display()
                )));
            }
            if stores[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::Input(format!(
                    "two datastores are named \"{name}\"; name them with NAME=DIR"
                )));
            }
            if store.dim() != encoder.dim() {
                return Err(Error::Input(format!(
                    "datastore \"{name}\" ({}) has dimension {}, but the retrieval encoder embeds in {}",
                    store.dir().display(),
                    store.dim(),
                    encoder.dim()
                )));
            }
        }
        Ok(Self { stores, encoder })
    }

    fn store(&self, name: &str) -> Result<&Datastore> {
        self.stores
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| Error::Input(format!("unknown datastore \"{name}\"")))
    }

    fn search(&self, store: &Datastore, queries: Vec<f32>, k: usize) -> Result<Vec<Retrieved>> {
        let dim = self.encoder.dim();
        let hits = store.search(&queries, dim, k)?;
        hits.into_iter()
            .map(|row| {
                let mut out = Retrieved {
                    ids: Vec::with_capacity(row.len()),
                    captions: Vec::with_capacity(row.len()),
                    scores: Vec::with_capacity(row.len()),
                };
                // FAISS pads with id -1 when the store has fewer than k rows.
                for (id, score) in row.into_iter().filter(|(id, _)| *id >= 0) {
                    out.captions.push(store.caption(id as usize)?.text);
                    out.ids.push(id as u64);
                    out.scores.push(score);
                }
                Ok(out)
            })
            .collect()
    }
}

impl RetrievalBackend for DatastoreSet {
    fn datastores(&self) -> Vec<DatastoreInfo> {
        self.stores
            .iter()
            .map(|(name, s)| DatastoreInfo {
                name: name.clone(),
                size: s.len(),
            })
            .collect()
    }

    fn retrieve_images(
        &self,
        datastore: &str,
        images: &[&ImageQuery],
        k: usize,
    ) -> Result<Vec<Retrieved>> {
        let store = self.store(datastore)?;
        let queries = self.encoder.encode_images(images)?;
        self.search(store, queries, k)
    }

    fn retrieve_texts(&self, datastore: &str, texts: &[&str], k: usize) -> Result<Vec<Retrieved>> {
        let store = self.store(datastore)?;
        let queries = self.encoder.encode_texts(texts)?;
        self.search(store, queries, k)
    }
}
