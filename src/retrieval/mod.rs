//! Live retrieval, the paper's training-free domain switch: captions of the nearest datastore
//! entries to a query image (or text) in CLIP space, what the reference's demo does with
//! `index.search(normalize_L2(encode_image(x)), k)`.
//!
//! - [`CaptionStore`]: the one datastore abstraction (our folder, a FAISS flat/IVF file with its
//!   captions, a pgvector table), opened from a [`DatastoreSpec`] string ([`spec`]);
//! - [`QueryEncoder`]: what embeds queries ([`RetrievalEncoder`]: OpenAI or Hugging Face CLIP;
//!   OpenAI's files by name, such as `RN50x64`, through [`openai_models`]);
//! - [`Retriever`]: named stores sharing one encoder, checked to be in its embedding space,
//!   answering [`Retrieved`] (ids, scores, captions) per query; with [`SelfExclusion`] it skips
//!   captions of the query image itself, as the reference's `filter_nns` does;
//! - [`build`]: building and extending our datastore folders.
//!
//! `Retriever` is `Send + Sync`: a server shares one between requests.

pub mod build;
pub mod encoder;
pub mod openai_models;
pub(crate) mod retriever;
pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use smallcap_datastore::captions::{read_caption_list, read_captions, CaptionList};
use smallcap_datastore::pgvector::PgStore;
use smallcap_datastore::{CaptionRecord, Datastore, FaissIndex};

pub use crate::models::clip_openai::Queries;
pub use encoder::RetrievalEncoder;
pub use retriever::{DatastoreInfo, QueryEncoder, Retrieved, Retriever};
pub use spec::{DatastoreSpec, NamedSpec};

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
        /// The index, memory-mapped.
        index: FaissIndex,
        /// Its file.
        index_path: PathBuf,
        /// Its captions, by FAISS id.
        captions: CaptionList,
    },
}

impl CaptionStore {
    /// Opens a FAISS index and its captions file, checking that their counts agree.
    pub fn open_faiss(index: &Path, captions: &Path) -> Result<Self> {
        let idx = FaissIndex::open(index)?;
        let caps = read_caption_list(captions, None)?;
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

    /// Opens the store a spec string names (see [`spec`]).
    pub fn open(spec: &str) -> Result<Self> {
        DatastoreSpec::parse(spec)?.open()
    }

    /// The recorded manifest of a datastore folder or server table.
    pub fn manifest(&self) -> Option<&smallcap_datastore::Manifest> {
        match self {
            Self::Datastore(d) => Some(d.manifest()),
            Self::Postgres(p) => Some(p.manifest()),
            Self::Faiss { .. } => None,
        }
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        match self {
            Self::Datastore(d) => d.dim(),
            Self::Postgres(p) => p.dim(),
            Self::Faiss { index, .. } => index.dim(),
        }
    }

    /// The number of captions (and vectors).
    pub fn len(&self) -> usize {
        match self {
            Self::Datastore(d) => d.len(),
            Self::Postgres(p) => p.len(),
            Self::Faiss { index, .. } => index.len(),
        }
    }

    /// Whether the store holds no caption.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The folder of a datastore in our format (what a recorded relative encoder path is
    /// relative to).
    pub(crate) fn folder(&self) -> Option<&Path> {
        match self {
            Self::Datastore(d) => Some(d.dir()),
            _ => None,
        }
    }

    /// Where the store is, for messages: its folder, index file or table.
    pub fn location(&self) -> String {
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
                self.location(),
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
            .map_err(|_| Error::Input(format!("{}: no caption id {id}", self.location())))?;
        match self {
            Self::Datastore(d) => Ok(d.caption(i)?),
            Self::Postgres(p) => p
                .captions(&[id])?
                .pop()
                .ok_or_else(|| Error::Input(format!("{}: no caption id {id}", self.location()))),
            Self::Faiss { captions, .. } => captions
                .record(i)
                .ok_or_else(|| Error::Input(format!("{}: no caption id {id}", self.location()))),
        }
    }
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

    pub(crate) fn is_own(&self, rec: &CaptionRecord, query: i64) -> bool {
        match rec.image_id {
            Some(id) => id == query,
            None => self
                .by_text
                .get(&rec.text)
                .is_some_and(|ids| ids.contains(&query)),
        }
    }
}
