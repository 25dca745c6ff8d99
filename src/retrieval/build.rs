//! Building a datastore from captions with a [`RetrievalEncoder`]: the reference's caption
//! filter (at most 25 GPT-2 tokens, applied per caption), optional deduplication, batched
//! encoding, and a build that survives interruption.
//!
//! Finished batches are appended to `<out>.building/embeddings.f32` and counted in
//! `<out>.building/progress.json` (written atomically after the batch is synced), which also
//! records what is being built (encoder identity, caption checksum, batch size); running the
//! same build again continues after the last recorded batch. The store itself is written by
//! [`Datastore::create`] (`<out>.partial`, then one rename), so `out` appears complete or not
//! at all; the work folder is removed afterwards. Adding captions to a store works the same way
//! through `<dir>.adding` ([`add_to_datastore`]).

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use smallcap_datastore::store::StoreOptions;
use smallcap_datastore::{captions_digest, CaptionRecord, Datastore, Dtype, VectorSet};

use super::RetrievalEncoder;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The reference's caption-length limit in GPT-2 tokens (`retrieve_caps.py`).
pub const MAX_CAPTION_TOKENS: usize = 25;

/// Keeps the captions of at most `max_tokens` GPT-2 tokens (each caption tokenized on its own,
/// as the published COCO store implies; see SMALLCAP.md §2.1).
pub fn filter_by_gpt2_length(
    captions: Vec<CaptionRecord>,
    tokenizer: &Tokenizer,
    max_tokens: usize,
) -> Result<Vec<CaptionRecord>> {
    let mut out = Vec::with_capacity(captions.len());
    for c in captions {
        if tokenizer.encode_plain(&c.text)?.len() <= max_tokens {
            out.push(c);
        }
    }
    Ok(out)
}

/// Keeps the first caption of each distinct text.
pub fn dedup(captions: Vec<CaptionRecord>) -> Vec<CaptionRecord> {
    let mut seen = HashSet::new();
    captions
        .into_iter()
        .filter(|c| seen.insert(c.text.clone()))
        .collect()
}

/// Captions encoded per batch unless told otherwise. A batch is what an interrupted build
/// resumes after; on the CPU the text tower sorts it and packs 256 captions at a time, so a
/// larger batch finds more captions that begin alike and share their first tokens' work.
pub const DEFAULT_BATCH_SIZE: usize = 4096;

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Captions encoded per batch.
    pub batch_size: usize,
    /// Element type of the stored embeddings.
    pub dtype: Dtype,
    /// Stop (with [`Error::Interrupted`]) after this many new batches; for testing resumption.
    pub stop_after_batches: Option<usize>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            dtype: Dtype::F32,
            stop_after_batches: None,
        }
    }
}

/// `progress.json` of a work folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Progress {
    encoder: String,
    dim: usize,
    count: usize,
    captions_sha256: String,
    batch_size: usize,
    batches_done: usize,
}

/// The work folder of a build of `out`.
pub(crate) fn work_dir(out: &Path) -> PathBuf {
    with_suffix(out, ".building")
}

/// The work folder of an add to the store at `dir`.
pub(crate) fn add_work_dir(dir: &Path) -> PathBuf {
    with_suffix(dir, ".adding")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn check_options(captions: &[CaptionRecord], opts: &BuildOptions) -> Result<()> {
    if captions.is_empty() {
        return Err(Error::Input("no captions to encode".into()));
    }
    if opts.batch_size == 0 {
        return Err(Error::Input("the batch size must be at least 1".into()));
    }
    Ok(())
}

/// Encodes `captions` into `work/embeddings.f32` (little-endian f32 rows), batch by batch,
/// continuing after the last batch recorded in `work/progress.json` when that records the same
/// work (`want` with any `batches_done`); any other work folder is started over.
fn encode_resumably(
    encoder: &RetrievalEncoder,
    captions: &[CaptionRecord],
    work: &Path,
    want: &Progress,
    opts: &BuildOptions,
    progress: &mut impl FnMut(usize, usize),
) -> Result<PathBuf> {
    let progress_path = work.join("progress.json");
    let emb_path = work.join("embeddings.f32");
    let nbatches = captions.len().div_ceil(opts.batch_size);
    let row_bytes = (want.dim * 4) as u64;
    let rows_of = |batches: usize| (batches * opts.batch_size).min(captions.len()) as u64;
    let mut done = 0usize;
    if let Ok(text) = fs::read_to_string(&progress_path) {
        let on_disk = fs::metadata(&emb_path).map_or(0, |m| m.len());
        match serde_json::from_str::<Progress>(&text) {
            Ok(p)
                if Progress {
                    batches_done: 0,
                    ..p.clone()
                } == *want
                    && p.batches_done <= nbatches
                    && on_disk >= rows_of(p.batches_done) * row_bytes =>
            {
                done = p.batches_done
            }
            _ => tracing::warn!(
                "{} holds other work (different captions, encoder, batch size or store); starting over",
                work.display()
            ),
        }
    }
    if done == 0 {
        if work.exists() {
            fs::remove_dir_all(work).map_err(|e| Error::io(work, e))?;
        }
        fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    }
    let mut emb = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&emb_path)
        .map_err(|e| Error::io(&emb_path, e))?;
    // Drop whatever a killed run appended after its last recorded batch.
    let keep = rows_of(done) * row_bytes;
    emb.set_len(keep).map_err(|e| Error::io(&emb_path, e))?;
    progress(done * opts.batch_size, captions.len());
    for (new_batches, b) in (done..nbatches).enumerate() {
        if opts.stop_after_batches == Some(new_batches) {
            return Err(Error::Interrupted(format!(
                "stopped after {b} of {nbatches} batches; run the same command again to resume"
            )));
        }
        let chunk = &captions[b * opts.batch_size..((b + 1) * opts.batch_size).min(captions.len())];
        let texts: Vec<&str> = chunk.iter().map(|c| c.text.as_str()).collect();
        let rows = encoder.encode_texts(&texts)?;
        let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
        emb.write_all(&bytes)
            .and_then(|_| emb.sync_data())
            .map_err(|e| Error::io(&emb_path, e))?;
        let p = Progress {
            batches_done: b + 1,
            ..want.clone()
        };
        let json = serde_json::to_vec_pretty(&p).expect("progress serialises");
        smallcap_util::fs::write_atomic(&progress_path, &json)
            .map_err(|e| Error::io(&progress_path, e))?;
        progress(
            ((b + 1) * opts.batch_size).min(captions.len()),
            captions.len(),
        );
    }
    if opts.stop_after_batches == Some(nbatches - done) {
        return Err(Error::Interrupted(format!(
            "stopped after encoding all {nbatches} batches, before writing the store; run the same command again to finish"
        )));
    }
    Ok(emb_path)
}

/// Runs `f` on the f32 rows of a finished `embeddings.f32`.
fn with_rows<T>(
    emb_path: &Path,
    dim: usize,
    f: impl FnOnce(&VectorSet<'_>) -> Result<T>,
) -> Result<T> {
    let file = fs::File::open(emb_path).map_err(|e| Error::io(emb_path, e))?;
    // SAFETY: the map is read-only and lives only while `f` runs. `embeddings.f32` is finished
    // (the encoding loop that appends to it has ended) and lives in the private work folder, so
    // nothing truncates or rewrites it while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(emb_path, e))?;
    let set = VectorSet::from_le_bytes(&map, dim, Dtype::F32)?;
    f(&set)
}

fn new_progress(
    encoder: &RetrievalEncoder,
    store_dir: &Path,
    captions: &[CaptionRecord],
    opts: &BuildOptions,
) -> Result<Progress> {
    Ok(Progress {
        encoder: encoder.identity_for_store(store_dir)?,
        dim: encoder.dim(),
        count: captions.len(),
        captions_sha256: captions_digest(captions),
        batch_size: opts.batch_size,
        batches_done: 0,
    })
}

/// Encodes `captions` with `encoder` and writes a new datastore at `out` (which must not
/// exist), resuming an interrupted build of the same captions with the same encoder and batch
/// size. `progress(done, total)` is called after each batch.
pub fn build_datastore(
    encoder: &RetrievalEncoder,
    captions: &[CaptionRecord],
    out: &Path,
    opts: &BuildOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Datastore> {
    check_options(captions, opts)?;
    let work = work_dir(out);
    let want = new_progress(encoder, out, captions, opts)?;
    if out.exists() {
        // A rerun of a build that finished (perhaps killed before it could clean up) is done.
        if let Some(store) = same_build(out, &want, captions)? {
            remove_work(&work)?;
            progress(captions.len(), captions.len());
            return Ok(store);
        }
        return Err(Error::Input(format!(
            "{} already exists (and is not this build of these captions); remove it or choose another folder",
            out.display()
        )));
    }
    let emb_path = encode_resumably(encoder, captions, &work, &want, opts, &mut progress)?;
    let store_opts = StoreOptions {
        encoder: want.encoder.clone(),
        dtype: opts.dtype,
    };
    let ds = with_rows(&emb_path, want.dim, |set| {
        Ok(Datastore::create(out, &store_opts, set, captions)?)
    })?;
    remove_work(&work)?;
    Ok(ds)
}

/// The store at `out` when it holds exactly what building `captions` as `want` gives: the
/// encoder, the count and the captions, in order.
fn same_build(
    out: &Path,
    want: &Progress,
    captions: &[CaptionRecord],
) -> Result<Option<Datastore>> {
    let Ok(store) = Datastore::open(out) else {
        return Ok(None);
    };
    let m = store.manifest();
    if m.encoder != want.encoder || m.count != captions.len() || m.last_add.is_some() {
        return Ok(None);
    }
    for (i, c) in captions.iter().enumerate() {
        if store.caption(i)? != *c {
            return Ok(None);
        }
    }
    Ok(Some(store))
}

/// Removes a work folder, if there is one.
fn remove_work(work: &Path) -> Result<()> {
    match fs::remove_dir_all(work) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(work, e)),
        _ => Ok(()),
    }
}

/// The retrieval encoder a datastore folder records (its manifest's identity, a relative file
/// path resolved against the folder), as a spec [`RetrievalEncoder::load`] takes: what adding to
/// the store encodes with when no other encoder is named.
pub fn recorded_encoder_spec(store: &Datastore) -> Result<String> {
    let recorded = &store.manifest().encoder;
    RetrievalEncoder::spec_of_identity(recorded)
        .map(|s| RetrievalEncoder::resolve_recorded_spec(s, Some(store.dir())))
        .ok_or_else(|| {
            Error::Input(format!(
                "{} records the encoder {recorded:?}, which is not loadable; name the encoder (--encoder)",
                store.dir().display()
            ))
        })
}

/// Encodes `captions` and appends them to `store`, resumably: the encodings go to
/// `<dir>.adding` as in [`build_datastore`], then [`Datastore::add`] swaps in the grown store
/// atomically, its manifest recording the add ([`smallcap_datastore::AddRecord`]). Running the
/// same add again after an interruption continues the encoding; once the grown store is in
/// place, the same add again (these captions were the store's last add) is a no-op instead of
/// adding them twice.
pub fn add_to_datastore(
    encoder: &RetrievalEncoder,
    store: Datastore,
    captions: &[CaptionRecord],
    opts: &BuildOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Datastore> {
    check_options(captions, opts)?;
    if encoder.dim() != store.dim() {
        return Err(Error::Input(format!(
            "the encoder gives {}-dimensional rows; the datastore holds {}",
            encoder.dim(),
            store.dim()
        )));
    }
    let dir = store.dir().to_path_buf();
    super::retriever::check_recorded_encoder(
        encoder,
        store.manifest(),
        &dir.display().to_string(),
    )?;
    let work = add_work_dir(&dir);
    let want = new_progress(encoder, &dir, captions, opts)?;
    // The manifest records the last add: a rerun of it (after a run killed once the grown store
    // was in place) is done, not repeated.
    if store.manifest().last_add.as_ref().is_some_and(|last| {
        last.captions_sha256 == want.captions_sha256
            && last.added == captions.len()
            && last.count_before + last.added == store.len()
    }) {
        tracing::warn!(
            "{}: these {} captions are the store's last add; nothing to do",
            dir.display(),
            captions.len()
        );
        remove_work(&work)?;
        progress(captions.len(), captions.len());
        return Ok(store);
    }
    let emb_path = encode_resumably(encoder, captions, &work, &want, opts, &mut progress)?;
    let grown = with_rows(&emb_path, want.dim, |set| Ok(store.add(set, captions)?))?;
    remove_work(&work)?;
    Ok(grown)
}
