//! `smallcap download`: fetches a checkpoint, its tokenizer, its retrieval encoder and named
//! datastores into the caches ahead of time (the hub cache, `~/.cache/clip`), then lists what is
//! cached with its size, so that the machine can caption offline (`HF_HUB_OFFLINE=1`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use smallcap::hub;
use smallcap::retrieval::openai_models;
use smallcap::retrieval::DatastoreSpec;
use smallcap::SmallCapConfig;

#[derive(Args)]
pub struct DownloadArgs {
    /// A SmallCap checkpoint hub id such as Yova/SmallCap7M (or a local folder).
    model: String,
    /// The decoder's tokenizer folder or hub id (default: the model folder's own files, else the
    /// hub's gpt2, facebook/opt-125m for an OPT checkpoint, facebook/xglm-564M for an XGLM one).
    #[arg(long)]
    tokenizer: Option<String>,
    /// The retrieval encoder (default: the checkpoint's retrieval_encoder, RN50x64 for
    /// SmallCap7M): an OpenAI CLIP name, or a HF CLIPModel hub id.
    #[arg(long)]
    retrieval_encoder: Option<String>,
    /// A datastore to fetch (repeatable): a FAISS file of the model's hub repo by name
    /// (`coco_index`, with `coco_index_captions.json`), or any hf://OWNER/REPO[@REVISION]/FILE.
    #[arg(long = "datastore", value_name = "NAME|hf://…")]
    datastores: Vec<String>,
}

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub fn run(args: DownloadArgs) -> anyhow::Result<ExitCode> {
    let mut files: Vec<(&str, PathBuf)> = Vec::new();
    let model = hub::model_files(&args.model)?;
    files.push(("checkpoint", model.config.clone()));
    files.push(("checkpoint", model.weights.clone()));
    let tokenizer = hub::tokenizer_dir_for(&model, args.tokenizer.as_deref())?;
    for f in ["vocab.json", "merges.txt"] {
        files.push(("tokenizer", tokenizer.join(f)));
    }
    let config = SmallCapConfig::from_file(&model.config)?;
    let encoder = args.retrieval_encoder.clone().or(config.retrieval_encoder);
    match encoder.as_deref() {
        Some(name) if openai_models::is_model_name(name) => {
            let file = openai_models::model_file(name)?;
            files.push(("encoder", file));
        }
        Some(spec) if Path::new(spec).exists() => {}
        Some(spec) => {
            let f = hub::model_files(spec)?;
            files.push(("encoder", f.config));
            files.push(("encoder", f.weights));
        }
        None => {}
    }
    for d in &args.datastores {
        let spec = match (d.starts_with("hf://"), Path::new(&args.model).is_dir()) {
            (true, _) => d.clone(),
            (false, false) => format!("hf://{}/{d}", args.model),
            (false, true) => anyhow::bail!(
                "--datastore {d}: a name is a file of the model's hub repo, and {} is a local folder; give hf://OWNER/REPO/FILE",
                args.model
            ),
        };
        let parsed = DatastoreSpec::parse(&spec).with_context(|| format!("--datastore {d}"))?;
        let (index, captions) = parsed
            .fetch()?
            .with_context(|| format!("--datastore {d}: not a hub datastore"))?;
        files.push(("datastore", index));
        files.push(("datastore", captions));
    }
    let mut total = 0;
    for (kind, path) in &files {
        let n = size_of(path);
        total += n;
        println!(
            "{kind:<10} {:>10}  {n:>12} bytes  {}",
            human(n),
            path.display()
        );
    }
    println!("{:<10} {:>10}  {total:>12} bytes", "total", human(total));
    Ok(ExitCode::SUCCESS)
}
