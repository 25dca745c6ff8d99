//! `smallcap retrieve`: top-k datastore captions for query images or texts, one JSON object per
//! line (`{"query", "ids", "scores", "captions"}`), optionally written as the reference's
//! retrieved-captions file (`{"<image id>": [captions...]}`), skipping captions of the query
//! image itself with `--exclude-self` as the reference's `filter_nns` does.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;

use smallcap::retrieval::{DatastoreSpec, NamedSpec, Queries, Retriever, SelfExclusion};
use smallcap::retrieved::image_id;

#[derive(Args)]
pub struct RetrieveArgs {
    /// Retrieval encoder: an OpenAI CLIP file or a HF CLIPModel folder / hub id (default: the
    /// one the datastore records).
    #[arg(long)]
    encoder: Option<String>,
    /// A datastore: a folder, a FAISS index file (its captions beside it as
    /// <index>_captions.json, or INDEX,captions=FILE), or a `postgres://…?table=NAME` URL.
    #[arg(
        long,
        value_name = "SPEC",
        conflicts_with = "index",
        required_unless_present = "index"
    )]
    datastore: Option<String>,
    /// A FAISS index file (with --captions; the same as --datastore INDEX,captions=FILE).
    #[arg(long, requires = "captions")]
    index: Option<PathBuf>,
    /// The FAISS index's captions (JSON list or id-keyed object).
    #[arg(long, requires = "index")]
    captions: Option<PathBuf>,
    /// Query images.
    #[arg(long = "image", num_args = 1..)]
    image: Vec<PathBuf>,
    /// Every image file in this folder (sorted by name).
    #[arg(long = "images", value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// Query texts.
    #[arg(long = "text", num_args = 1.., conflicts_with_all = ["image", "images_dir", "out", "exclude_self"])]
    text: Vec<String>,
    /// Captions per query.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Queries encoded together.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Also write {"<image id>": [captions]} (the reference's retrieved-captions file).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip captions of the query image itself (image ids from COCO annotations or a Karpathy
    /// dataset_coco.json, matched by the integer in the image's file name).
    #[arg(long, value_name = "ANNOTATIONS")]
    exclude_self: Option<PathBuf>,
    /// Where the encoder runs: cpu, or cuda[:N] in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: String,
    /// How a ResNet image tower and the text tower compute: f32 (the reference's embeddings),
    /// or bf16 (bf16 operands on AMX or AVX-512 BF16, f32 sums: faster; embeddings agree with
    /// f32's to about 1e-3, so the top-k may differ).
    #[arg(long, default_value = "f32", value_name = "f32|bf16")]
    encoder_precision: smallcap::EncoderPrecision,
}

fn out_key(path: &Path) -> String {
    match image_id(path) {
        Some(id) => id.to_string(),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

pub fn run(args: RetrieveArgs) -> anyhow::Result<ExitCode> {
    let device = super::device(&args.device)?;
    if args.k == 0 {
        bail!("--k must be at least 1");
    }
    let mut images = args.image.clone();
    if let Some(dir) = &args.images_dir {
        images.extend(super::list_images(dir)?);
    }
    if images.is_empty() && args.text.is_empty() {
        bail!("no queries: give --image IMG..., --images DIR or --text STR...");
    }
    let spec = match (&args.datastore, &args.index, &args.captions) {
        (Some(spec), _, _) => NamedSpec::parse(spec)?,
        (None, Some(index), Some(captions)) => NamedSpec {
            name: "datastore".into(),
            spec: DatastoreSpec::Faiss {
                index: index.clone(),
                captions: captions.clone(),
            },
        },
        _ => bail!("give --datastore SPEC, or --index FILE with --captions FILE"),
    };
    let retriever = Retriever::open_with_default(
        &[spec],
        args.encoder.as_deref(),
        None,
        &device,
        args.encoder_precision,
        // Image queries need no text tower, text queries no image tower.
        match args.text.is_empty() {
            true => Queries::Images,
            false => Queries::Texts,
        },
    )?;
    let store_len = retriever.store(None)?.len();
    if args.k > store_len {
        bail!(
            "--k {} is larger than the store ({store_len} captions)",
            args.k
        );
    }
    let exclusion = match &args.exclude_self {
        Some(p) => Some(SelfExclusion::from_annotations(p)?),
        None => None,
    };
    let stdout = std::io::stdout();
    if !args.text.is_empty() {
        for chunk in args.text.chunks(args.batch_size.max(1)) {
            let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let found = retriever.retrieve_texts(None, &texts, args.k)?;
            let mut out = stdout.lock();
            for (t, r) in texts.iter().zip(found) {
                let line = serde_json::json!({"query": t, "ids": r.ids, "scores": r.scores, "captions": r.captions});
                writeln!(out, "{line}")?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let bar = super::progress_bar(images.len(), "images");
    let mut file_map = BTreeMap::new();
    let mut failures = 0usize;
    for chunk in images.chunks(args.batch_size.max(1)) {
        let mut ok = Vec::new();
        let mut pixels = Vec::new();
        let mut ids = Vec::new();
        for path in chunk {
            let loaded = smallcap_image::load(path)
                .map_err(anyhow::Error::from)
                .and_then(|img| {
                    let id = match &exclusion {
                        Some(_) => image_id(path).map(|i| i as i64).with_context(|| {
                            "no integer image id in the file name for --exclude-self"
                        })?,
                        None => 0,
                    };
                    Ok((img, id))
                });
            match loaded {
                Ok((px, id)) => {
                    ok.push(path);
                    pixels.push(px);
                    ids.push(id);
                }
                Err(e) => {
                    bar.suspend(|| eprintln!("error: {}: {e:#}", path.display()));
                    failures += 1;
                }
            }
        }
        let queries: Vec<&smallcap_image::SourceImage> = pixels.iter().collect();
        let q = retriever.encoder().encode_images(&queries)?;
        let found = retriever.search(
            None,
            &q,
            args.k,
            exclusion.as_ref().map(|e| (e, ids.as_slice())),
        )?;
        let mut out = stdout.lock();
        for (path, r) in ok.into_iter().zip(found) {
            let line = serde_json::json!({"query": path.to_string_lossy(), "ids": r.ids, "scores": r.scores, "captions": r.captions});
            writeln!(out, "{line}")?;
            if args.out.is_some() {
                file_map.insert(out_key(path), r.captions);
            }
        }
        out.flush()?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if let Some(path) = &args.out {
        super::write_atomic(path, serde_json::to_string(&file_map)?.as_bytes())?;
    }
    if failures > 0 {
        eprintln!("{failures} of {} images failed", images.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
