//! `smallcap caption`: images in, one JSON line per image out, in input order.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use candle_core::Device;
use clap::Args;

use smallcap::captioner::{Captioner, Prepared, Retrieval};
use smallcap::retrieved::{image_id, RetrievedCaptions};
use smallcap::GenerationConfig;

#[derive(Args)]
pub struct CaptionArgs {
    /// A SmallCap checkpoint folder, or a hub id such as Yova/SmallCap7M.
    #[arg(long)]
    model: String,
    /// GPT-2 tokenizer: a folder with vocab.json + merges.txt, or a hub id (default: the model
    /// folder's own files, else the hub's gpt2).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Images to caption.
    images: Vec<PathBuf>,
    /// Also caption every image file in this folder (sorted by name).
    #[arg(long = "images", value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// Retrieved captions: a JSON object mapping an image's file name, stem or id to captions.
    #[arg(long, conflicts_with_all = ["captions", "no_retrieval"])]
    retrieved: Option<PathBuf>,
    /// Captions to put in every image's prompt (repeatable).
    #[arg(long = "captions", conflicts_with = "no_retrieval")]
    captions: Vec<String>,
    /// Number of retrieved captions in the prompt.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Use the prompt without retrieved captions.
    #[arg(long)]
    no_retrieval: bool,
    /// Beam count (1 = greedy).
    #[arg(long, default_value_t = 3)]
    beams: usize,
    /// Stop the beam search as soon as `beams` hypotheses are finished (infer.py does).
    #[arg(long)]
    early_stopping: bool,
    /// Exponent of the length in beam scores.
    #[arg(long, default_value_t = 0.0)]
    length_penalty: f64,
    #[arg(long, default_value_t = 25)]
    max_new_tokens: usize,
    /// Images decoded together in one forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Also write COCO results `[{"image_id", "caption"}]` to this file.
    #[arg(long)]
    coco_results: Option<PathBuf>,
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

fn list_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if path.is_file() && IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

pub fn run(args: CaptionArgs) -> anyhow::Result<ExitCode> {
    let mut images = args.images.clone();
    if let Some(dir) = &args.images_dir {
        images.extend(list_images(dir)?);
    }
    if images.is_empty() {
        bail!("no images given (pass image paths or --images DIR)");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.beams == 0 {
        bail!("--beams must be at least 1");
    }
    let retrieved = match &args.retrieved {
        Some(path) => Some(RetrievedCaptions::from_file(path)?),
        None => None,
    };
    if !args.captions.is_empty() && args.k > args.captions.len() {
        bail!(
            "--k {} is larger than the {} --captions given",
            args.k,
            args.captions.len()
        );
    }
    let device = Device::Cpu;
    let captioner = Captioner::from_specs(&args.model, args.tokenizer.as_deref(), &device)?;
    if retrieved.is_none() && args.captions.is_empty() && !args.no_retrieval {
        bail!("give the prompt captions: --retrieved FILE, --captions TEXT (repeatable), or --no-retrieval");
    }
    let generation = GenerationConfig {
        num_beams: args.beams,
        early_stopping: args.early_stopping,
        length_penalty: args.length_penalty,
        max_new_tokens: args.max_new_tokens,
        ..captioner.default_generation()
    };

    let progress = if images.len() > 1 && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(images.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images  {elapsed} (eta {eta})")
                .expect("valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let prepare = |path: &Path| -> anyhow::Result<Prepared> {
        let retrieval = if args.no_retrieval {
            Retrieval::None
        } else if let Some(r) = &retrieved {
            Retrieval::Captions(r.lookup(path)?.to_vec())
        } else {
            Retrieval::Captions(args.captions.clone())
        };
        let pixels = captioner.load_image(path)?;
        Ok(captioner.prepare(pixels, retrieval, args.k)?)
    };

    let mut failures = 0usize;
    let mut coco = Vec::new();
    let stdout = std::io::stdout();
    for chunk in images.chunks(args.batch_size) {
        let mut ready = Vec::new();
        let mut slots = Vec::new();
        for path in chunk {
            match prepare(path) {
                Ok(p) => {
                    slots.push(Some(ready.len()));
                    ready.push(p);
                }
                Err(e) => {
                    progress.suspend(|| eprintln!("error: {}: {e:#}", path.display()));
                    failures += 1;
                    slots.push(None);
                }
            }
        }
        let results = captioner.caption(&ready, &generation)?;
        let mut out = stdout.lock();
        for (path, slot) in chunk.iter().zip(slots) {
            let Some(i) = slot else { continue };
            let r = &results[i];
            let line = serde_json::json!({
                "image": path.to_string_lossy(),
                "caption": r.caption,
                "generated_ids": r.generated_ids,
                "retrieved_captions": r.retrieved_captions,
            });
            writeln!(out, "{line}")?;
            if args.coco_results.is_some() {
                match image_id(path) {
                    Some(id) => coco.push(serde_json::json!({"image_id": id, "caption": r.caption})),
                    None => {
                        progress.suspend(|| {
                            eprintln!(
                                "error: {}: no integer image id in the file name for --coco-results",
                                path.display()
                            )
                        });
                        failures += 1;
                    }
                }
            }
        }
        out.flush()?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    if let Some(path) = &args.coco_results {
        super::write_atomic(path, serde_json::to_string(&coco)?.as_bytes())?;
    }
    if failures > 0 {
        eprintln!("{failures} of {} images failed", images.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
