//! Live retrieval: a [`Retriever`] owns a [`RetrievalEncoder`] and a caption store (our datastore
//! folder, or a FAISS index file with its captions file) and returns, per query image or text,
//! the top-k caption ids, scores and texts — what the reference's demo does with
//! `index.search(normalize_L2(encode_image(x)), k)`. With [`SelfExclusion`] it skips captions of
//! the query image itself, as the reference's `filter_nns` does when it prepares training data.
//!
//! `Retriever` is `Send + Sync`: a server can share one between requests.

pub mod build;
pub mod encoder;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use smallcap_datastore::captions::read_captions;
use smallcap_datastore::pgvector::PgStore;
use smallcap_datastore::{CaptionRecord, Datastore, FaissIndex};

pub use encoder::RetrievalEncoder;

use crate::error::{Error, Result};

/// The captions and vectors searched.
pub enum CaptionStore {
    /// Our folder format (see [`smallcap_datastore::store`]).
    Datastore(Datastore),
    /// A datastore pushed to PostgreSQL + pgvector (`smallcap datastore push`), searched exactly
    /// on the server (see [`smallcap_datastore::pgvector`]).
    Postgres(PgStore),
    /// A FAISS index file (flat or IVF-flat) and its captions (index = FAISS id).
    Faiss {
        index: FaissIndex,
        index_path: PathBuf,
        captions: Vec<CaptionRecord>,
    },
}

impl CaptionStore {
    /// Opens a FAISS index and its captions file, checking that their counts agree.
    pub fn open_faiss(index: &Path, captions: &Path) -> Result<Self> {
        let idx = FaissIndex::open(index)?;
        let caps = read_captions(captions, None)?;
        if caps.len() != idx.len() {
            return Err(Error::Input(format!(
                "{} has {} vectors but {} has {} captions",
                index.display(),
                idx.len(),
                captions.display(),
                caps.len()
            )));
        }
        Ok(Self::Faiss {
            index: idx,
            index_path: index.to_path_buf(),
            captions: caps,
        })
    }

    /// Whether `spec` names a PostgreSQL datastore rather than a folder.
    pub fn is_url(spec: &str) -> bool {
        spec.starts_with("postgres://") || spec.starts_with("postgresql://")
    }

    /// The recorded manifest of a datastore folder or server table.
    pub fn manifest(&self) -> Option<&smallcap_datastore::Manifest> {
        match self {
            Self::Datastore(d) => Some(d.manifest()),
            Self::Postgres(p) => Some(p.manifest()),
            Self::Faiss { .. } => None,
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            Self::Datastore(d) => d.dim(),
            Self::Postgres(p) => p.dim(),
            Self::Faiss { index, .. } => index.dim(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Datastore(d) => d.len(),
            Self::Postgres(p) => p.len(),
            Self::Faiss { index, .. } => index.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn name(&self) -> String {
        match self {
            Self::Datastore(d) => d.dir().display().to_string(),
            Self::Postgres(p) => format!("postgres table {}", p.table()),
            Self::Faiss { index_path, .. } => index_path.display().to_string(),
        }
    }

    /// Top-k of row-major queries (exact for flat stores; FAISS's `nprobe` for IVF files).
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<(i64, f32)>>> {
        if k > self.len() {
            return Err(Error::Input(format!(
                "k = {k} is larger than the store {} ({} captions)",
                self.name(),
                self.len()
            )));
        }
        Ok(match self {
            Self::Datastore(d) => d.search(queries, d.dim(), k)?,
            Self::Postgres(p) => p.search(queries, p.dim(), k)?,
            Self::Faiss { index, .. } => index.search(queries, index.dim(), k, None)?,
        })
    }

    /// Caption `id`.
    pub fn caption(&self, id: i64) -> Result<CaptionRecord> {
        let i = usize::try_from(id)
            .map_err(|_| Error::Input(format!("{}: no caption id {id}", self.name())))?;
        match self {
            Self::Datastore(d) => Ok(d.caption(i)?),
            Self::Postgres(p) => p
                .captions(&[id])?
                .pop()
                .ok_or_else(|| Error::Input(format!("{}: no caption id {id}", self.name()))),
            Self::Faiss { captions, .. } => captions
                .get(i)
                .cloned()
                .ok_or_else(|| Error::Input(format!("{}: no caption id {id}", self.name()))),
        }
    }
}

/// One query's neighbours, best first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Retrieved {
    pub ids: Vec<i64>,
    pub scores: Vec<f32>,
    pub captions: Vec<String>,
}

/// Which captions belong to which image, for skipping a query image's own captions: the image
/// ids the store records per caption, else those of an annotations file matched by caption text.
#[derive(Debug, Default, Clone)]
pub struct SelfExclusion {
    by_text: HashMap<String, Vec<i64>>,
}

impl SelfExclusion {
    /// Reads image ids per caption text from a COCO annotations file or a Karpathy
    /// `dataset_coco.json` (any caption file with image ids).
    pub fn from_annotations(path: &Path) -> Result<Self> {
        let mut by_text: HashMap<String, Vec<i64>> = HashMap::new();
        let records = read_captions(path, None)?;
        if records.iter().all(|r| r.image_id.is_none()) {
            return Err(Error::Input(format!(
                "{}: no image ids in this caption file (give COCO annotations or a Karpathy dataset_coco.json)",
                path.display()
            )));
        }
        for r in records {
            if let Some(id) = r.image_id {
                by_text.entry(r.text).or_default().push(id);
            }
        }
        Ok(Self { by_text })
    }

    fn is_own(&self, rec: &CaptionRecord, query: i64) -> bool {
        match rec.image_id {
            Some(id) => id == query,
            None => self
                .by_text
                .get(&rec.text)
                .is_some_and(|ids| ids.contains(&query)),
        }
    }
}

/// An encoder and a store, checked to share one embedding space.
pub struct Retriever {
    encoder: RetrievalEncoder,
    store: CaptionStore,
}

/// Refuses a datastore whose manifest records another encoder model than `encoder`.
pub(crate) fn check_recorded_encoder(
    encoder: &RetrievalEncoder,
    manifest: &smallcap_datastore::Manifest,
    store_name: &str,
) -> Result<()> {
    let recorded = RetrievalEncoder::description_of_identity(&manifest.encoder);
    if recorded.contains(':') && recorded != encoder.description() {
        return Err(Error::Input(format!(
            "the datastore {store_name} was built with {recorded}, not {}",
            encoder.description()
        )));
    }
    Ok(())
}

impl Retriever {
    /// Pairs an encoder with a store; their dimensions must agree, and a datastore that records
    /// a different encoder model is refused.
    pub fn new(encoder: RetrievalEncoder, store: CaptionStore) -> Result<Self> {
        if encoder.dim() != store.dim() {
            return Err(Error::Input(format!(
                "the encoder {} embeds into {} dimensions but the store {} has dimension {}",
                encoder.description(),
                encoder.dim(),
                store.name(),
                store.dim()
            )));
        }
        if let Some(manifest) = store.manifest() {
            check_recorded_encoder(&encoder, manifest, &store.name())?;
        }
        Ok(Self { encoder, store })
    }

    /// Opens a datastore — a folder, or a `postgres://…?table=NAME` URL of one pushed to
    /// pgvector — with `encoder` (a path or hub id), or the encoder its manifest records when
    /// `None`.
    pub fn open(spec: &str, encoder: Option<&str>, device: &Device) -> Result<Self> {
        let store = if CaptionStore::is_url(spec) {
            CaptionStore::Postgres(PgStore::connect(spec)?)
        } else {
            CaptionStore::Datastore(Datastore::open(Path::new(spec))?)
        };
        let encoder_spec = match encoder {
            Some(s) => s.to_string(),
            None => {
                let recorded = store
                    .manifest()
                    .map(|m| m.encoder.clone())
                    .unwrap_or_default();
                RetrievalEncoder::spec_of_identity(&recorded)
                    .ok_or_else(|| {
                        Error::Input(format!(
                            "the datastore {} records the encoder {recorded:?}, which is not loadable; give the retrieval encoder",
                            store.name(),
                        ))
                    })?
                    .to_string()
            }
        };
        let enc = RetrievalEncoder::load(&encoder_spec, device)?;
        Self::new(enc, store)
    }

    /// Opens a datastore folder (see [`Retriever::open`]).
    pub fn open_datastore(dir: &Path, encoder: Option<&str>, device: &Device) -> Result<Self> {
        Self::open(&dir.to_string_lossy(), encoder, device)
    }

    pub fn encoder(&self) -> &RetrievalEncoder {
        &self.encoder
    }

    pub fn store(&self) -> &CaptionStore {
        &self.store
    }

    /// Gives the store back.
    pub fn into_store(self) -> CaptionStore {
        self.store
    }

    /// Neighbours of L2-normalised query rows. With `exclude` (and one image id per query),
    /// captions of the query image itself are skipped and the next ones taken.
    pub fn search(
        &self,
        queries: &[f32],
        k: usize,
        exclude: Option<(&SelfExclusion, &[i64])>,
    ) -> Result<Vec<Retrieved>> {
        let dim = self.store.dim();
        let nq = queries.len() / dim;
        let Some((ex, ids)) = exclude else {
            let hits = self.store.search(queries, k)?;
            return hits.into_iter().map(|h| self.collect(h, k, None)).collect();
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
                let mut want = (k + 16).min(self.store.len());
                loop {
                    let hits = self.store.search(row, want)?.remove(0);
                    let r = self.collect(hits, k, Some((ex, ids[q])))?;
                    if r.ids.len() == k {
                        return Ok(r);
                    }
                    if want == self.store.len() {
                        return Err(Error::Input(format!(
                            "image {}: fewer than {k} captions of other images in the store",
                            ids[q]
                        )));
                    }
                    want = (want * 2).min(self.store.len());
                }
            })
            .collect()
    }

    fn collect(
        &self,
        hits: Vec<(i64, f32)>,
        k: usize,
        exclude: Option<(&SelfExclusion, i64)>,
    ) -> Result<Retrieved> {
        let mut r = Retrieved {
            ids: Vec::new(),
            scores: Vec::new(),
            captions: Vec::new(),
        };
        for (id, score) in hits {
            if r.ids.len() == k {
                break;
            }
            let rec = self.store.caption(id)?;
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

    /// Top-k captions of each decoded image.
    pub fn retrieve_images(
        &self,
        images: &[smallcap_image::SourceImage],
        k: usize,
    ) -> Result<Vec<Retrieved>> {
        let q = self.encoder.encode_images(images)?;
        self.search(&q, k, None)
    }

    /// Top-k captions of each image from the captioning encoder's `last_hidden_state`
    /// `[B, tokens, width]`, for a Hugging Face CLIP retrieval encoder with the same vision tower
    /// (see [`RetrievalEncoder::encode_from_vision_states`]).
    pub fn retrieve_from_vision_states(&self, states: &Tensor, k: usize) -> Result<Vec<Retrieved>> {
        let q = self.encoder.encode_from_vision_states(states)?;
        self.search(&q, k, None)
    }

    /// Top-k captions of each text.
    pub fn retrieve_texts(&self, texts: &[&str], k: usize) -> Result<Vec<Retrieved>> {
        let q = self.encoder.encode_texts(texts)?;
        self.search(&q, k, None)
    }
}
