//! `smallcap datastore build|add|info|export|import`: caption datastores (our folder format,
//! see `smallcap_datastore::store`), built with a retrieval encoder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use candle_core::Device;
use clap::{Args, Subcommand};

use smallcap::hub;
use smallcap::retrieval::build::{
    add_to_datastore, build_datastore, dedup, filter_by_gpt2_length, recorded_encoder_spec,
    BuildOptions, DEFAULT_BATCH_SIZE, MAX_CAPTION_TOKENS,
};
use smallcap::retrieval::{DatastoreSpec, RetrievalEncoder};
use smallcap::Tokenizer;
use smallcap_datastore::captions::read_captions;
use smallcap_datastore::store::StoreOptions;
use smallcap_datastore::{Datastore, Dtype};

#[derive(Args)]
pub struct DatastoreArgs {
    #[command(subcommand)]
    command: DatastoreCommand,
}

#[derive(Subcommand)]
enum DatastoreCommand {
    /// Encode captions into a new datastore (resumes an interrupted build of the same captions).
    Build(BuildArgs),
    /// Append captions to a datastore (atomically), encoded with its recorded encoder.
    Add(AddArgs),
    /// Print a datastore's manifest.
    Info(InfoArgs),
    /// Write a datastore as a FAISS IndexFlatIP file and a JSON list of captions.
    Export(ExportArgs),
    /// Convert a FAISS index file and its captions file into a datastore.
    Import(ImportArgs),
    /// Copy a datastore into PostgreSQL + pgvector, to search it there (`--datastore URL`).
    Push(PushArgs),
}

#[derive(Args)]
struct PushArgs {
    /// The datastore: a folder, or a FAISS file (local, or hf://OWNER/REPO[@REVISION]/FILE; it
    /// records no encoder) with its captions.
    dir: String,
    /// `postgres://user[:password]@host[:port]/db?table=NAME` (see crates/datastore/PGVECTOR.md).
    #[arg(long)]
    to: String,
    /// Replace the table if it exists.
    #[arg(long)]
    replace: bool,
}

#[derive(Args)]
struct FilterArgs {
    /// Keep only captions of at most this many GPT-2 tokens (the reference uses 25).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "25")]
    max_gpt2_tokens: Option<usize>,
    /// GPT-2 tokenizer for --max-gpt2-tokens: a folder with vocab.json + merges.txt or a hub id.
    #[arg(long, default_value = hub::GPT2_TOKENIZER_REPO)]
    tokenizer: String,
    /// Keep only the first caption of each distinct text.
    #[arg(long)]
    dedup: bool,
    /// Captions encoded per batch (an interrupted build resumes after the last whole one).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    batch_size: usize,
}

#[derive(Args)]
struct BuildArgs {
    /// Captions: a text file (one a line), a JSON list, COCO caption annotations, or a
    /// Karpathy dataset_coco.json (train + restval).
    #[arg(long)]
    captions: PathBuf,
    /// Retrieval encoder: an OpenAI CLIP file (e.g. RN50x64.pt) or a Hugging Face CLIPModel
    /// folder or hub id.
    #[arg(long)]
    encoder: String,
    /// The new datastore folder.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    filter: FilterArgs,
    /// Store the embeddings as f16 (half the size; scores change in the 4th decimal).
    #[arg(long)]
    f16: bool,
    /// Where the encoder runs: cpu, or cuda[:N] in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: String,
    /// How the encoder computes: f32 (f32 embeddings), or bf16 (bf16 operands on the CPU's
    /// matrix units, f32 sums: faster; embeddings agree with f32's to about 1e-3).
    #[arg(long, default_value = "f32", value_name = "f32|bf16")]
    encoder_precision: smallcap::EncoderPrecision,
    /// Stop after this many batches (simulates an interrupted build).
    #[arg(long, hide = true)]
    stop_after_batches: Option<usize>,
}

#[derive(Args)]
struct AddArgs {
    /// The datastore folder.
    dir: PathBuf,
    /// Captions to add (any format `build` reads).
    #[arg(long)]
    captions: PathBuf,
    /// Encoder (default: the one the datastore records).
    #[arg(long)]
    encoder: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Where the encoder runs: cpu, or cuda[:N] in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: String,
    /// How the encoder computes: f32 (f32 embeddings), or bf16 (bf16 operands on the CPU's
    /// matrix units, f32 sums: faster; embeddings agree with f32's to about 1e-3).
    #[arg(long, default_value = "f32", value_name = "f32|bf16")]
    encoder_precision: smallcap::EncoderPrecision,
    /// Stop after this many batches (simulates an interrupted add).
    #[arg(long, hide = true)]
    stop_after_batches: Option<usize>,
}

#[derive(Args)]
struct InfoArgs {
    /// A datastore spec: a folder, a FAISS file (local or hf://…) or a postgres:// URL.
    dir: String,
    /// Also verify the checksums of the data files.
    #[arg(long)]
    verify: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// A datastore folder, or a FAISS file (local or hf://…, copied out as it is).
    dir: String,
    /// FAISS index file to write.
    #[arg(long)]
    index: PathBuf,
    /// Captions JSON list to write.
    #[arg(long)]
    captions: PathBuf,
}

#[derive(Args)]
struct ImportArgs {
    /// FAISS index file (IndexFlatIP, L2-normalised rows).
    #[arg(long)]
    index: PathBuf,
    /// Its captions (JSON list, or an object keyed by "0", "1", ...).
    #[arg(long)]
    captions: PathBuf,
    /// The new datastore folder.
    #[arg(long)]
    out: PathBuf,
    /// The encoder the index was built with (recorded, and its dimension checked).
    #[arg(long)]
    encoder: Option<String>,
    /// Store the embeddings as f16.
    #[arg(long)]
    f16: bool,
}

fn dtype(f16: bool) -> Dtype {
    if f16 {
        Dtype::F16
    } else {
        Dtype::F32
    }
}

fn load_captions(
    path: &std::path::Path,
    f: &FilterArgs,
) -> anyhow::Result<Vec<smallcap_datastore::CaptionRecord>> {
    let mut caps = read_captions(path, None)?;
    let read = caps.len();
    if let Some(max) = f.max_gpt2_tokens {
        let tok = Tokenizer::from_dir(&hub::tokenizer_dir(&f.tokenizer)?)?;
        caps = filter_by_gpt2_length(caps, &tok, max)?;
    }
    if f.dedup {
        caps = dedup(caps);
    }
    if caps.len() != read {
        eprintln!("{} of {read} captions kept", caps.len());
    }
    if caps.is_empty() {
        bail!("{}: no captions left to encode", path.display());
    }
    Ok(caps)
}

pub fn run(args: DatastoreArgs) -> anyhow::Result<ExitCode> {
    let device = Device::Cpu;
    match args.command {
        DatastoreCommand::Build(a) => {
            if a.filter.max_gpt2_tokens == Some(0) {
                bail!("--max-gpt2-tokens must be at least 1 (the reference uses {MAX_CAPTION_TOKENS})");
            }
            let caps = load_captions(&a.captions, &a.filter)?;
            let encoder = RetrievalEncoder::load_for_texts(
                &a.encoder,
                &super::device(&a.device)?,
                a.encoder_precision,
            )?;
            let bar = super::progress_bar(caps.len(), "captions");
            let opts = BuildOptions {
                batch_size: a.filter.batch_size,
                dtype: dtype(a.f16),
                stop_after_batches: a.stop_after_batches,
            };
            let ds = build_datastore(&encoder, &caps, &a.out, &opts, |done, _| {
                bar.set_position(done as u64)
            });
            bar.finish_and_clear();
            let ds = ds?;
            eprintln!(
                "{}: {} captions, dimension {}",
                a.out.display(),
                ds.len(),
                ds.dim()
            );
        }
        DatastoreCommand::Add(a) => {
            let ds = Datastore::open(&a.dir)?;
            let spec = match &a.encoder {
                Some(s) => s.clone(),
                None => recorded_encoder_spec(&ds)?,
            };
            let encoder = RetrievalEncoder::load_for_texts(
                &spec,
                &super::device(&a.device)?,
                a.encoder_precision,
            )?;
            let caps = load_captions(&a.captions, &a.filter)?;
            let bar = super::progress_bar(caps.len(), "captions");
            let opts = BuildOptions {
                batch_size: a.filter.batch_size,
                dtype: ds.dtype(),
                stop_after_batches: a.stop_after_batches,
            };
            let store = add_to_datastore(&encoder, ds, &caps, &opts, |done, _| {
                bar.set_position(done as u64)
            });
            bar.finish_and_clear();
            let store = store?;
            eprintln!("{}: {} captions", a.dir.display(), store.len());
        }
        DatastoreCommand::Info(a) => match DatastoreSpec::parse(&a.dir)? {
            DatastoreSpec::Folder(dir) => {
                let ds = Datastore::open(&dir)?;
                if a.verify {
                    ds.verify()?;
                }
                println!("{}", serde_json::to_string_pretty(ds.manifest())?);
            }
            spec => {
                let store = spec.open()?;
                let info = match (store.manifest(), faiss_files(&spec)?) {
                    (Some(m), _) => serde_json::to_value(m)?,
                    (None, Some((index, captions))) => serde_json::json!({
                        "format": "faiss",
                        "index": index,
                        "captions": captions,
                        "dim": store.dim(),
                        "count": store.len(),
                    }),
                    (None, None) => bail!("{}: nothing to describe", a.dir),
                };
                println!("{}", serde_json::to_string_pretty(&info)?);
            }
        },
        DatastoreCommand::Export(a) => match DatastoreSpec::parse(&a.dir)? {
            DatastoreSpec::Folder(dir) => Datastore::open(&dir)?.to_faiss(&a.index, &a.captions)?,
            spec => {
                let (index, captions) = faiss_files(&spec)?.with_context(|| {
                    format!("{}: export reads a datastore folder or a FAISS file", a.dir)
                })?;
                // Checked as a pair (counts agree) before anything is written.
                spec.open()?;
                copy_atomic(&index, &a.index)?;
                copy_atomic(&captions, &a.captions)?;
            }
        },
        DatastoreCommand::Import(a) => {
            let encoder = match &a.encoder {
                // Loaded for its identity and dimension: no image tower, no text tower packing.
                Some(spec) => Some(RetrievalEncoder::load_for_texts(
                    spec,
                    &device,
                    smallcap::EncoderPrecision::F32,
                )?),
                None => None,
            };
            if let Some(enc) = &encoder {
                let idx = smallcap_datastore::FaissIndex::open(&a.index)?;
                if idx.dim() != enc.dim() {
                    bail!(
                        "{} has dimension {} but the encoder {} embeds into {}",
                        a.index.display(),
                        idx.dim(),
                        enc.description(),
                        enc.dim()
                    );
                }
            }
            let opts = StoreOptions {
                encoder: match encoder {
                    Some(e) => e.identity_for_store(&a.out)?,
                    None => "unknown".to_string(),
                },
                dtype: dtype(a.f16),
            };
            let ds = Datastore::from_faiss(&a.index, &a.captions, &a.out, &opts)?;
            eprintln!(
                "{}: {} captions, dimension {}",
                a.out.display(),
                ds.len(),
                ds.dim()
            );
        }
        DatastoreCommand::Push(a) => {
            let spec = DatastoreSpec::parse(&a.dir)?;
            let mut _tmp = None;
            let ds = match (&spec, faiss_files(&spec)?) {
                (DatastoreSpec::Folder(dir), _) => Datastore::open(dir)?,
                (_, Some((index, captions))) => {
                    // A FAISS file goes through a temporary folder of our format (a copy),
                    // removed when the push is done.
                    let dir =
                        std::env::temp_dir().join(format!("smallcap-push-{}", std::process::id()));
                    let _ = std::fs::remove_dir_all(&dir);
                    _tmp = Some(TempDir(dir.clone()));
                    let opts = StoreOptions {
                        encoder: "unknown".into(),
                        dtype: Dtype::F32,
                    };
                    Datastore::from_faiss(&index, &captions, &dir, &opts)?
                }
                _ => bail!("{}: push reads a datastore folder or a FAISS file", a.dir),
            };
            let opts = smallcap_datastore::pgvector::PushOptions {
                replace: a.replace,
                encoder: Some(RetrievalEncoder::identity_for_table(
                    &ds.manifest().encoder,
                    ds.dir(),
                )),
            };
            let n = smallcap_datastore::pgvector::push(&ds, &a.to, &opts)?;
            let url = smallcap_datastore::pgvector::PgUrl::parse(&a.to)?;
            eprintln!("pushed {n} captions to {}", url.redacted());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The index and captions files of a FAISS spec (a hub one fetched into the cache), else `None`.
fn faiss_files(spec: &DatastoreSpec) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    Ok(match spec {
        DatastoreSpec::Faiss { index, captions } => Some((index.clone(), captions.clone())),
        DatastoreSpec::Hub { .. } => spec.fetch()?,
        _ => None,
    })
}

/// Copies `from` to `to` through a temporary file beside `to`, renamed once complete.
fn copy_atomic(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    let name = to
        .file_name()
        .with_context(|| format!("{}: not a file name", to.display()))?;
    let tmp = to.with_file_name(format!(
        ".{}.{}.part",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::copy(from, &tmp)
        .and_then(|_| std::fs::rename(&tmp, to))
        .with_context(|| format!("cannot write {}", to.display()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A folder removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
