//! Our datastore folder format, memory-mapped:
//!
//! ```text
//! <dir>/manifest.json    format, version, encoder identity, dim, count, dtype, metric "ip",
//!                        normalized: true, SHA-256 of the data files, created_by
//! <dir>/embeddings.bin   count × dim little-endian f32 or f16, row-major, from byte 0 (so the
//!                        mapping is page-aligned and is viewed in place as &[f32])
//! <dir>/captions.jsonl   one JSON value per line: a string, or {"text": …, "image_id": …}
//! <dir>/captions.idx     count + 1 little-endian u64 byte offsets of the lines in captions.jsonl
//! <dir>/ivf.index        optional: an approximate (IVF-flat) index of the embeddings, a FAISS
//!                        `IndexIVFFlat` file (Datastore::build_ann)
//! <dir>/ivf.json         the parameters it was built with and the SHA-256 of the embeddings it
//!                        indexes (an index of other embeddings is refused)
//! ```
//!
//! [`Datastore::add`] writes a new folder without the approximate index (it would not cover the
//! added rows); build it again after adding.
//!
//! [`Datastore::open`] is O(1) in the store size: it reads the manifest, maps the files and checks
//! their sizes against the manifest (the offsets table makes the caption count checkable without
//! reading the captions). Checksums are verified only by [`Datastore::verify`]. Every write builds
//! the whole folder in `<dir>.partial` and renames it into place, so a reader never sees a partial
//! store; a stale `.partial` (an interrupted build) is ignored by `open` and replaced by the next
//! build.

use crate::captions::{read_captions, CaptionRecord};
use crate::error::{Error, Result};
use crate::faiss::{write_flat_ip, FlatIndex, IvfFlatIndex};
use crate::fsutil::{fresh_dir, mmap_file, with_suffix, write_all, write_atomic};
use crate::ivf::IvfParams;
use crate::search::{top_k, Dtype, Hit, VectorSet};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Value of `manifest.format`.
pub const FORMAT_NAME: &str = "smallcap-datastore";
/// Value of `manifest.format_version` written (and the only one read).
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const EMBEDDINGS: &str = "embeddings.bin";
const CAPTIONS: &str = "captions.jsonl";
const OFFSETS: &str = "captions.idx";
/// The optional approximate index (a FAISS `IndexIVFFlat` file).
pub const ANN_INDEX: &str = "ivf.index";
const ANN_INFO: &str = "ivf.json";
/// Tolerance on |‖v‖² − 1| for rows declared L2-normalised.
const NORM_TOLERANCE: f32 = 1e-3;

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Always [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Identity of the encoder that produced the embeddings, e.g. `"openai-clip:RN50x64"`.
    pub encoder: String,
    /// Vector dimension.
    pub dim: usize,
    /// Number of vectors (= captions).
    pub count: usize,
    /// Element type of `embeddings.bin`.
    pub dtype: Dtype,
    /// Always `"ip"` (inner product).
    pub metric: String,
    /// Always true: rows are L2-normalised.
    pub normalized: bool,
    /// SHA-256 (hex) of `embeddings.bin`.
    pub embeddings_sha256: String,
    /// SHA-256 (hex) of `captions.jsonl`.
    pub captions_sha256: String,
    /// Program that wrote the store.
    pub created_by: String,
    /// What the last [`Datastore::add`] appended (absent in a store that was never added to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_add: Option<AddRecord>,
}

/// The record of an add in the manifest it wrote: a rerun of the same add (after a run that was
/// killed once the new store was in place) recognises that it is done instead of appending the
/// captions twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRecord {
    /// Captions in the store before the add.
    pub count_before: usize,
    /// Captions the add appended.
    pub added: usize,
    /// [`captions_digest`] of the appended captions.
    pub captions_sha256: String,
}

/// SHA-256 (hex) of caption records: each text and image id, NUL-terminated, in order.
pub fn captions_digest(captions: &[CaptionRecord]) -> String {
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
    hex(&h.finalize())
}

/// `ivf.json`: how the approximate index was built, and for which embeddings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnInfo {
    /// Always `"faiss-ivf-flat"`.
    pub kind: String,
    /// Build parameters; `nprobe` is the default of [`Datastore::search_approx`] (the build's,
    /// or the one [`Datastore::tune_ann`] chose, which the FAISS file does not record).
    pub params: IvfParams,
    /// `embeddings_sha256` of the manifest of the store it indexes.
    pub embeddings_sha256: String,
}

/// Options of a new store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Encoder identity recorded in the manifest.
    pub encoder: String,
    /// Element type of the embeddings file.
    pub dtype: Dtype,
}

/// L2-normalises each row in place as `faiss.normalize_L2` does (x · 1/‖x‖; zero rows untouched).
pub fn normalize_l2(data: &mut [f32], dim: usize) {
    for row in data.chunks_exact_mut(dim.max(1)) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            let inv = 1.0 / norm;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds a store in `<dir>.partial`, then renames it into place.
struct StoreWriter {
    dir: PathBuf,
    dim: usize,
    dtype: Dtype,
    count: usize,
    emb: BufWriter<File>,
    emb_hash: Sha256,
    caps: BufWriter<File>,
    caps_hash: Sha256,
    offs: BufWriter<File>,
    caps_len: u64,
    ncaps: usize,
    scratch: Vec<u8>,
}

fn create_file(path: &Path) -> Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(
        1 << 20,
        File::create(path).map_err(|e| Error::io(path, e))?,
    ))
}

impl StoreWriter {
    fn begin(partial: &Path, dim: usize, dtype: Dtype) -> Result<Self> {
        if dim == 0 {
            return Err(Error::Invalid("vector dimension must be > 0".into()));
        }
        fresh_dir(partial)?;
        let mut offs = create_file(&partial.join(OFFSETS))?;
        write_all(&mut offs, &partial.join(OFFSETS), &0u64.to_le_bytes())?;
        Ok(StoreWriter {
            dir: partial.into(),
            dim,
            dtype,
            count: 0,
            emb: create_file(&partial.join(EMBEDDINGS))?,
            emb_hash: Sha256::new(),
            caps: create_file(&partial.join(CAPTIONS))?,
            caps_hash: Sha256::new(),
            offs,
            caps_len: 0,
            ncaps: 0,
            scratch: Vec::new(),
        })
    }

    fn write_emb(&mut self, bytes: &[u8]) -> Result<()> {
        self.emb_hash.update(bytes);
        write_all(&mut self.emb, &self.dir.join(EMBEDDINGS), bytes)
    }

    /// Appends f32 rows (must be L2-normalised), converting to the store's dtype.
    fn push_rows(&mut self, rows: &[f32]) -> Result<()> {
        if !rows.len().is_multiple_of(self.dim) {
            return Err(Error::Invalid(format!(
                "{} values are not whole rows of dimension {}",
                rows.len(),
                self.dim
            )));
        }
        for (i, row) in rows.chunks_exact(self.dim).enumerate() {
            let n2: f32 = row.iter().map(|x| x * x).sum();
            if n2.is_nan() || (n2 - 1.0).abs() > NORM_TOLERANCE {
                return Err(Error::Invalid(format!(
                    "vector {} is not L2-normalised (norm {}); normalise it first (normalize_l2)",
                    self.count + i,
                    n2.sqrt()
                )));
            }
        }
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        match self.dtype {
            Dtype::F32 => bytes.extend(rows.iter().flat_map(|x| x.to_le_bytes())),
            Dtype::F16 => bytes.extend(
                rows.iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes()),
            ),
        }
        let r = self.write_emb(&bytes);
        self.scratch = bytes;
        r?;
        self.count += rows.len() / self.dim;
        Ok(())
    }

    /// Appends rows already in the store's dtype (from another store of the same dtype).
    fn push_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_emb(bytes)?;
        self.count += bytes.len() / (self.dim * self.dtype.size());
        Ok(())
    }

    fn push_caption(&mut self, rec: &CaptionRecord) -> Result<()> {
        let mut line = if rec.image_id.is_some() {
            serde_json::to_string(rec)
        } else {
            serde_json::to_string(&rec.text)
        }
        .map_err(|e| Error::Invalid(format!("caption {}: {e}", self.ncaps)))?;
        line.push('\n');
        self.push_caption_line(line.as_bytes())
    }

    /// Appends one already-encoded caption line (ending in '\n').
    fn push_caption_line(&mut self, line: &[u8]) -> Result<()> {
        self.caps_hash.update(line);
        write_all(&mut self.caps, &self.dir.join(CAPTIONS), line)?;
        self.caps_len += line.len() as u64;
        self.ncaps += 1;
        write_all(
            &mut self.offs,
            &self.dir.join(OFFSETS),
            &self.caps_len.to_le_bytes(),
        )
    }

    /// Flushes everything, writes the manifest and returns the manifest (the folder stays
    /// `<dir>.partial`; the caller renames it).
    fn finish(self, encoder: &str, last_add: Option<AddRecord>) -> Result<Manifest> {
        if self.count != self.ncaps {
            return Err(Error::CountMismatch {
                what: "datastore being written".into(),
                vectors: self.count,
                captions: self.ncaps,
            });
        }
        for (w, name) in [
            (self.emb, EMBEDDINGS),
            (self.caps, CAPTIONS),
            (self.offs, OFFSETS),
        ] {
            let p = self.dir.join(name);
            let f = w.into_inner().map_err(|e| Error::io(&p, e.into_error()))?;
            f.sync_all().map_err(|e| Error::io(&p, e))?;
        }
        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            encoder: encoder.into(),
            dim: self.dim,
            count: self.count,
            dtype: self.dtype,
            metric: "ip".into(),
            normalized: true,
            embeddings_sha256: hex(&self.emb_hash.finalize()),
            captions_sha256: hex(&self.caps_hash.finalize()),
            created_by: concat!("smallcap-datastore ", env!("CARGO_PKG_VERSION")).into(),
            last_add,
        };
        let mp = self.dir.join(MANIFEST);
        write_atomic(&mp, |w| {
            serde_json::to_writer_pretty(&mut *w, &manifest).map_err(|e| Error::Json {
                path: mp.clone(),
                source: e,
            })?;
            write_all(w, &mp, b"\n")
        })?;
        Ok(manifest)
    }
}

/// Runs `build` on a fresh `<out>.partial` folder and renames it to `out` (which must not exist).
fn build_new(out: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<Datastore> {
    if out.exists() {
        return Err(Error::format(
            out,
            "already exists; remove it or choose another folder",
        ));
    }
    let partial = with_suffix(out, ".partial");
    let r = build(&partial).and_then(|_| fs::rename(&partial, out).map_err(|e| Error::io(out, e)));
    if let Err(e) = r {
        let _ = fs::remove_dir_all(&partial);
        return Err(e);
    }
    Datastore::open(out)
}

/// An open datastore (memory-mapped).
#[derive(Debug)]
pub struct Datastore {
    dir: PathBuf,
    manifest: Manifest,
    emb: Option<Mmap>,
    caps: Option<Mmap>,
    offs: Option<Mmap>,
    /// The approximate index and its build record, opened on first use.
    ann: OnceLock<(IvfFlatIndex, AnnInfo)>,
}

fn map_bytes(m: &Option<Mmap>) -> &[u8] {
    m.as_deref().unwrap_or(&[])
}

impl Datastore {
    /// Opens a store folder: reads the manifest and checks the sizes of the data files against it
    /// (O(1) in the store size; see [`Datastore::verify`] for the checksums).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            let partial = with_suffix(dir, ".partial");
            let old = with_suffix(dir, ".old");
            let hint = if old.is_dir() {
                format!(
                    " ({} holds the store from before an interrupted add)",
                    old.display()
                )
            } else if partial.exists() {
                format!(
                    " (only {} exists: an interrupted build; rebuild)",
                    partial.display()
                )
            } else {
                String::new()
            };
            return Err(Error::format(
                dir,
                format!("no datastore folder here{hint}"),
            ));
        }
        let mp = dir.join(MANIFEST);
        let text = crate::captions::read_utf8(&mp)?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: mp.clone(),
            source: e,
        })?;
        let bad = |msg: String| Err(Error::format(&mp, msg));
        if m.format != FORMAT_NAME {
            return bad(format!(
                "format is \"{}\", expected \"{FORMAT_NAME}\"",
                m.format
            ));
        }
        if m.format_version != FORMAT_VERSION {
            return bad(format!(
                "format_version {} is not supported (this reader knows {FORMAT_VERSION})",
                m.format_version
            ));
        }
        if m.metric != "ip" {
            return bad(format!(
                "metric is \"{}\", only \"ip\" is supported",
                m.metric
            ));
        }
        if !m.normalized {
            return bad(
                "normalized is false; inner-product retrieval needs L2-normalised rows".into(),
            );
        }
        if m.dim == 0 {
            return bad("dim is 0".into());
        }
        let ep = dir.join(EMBEDDINGS);
        let emb = mmap_file(&ep)?;
        let want = (m.count as u64)
            .checked_mul(m.dim as u64)
            .and_then(|x| x.checked_mul(m.dtype.size() as u64));
        let have = map_bytes(&emb).len() as u64;
        if want != Some(have) {
            return Err(Error::format(
                &ep,
                format!(
                    "size {have} bytes disagrees with the manifest: count {} × dim {} × {} bytes ({:?})",
                    m.count,
                    m.dim,
                    m.dtype.size(),
                    m.dtype
                ),
            ));
        }
        let cp = dir.join(CAPTIONS);
        let caps = mmap_file(&cp)?;
        let op = dir.join(OFFSETS);
        let offs = mmap_file(&op)?;
        let ob = map_bytes(&offs);
        if !ob.len().is_multiple_of(8) || ob.len() / 8 != m.count + 1 {
            return Err(Error::CountMismatch {
                what: format!(
                    "{}: the caption offsets table has {} bytes, the manifest count is {}",
                    op.display(),
                    ob.len(),
                    m.count
                ),
                vectors: m.count,
                captions: (ob.len() / 8).saturating_sub(1),
            });
        }
        let first = u64::from_le_bytes(ob[..8].try_into().expect("8 bytes"));
        let last = u64::from_le_bytes(ob[ob.len() - 8..].try_into().expect("8 bytes"));
        let clen = map_bytes(&caps).len() as u64;
        if first != 0 || last != clen {
            return Err(Error::format(
                &op,
                format!(
                    "offsets run from {first} to {last} but {} has {clen} bytes",
                    cp.display()
                ),
            ));
        }
        Ok(Datastore {
            dir: dir.into(),
            manifest: m,
            emb,
            caps,
            offs,
            ann: OnceLock::new(),
        })
    }

    /// Creates a new store at `out` (which must not exist) from row-major L2-normalised vectors
    /// and their captions.
    pub fn create(
        out: impl AsRef<Path>,
        opts: &StoreOptions,
        vectors: &VectorSet<'_>,
        captions: &[CaptionRecord],
    ) -> Result<Self> {
        if vectors.len() != captions.len() {
            return Err(Error::CountMismatch {
                what: "Datastore::create arguments".into(),
                vectors: vectors.len(),
                captions: captions.len(),
            });
        }
        build_new(out.as_ref(), |partial| {
            let mut w = StoreWriter::begin(partial, vectors.dim(), opts.dtype)?;
            vectors.for_each_chunk(|_, rows| w.push_rows(rows))?;
            for c in captions {
                w.push_caption(c)?;
            }
            w.finish(&opts.encoder, None).map(|_| ())
        })
    }

    /// Converts a FAISS `IndexFlatIP` file and its captions file (a JSON list, an object keyed by
    /// `"0"`, `"1"`, …, or any format of [`crate::captions`]) into a new store at `out`. The rows
    /// are streamed (never all in memory).
    pub fn from_faiss(
        index: impl AsRef<Path>,
        captions: impl AsRef<Path>,
        out: impl AsRef<Path>,
        opts: &StoreOptions,
    ) -> Result<Self> {
        let flat = FlatIndex::open(index.as_ref())?;
        let caps = read_captions(captions.as_ref(), None)?;
        if caps.len() != flat.len() {
            return Err(Error::CountMismatch {
                what: format!(
                    "index {} vs captions {}",
                    index.as_ref().display(),
                    captions.as_ref().display()
                ),
                vectors: flat.len(),
                captions: caps.len(),
            });
        }
        Self::create(out, opts, &flat.vectors(), &caps)
    }

    /// Writes this store as a FAISS `IndexFlatIP` file (f32) and a JSON list of its captions, as
    /// the reference's `retrieve_caps.py` writes them (each file atomically).
    pub fn to_faiss(&self, index: impl AsRef<Path>, captions: impl AsRef<Path>) -> Result<()> {
        let caps: Vec<String> = self.captions()?.into_iter().map(|c| c.text).collect();
        write_flat_ip(index.as_ref(), &self.vectors())?;
        let cp = captions.as_ref();
        write_atomic(cp, |w| {
            serde_json::to_writer(&mut *w, &caps).map_err(|e| Error::Json {
                path: cp.into(),
                source: e,
            })
        })
    }

    /// Appends L2-normalised vectors and their captions, atomically: the new store is built in
    /// `<dir>.partial` and exchanged with the old folder in one step (Linux's `renameat2`), then
    /// the old one is removed; where the OS cannot exchange, the old folder is renamed to
    /// `<dir>.old` and the new one into place. Returns the reopened store.
    pub fn add(self, vectors: &VectorSet<'_>, captions: &[CaptionRecord]) -> Result<Self> {
        if vectors.dim() != self.dim() {
            return Err(Error::DimensionMismatch {
                what: "vectors to add".into(),
                expected: self.dim(),
                found: vectors.dim(),
            });
        }
        if vectors.len() != captions.len() {
            return Err(Error::CountMismatch {
                what: "Datastore::add arguments".into(),
                vectors: vectors.len(),
                captions: captions.len(),
            });
        }
        let dir = self.dir.clone();
        let partial = with_suffix(&dir, ".partial");
        let old = with_suffix(&dir, ".old");
        let built = (|| {
            let mut w = StoreWriter::begin(&partial, self.dim(), self.dtype())?;
            let emb = map_bytes(&self.emb);
            for chunk in emb.chunks(8 << 20) {
                w.push_raw(chunk)?;
            }
            let caps = map_bytes(&self.caps);
            for i in 0..self.len() {
                let (a, b) = self.offset_pair(i);
                w.push_caption_line(&caps[a..b])?;
            }
            vectors.for_each_chunk(|_, rows| w.push_rows(rows))?;
            for c in captions {
                w.push_caption(c)?;
            }
            w.finish(
                &self.manifest.encoder,
                Some(AddRecord {
                    count_before: self.len(),
                    added: captions.len(),
                    captions_sha256: captions_digest(captions),
                }),
            )
        })();
        if let Err(e) = built {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        drop(self);
        // One exchange where the OS has it: a kill at any moment leaves the old store or the new
        // one at `dir` (the other, at `.partial`, is stale and replaced by the next write).
        if smallcap_util::fs::exchange(&partial, &dir).map_err(|e| Error::io(&dir, e))? {
            fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
            return Datastore::open(&dir);
        }
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        fs::rename(&dir, &old).map_err(|e| Error::io(&dir, e))?;
        fs::rename(&partial, &dir).map_err(|e| Error::io(&dir, e))?;
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        Datastore::open(&dir)
    }

    /// Recomputes the checksums of the data files and checks every caption line (O(store size)).
    pub fn verify(&self) -> Result<()> {
        for (name, want) in [
            (EMBEDDINGS, &self.manifest.embeddings_sha256),
            (CAPTIONS, &self.manifest.captions_sha256),
        ] {
            let p = self.dir.join(name);
            let mut f = File::open(&p).map_err(|e| Error::io(&p, e))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(|e| Error::io(&p, e))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            let got = hex(&h.finalize());
            if &got != want {
                return Err(Error::format(
                    &p,
                    format!("SHA-256 {got} disagrees with the manifest's {want}"),
                ));
            }
        }
        let ob = map_bytes(&self.offs);
        let mut prev = 0u64;
        for i in 1..=self.len() {
            let o = u64::from_le_bytes(ob[8 * i..8 * i + 8].try_into().expect("8 bytes"));
            if o <= prev {
                return Err(Error::format(
                    self.dir.join(OFFSETS),
                    format!("offset {i} ({o}) does not increase"),
                ));
            }
            prev = o;
        }
        for i in 0..self.len() {
            self.caption(i)?;
        }
        Ok(())
    }

    fn offset_pair(&self, i: usize) -> (usize, usize) {
        let ob = map_bytes(&self.offs);
        let a = u64::from_le_bytes(ob[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(ob[8 * i + 8..8 * i + 16].try_into().expect("8 bytes"));
        (a as usize, b as usize)
    }

    /// Caption `i` (parsed from its line on demand).
    pub fn caption(&self, i: usize) -> Result<CaptionRecord> {
        let cp = || self.dir.join(CAPTIONS);
        if i >= self.len() {
            return Err(Error::Invalid(format!(
                "caption id {i} out of range (store has {})",
                self.len()
            )));
        }
        let (a, b) = self.offset_pair(i);
        let caps = map_bytes(&self.caps);
        if a >= b || b > caps.len() || caps[b - 1] != b'\n' {
            return Err(Error::format(
                cp(),
                format!("caption {i}: offsets {a}..{b} do not delimit a line"),
            ));
        }
        let line = std::str::from_utf8(&caps[a..b - 1]).map_err(|e| Error::NotUtf8 {
            path: cp(),
            offset: a + e.valid_up_to(),
        })?;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Line {
            Text(String),
            Record(CaptionRecord),
        }
        match serde_json::from_str::<Line>(line) {
            Ok(Line::Text(text)) => Ok(CaptionRecord::new(text)),
            Ok(Line::Record(r)) => Ok(r),
            Err(e) => Err(Error::format(
                cp(),
                format!(
                    "caption {i} (line {}): not a JSON string or caption object: {e}",
                    i + 1
                ),
            )),
        }
    }

    /// All captions, in id order.
    pub fn captions(&self) -> Result<Vec<CaptionRecord>> {
        (0..self.len()).map(|i| self.caption(i)).collect()
    }

    /// Exact inner-product top-k of row-major queries (see [`crate::search::top_k`]).
    pub fn search(&self, queries: &[f32], query_dim: usize, k: usize) -> Result<Vec<Vec<Hit>>> {
        top_k(&self.vectors(), queries, query_dim, k)
    }

    /// Trains an approximate IVF-flat index of the embeddings ([`crate::ivf::build`]) and writes
    /// it into the folder as a FAISS `IndexIVFFlat` file ([`ANN_INDEX`]) with its `ivf.json`,
    /// replacing any previous one (each file atomically). `IvfParams::for_len(store.len())` gives
    /// the defaults.
    pub fn build_ann(&mut self, params: &IvfParams) -> Result<&IvfFlatIndex> {
        let ip = self.dir.join(ANN_INDEX);
        self.ann = OnceLock::new();
        let index = crate::ivf::build(&ip, &self.vectors(), params)?;
        let info = AnnInfo {
            kind: "faiss-ivf-flat".into(),
            params: params.clone(),
            embeddings_sha256: self.manifest.embeddings_sha256.clone(),
        };
        self.write_ann_info(&info)?;
        Ok(&self.ann.get_or_init(|| (index, info)).0)
    }

    fn write_ann_info(&self, info: &AnnInfo) -> Result<()> {
        let jp = self.dir.join(ANN_INFO);
        write_atomic(&jp, |w| {
            serde_json::to_writer_pretty(&mut *w, info).map_err(|e| Error::Json {
                path: jp.clone(),
                source: e,
            })?;
            write_all(w, &jp, b"\n")
        })
    }

    /// True when the folder holds an approximate index.
    pub fn has_ann(&self) -> bool {
        self.dir.join(ANN_INDEX).is_file()
    }

    /// The approximate index and its build record (opened and checked against the store on
    /// first use).
    ///
    /// Errors: the store has none (build it with [`Datastore::build_ann`]), it indexes other
    /// embeddings, or its files are invalid.
    pub fn ann(&self) -> Result<(&IvfFlatIndex, &AnnInfo)> {
        if let Some((a, i)) = self.ann.get() {
            return Ok((a, i));
        }
        let ip = self.dir.join(ANN_INDEX);
        if !ip.is_file() {
            return Err(Error::format(
                &ip,
                "this datastore has no approximate index; build one first (build_ann)",
            ));
        }
        let jp = self.dir.join(ANN_INFO);
        let text = crate::captions::read_utf8(&jp)?;
        let info: AnnInfo = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: jp.clone(),
            source: e,
        })?;
        if info.embeddings_sha256 != self.manifest.embeddings_sha256 {
            return Err(Error::format(
                &jp,
                "the approximate index was built for other embeddings than this store's; \
                 rebuild it (build_ann)",
            ));
        }
        if info.params.nprobe == 0 {
            return Err(Error::format(&jp, "params.nprobe is 0"));
        }
        let index = IvfFlatIndex::open(&ip)?;
        if index.dim() != self.dim() || index.len() != self.len() {
            return Err(Error::format(
                &ip,
                format!(
                    "indexes {} vectors of dimension {}, the store has {} of dimension {}; \
                     rebuild it (build_ann)",
                    index.len(),
                    index.dim(),
                    self.len(),
                    self.dim()
                ),
            ));
        }
        let (a, i) = self.ann.get_or_init(|| (index, info));
        Ok((a, i))
    }

    /// Approximate inner-product top-k through the approximate index, probing `nprobe` lists
    /// (when `None`, the `nprobe` of `ivf.json`: the build's, or the one [`Datastore::tune_ann`]
    /// chose); see [`crate::ivf::search`]. The ids are the store's, as with
    /// [`Datastore::search`].
    pub fn search_approx(
        &self,
        queries: &[f32],
        query_dim: usize,
        k: usize,
        nprobe: Option<usize>,
    ) -> Result<Vec<Vec<Hit>>> {
        let (ann, info) = self.ann()?;
        crate::ivf::search(
            ann,
            queries,
            query_dim,
            k,
            nprobe.unwrap_or(info.params.nprobe),
        )
    }

    /// Recall@k of the approximate index against exact search for these queries at `nprobe`
    /// ([`crate::search::recall_at_k`]).
    pub fn ann_recall(
        &self,
        queries: &[f32],
        query_dim: usize,
        k: usize,
        nprobe: Option<usize>,
    ) -> Result<f64> {
        let exact = self.search(queries, query_dim, k)?;
        let approx = self.search_approx(queries, query_dim, k, nprobe)?;
        crate::search::recall_at_k(&exact, &approx, k)
    }

    /// Finds the smallest `nprobe` whose recall@k on these queries (against exact search) is at
    /// least `target`, records it in `ivf.json` as the default of [`Datastore::search_approx`],
    /// and returns it with its recall. Recall never decreases with `nprobe` (more lists probed
    /// can only add candidates), so doubling and then bisecting finds the smallest one.
    ///
    /// Errors: no approximate index; `target` not in (0, 1]; even probing every list stays below
    /// `target` (possible only through ties or rounding against exact search).
    pub fn tune_ann(
        &mut self,
        queries: &[f32],
        query_dim: usize,
        k: usize,
        target: f64,
    ) -> Result<(usize, f64)> {
        if !(target > 0.0 && target <= 1.0) {
            return Err(Error::Invalid(format!(
                "target recall {target} is not in (0, 1]"
            )));
        }
        let exact = self.search(queries, query_dim, k)?;
        let (ann, info) = self.ann()?;
        let recall = |p: usize| -> Result<f64> {
            let approx = crate::ivf::search(ann, queries, query_dim, k, p)?;
            crate::search::recall_at_k(&exact, &approx, k)
        };
        let nlist = ann.nlist();
        let mut hi = 1;
        let mut r_hi = recall(hi)?;
        while r_hi < target && hi < nlist {
            hi = (hi * 2).min(nlist);
            r_hi = recall(hi)?;
        }
        if r_hi < target {
            return Err(Error::Invalid(format!(
                "recall@{k} {r_hi} with every one of the {nlist} lists probed stays below {target}"
            )));
        }
        let mut lo = hi / 2; // recall(lo) < target, or lo == 0
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            let r = recall(mid)?;
            if r >= target {
                (hi, r_hi) = (mid, r);
            } else {
                lo = mid;
            }
        }
        let mut info = info.clone();
        info.params.nprobe = hi;
        self.write_ann_info(&info)?;
        self.ann = OnceLock::new();
        Ok((hi, r_hi))
    }

    /// The embeddings, viewed in place.
    pub fn vectors(&self) -> VectorSet<'_> {
        VectorSet::from_le_bytes(map_bytes(&self.emb), self.manifest.dim, self.manifest.dtype)
            .expect("size validated at open")
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.manifest.dim
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.manifest.count
    }
    /// True when the store is empty.
    pub fn is_empty(&self) -> bool {
        self.manifest.count == 0
    }
    /// Element type of the embeddings.
    pub fn dtype(&self) -> Dtype {
        self.manifest.dtype
    }
}
