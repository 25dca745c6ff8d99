//! Building a datastore from captions with a [`RetrievalEncoder`]: the reference's caption
//! filter (at most 25 GPT-2 tokens, applied per caption), optional deduplication, batched
//! encoding, and a build that survives interruption.
//!
//! Finished batches are appended to `<out>.building/embeddings.f32` and counted in
//! `<out>.building/progress.json` (written atomically after the batch is synced), which also
//! records what is being built (encoder identity, caption checksum, batch size); running the
//! same build again continues after the last recorded batch. The store itself is written by
//! [`Datastore::create`] (`<out>.partial`, then one rename), so `out` appears complete or not
//! at all; the work folder is removed afterwards.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use smallcap_datastore::store::StoreOptions;
use smallcap_datastore::{CaptionRecord, Datastore, Dtype, VectorSet};

use super::RetrievalEncoder;
use crate::error::{Error, Result};
use crate::tokenizer::Gpt2Tokenizer;

/// The reference's caption-length limit in GPT-2 tokens (`retrieve_caps.py`).
pub const MAX_CAPTION_TOKENS: usize = 25;

/// Keeps the captions of at most `max_tokens` GPT-2 tokens (each caption tokenized on its own,
/// as the published COCO store implies; see SMALLCAP.md §2.1).
pub fn filter_by_gpt2_length(
    captions: Vec<CaptionRecord>,
    tokenizer: &Gpt2Tokenizer,
    max_tokens: usize,
) -> Result<Vec<CaptionRecord>> {
    let mut out = Vec::with_capacity(captions.len());
    for c in captions {
        if tokenizer.encode(&c.text)?.len() <= max_tokens {
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
            batch_size: 256,
            dtype: Dtype::F32,
            stop_after_batches: None,
        }
    }
}

/// `<out>.building/progress.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Progress {
    encoder: String,
    dim: usize,
    count: usize,
    captions_sha256: String,
    batch_size: usize,
    batches_done: usize,
}

fn captions_digest(captions: &[CaptionRecord]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for c in captions {
        h.update(c.text.as_bytes());
        h.update([0u8]);
        h.update(
            c.image_id
                .map_or(String::new(), |i| i.to_string())
                .as_bytes(),
        );
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The work folder of a build of `out`.
pub fn work_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".building");
    PathBuf::from(s)
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
    if captions.is_empty() {
        return Err(Error::Input("no captions to build a datastore from".into()));
    }
    if opts.batch_size == 0 {
        return Err(Error::Input("the batch size must be at least 1".into()));
    }
    if out.exists() {
        return Err(Error::Input(format!(
            "{} already exists; remove it or choose another folder",
            out.display()
        )));
    }
    let dim = encoder.dim();
    let work = work_dir(out);
    let want = Progress {
        encoder: encoder.identity(),
        dim,
        count: captions.len(),
        captions_sha256: captions_digest(captions),
        batch_size: opts.batch_size,
        batches_done: 0,
    };
    let progress_path = work.join("progress.json");
    let emb_path = work.join("embeddings.f32");
    let nbatches = captions.len().div_ceil(opts.batch_size);
    let row_bytes = (dim * 4) as u64;
    let rows_of = |batches: usize| (batches * opts.batch_size).min(captions.len()) as u64;
    let mut done = 0usize;
    if let Ok(text) = fs::read_to_string(&progress_path) {
        let on_disk = fs::metadata(&emb_path).map_or(0, |m| m.len());
        match serde_json::from_str::<Progress>(&text) {
            Ok(p)
                if Progress {
                    batches_done: 0,
                    ..p.clone()
                } == want
                    && p.batches_done <= nbatches
                    && on_disk >= rows_of(p.batches_done) * row_bytes =>
            {
                done = p.batches_done
            }
            _ => tracing::warn!(
                "{} holds another build (different captions, encoder or batch size); starting over",
                work.display()
            ),
        }
    }
    if done == 0 {
        if work.exists() {
            fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
        }
        fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
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
        write_atomic(&progress_path, &json)?;
        progress(
            ((b + 1) * opts.batch_size).min(captions.len()),
            captions.len(),
        );
    }
    drop(emb);
    let file = fs::File::open(&emb_path).map_err(|e| Error::io(&emb_path, e))?;
    // SAFETY: the file is private to this build and not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&emb_path, e))?;
    let set = VectorSet::from_le_bytes(&map, dim, Dtype::F32)?;
    let store_opts = StoreOptions {
        encoder: want.encoder.clone(),
        dtype: opts.dtype,
    };
    let ds = Datastore::create(out, &store_opts, &set, captions)?;
    drop(map);
    fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    Ok(ds)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)
        .and_then(|_| fs::rename(&tmp, path))
        .map_err(|e| Error::io(path, e))
}

/// Encodes captions in batches (for [`Datastore::add`]): L2-normalised rows.
pub fn encode_captions(
    encoder: &RetrievalEncoder,
    captions: &[CaptionRecord],
    batch_size: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(captions.len() * encoder.dim());
    for chunk in captions.chunks(batch_size.max(1)) {
        let texts: Vec<&str> = chunk.iter().map(|c| c.text.as_str()).collect();
        out.extend(encoder.encode_texts(&texts)?);
        progress(out.len() / encoder.dim(), captions.len());
    }
    Ok(out)
}
