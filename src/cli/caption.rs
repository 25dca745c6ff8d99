//! `smallcap caption`: images in, one JSON line per image out, in input order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use smallcap::pipeline::{ImageInput, Pipeline, PipelineCaption, PipelineOptions, PromptSource};
use smallcap::retrieval::Queries;
use smallcap::retrieved::{image_id, RetrievedCaptions};
use smallcap::GenerationConfig;

#[derive(Args)]
pub struct CaptionArgs {
    #[command(flatten)]
    captioner: super::CaptionerArgs,
    /// Images to caption.
    images: Vec<PathBuf>,
    /// Also caption every image file in this folder (sorted by name).
    #[arg(long = "images", value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// Retrieved captions: a JSON object mapping an image's file name, stem or id to captions.
    #[arg(long, conflicts_with_all = ["captions", "no_retrieval", "datastore"])]
    retrieved: Option<PathBuf>,
    /// Retrieve each image's prompt captions live from this datastore: a folder, a FAISS index
    /// file (its captions beside it as <index>_captions.json, or INDEX,captions=FILE), or a
    /// `postgres://…?table=NAME` URL of one pushed with `smallcap datastore push`.
    #[arg(long, value_name = "SPEC", conflicts_with_all = ["captions", "no_retrieval"])]
    datastore: Option<String>,
    /// The retrieval encoder for --datastore (default: the one the datastore records): an
    /// OpenAI CLIP file such as RN50x64.pt, or a HF CLIPModel folder / hub id.
    #[arg(long, requires = "datastore")]
    retrieval_encoder: Option<String>,
    /// Retrieve with the captioning encoder's own vision tower: the query is the retrieval
    /// encoder's projection of the captioner's encoder states, so each image is encoded once.
    /// Needs a Hugging Face CLIPModel retrieval encoder with the same tower (SmallCap's is
    /// openai/clip-vit-base-patch32), checked on the first image.
    #[arg(long, requires = "datastore")]
    share_vision_tower: bool,
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
    /// Where the networks run: cpu, or cuda[:N] in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: String,
}

/// One line of output, in the documented key order.
#[derive(serde::Serialize)]
struct OutputLine<'a> {
    image: &'a str,
    caption: &'a str,
    generated_ids: &'a [u32],
    retrieved_captions: &'a [String],
}

/// The images named on the command line and in `--images DIR`, and the argument checks that
/// need no file.
fn images_and_checks(args: &CaptionArgs) -> anyhow::Result<Vec<PathBuf>> {
    let mut images = args.images.clone();
    if let Some(dir) = &args.images_dir {
        images.extend(super::list_images(dir)?);
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
    if !args.captions.is_empty() && args.k > args.captions.len() {
        bail!(
            "--k {} is larger than the {} --captions given",
            args.k,
            args.captions.len()
        );
    }
    Ok(images)
}

/// The datastore (checked to hold k captions), then the captioner.
fn load_pipeline(args: &CaptionArgs) -> anyhow::Result<Pipeline> {
    let pipeline = Pipeline::load(&PipelineOptions {
        tokenizer: args.captioner.tokenizer.clone(),
        decoder_weights: args.captioner.decoder_weights,
        encoder_precision: args.captioner.encoder_precision,
        datastores: args.datastore.iter().cloned().collect(),
        retrieval_encoder: args.retrieval_encoder.clone(),
        share_vision_tower: args.share_vision_tower,
        // Captioning queries by image alone: the retrieval encoder's text tower is left out.
        retrieval_queries: Queries::Images,
        device: super::device(&args.device)?,
        ..PipelineOptions::new(args.captioner.model.clone())
    })?;
    if let Some(r) = pipeline.retriever() {
        let len = r.store(None)?.len();
        if args.k > len {
            bail!(
                "--k {} is larger than the datastore ({len} captions)",
                args.k
            );
        }
    }
    Ok(pipeline)
}

pub fn run(args: CaptionArgs) -> anyhow::Result<ExitCode> {
    let images = images_and_checks(&args)?;
    let retrieved = match &args.retrieved {
        Some(path) => Some(RetrievedCaptions::from_file(path)?),
        None => None,
    };
    let pipeline = load_pipeline(&args)?;
    let has_retriever = pipeline.retriever().is_some();
    if retrieved.is_none() && !has_retriever && args.captions.is_empty() && !args.no_retrieval {
        bail!("give the prompt captions: --datastore DIR, --retrieved FILE, --captions TEXT (repeatable), or --no-retrieval");
    }
    let generation = GenerationConfig {
        num_beams: args.beams,
        early_stopping: args.early_stopping,
        length_penalty: args.length_penalty,
        max_new_tokens: args.max_new_tokens,
        ..pipeline.default_generation()
    };
    // Each image's prompt source; a retrieved-captions file that lacks an image fails that image.
    let prompt_of = |path: &Path| -> smallcap::Result<PromptSource> {
        Ok(if args.no_retrieval {
            PromptSource::NoRetrieval
        } else if has_retriever {
            PromptSource::Datastore(None)
        } else if let Some(r) = &retrieved {
            PromptSource::Captions(r.lookup(path)?.to_vec())
        } else {
            PromptSource::Captions(args.captions.clone())
        })
    };

    let progress = super::progress_bar(images.len(), "images");
    let mut failures = 0usize;
    let mut coco = Vec::new();
    let report = |path: &Path, e: &dyn std::fmt::Display| {
        progress.suspend(|| eprintln!("error: {}: {e:#}", path.display()));
    };
    // Each batch is staged (decoded, retrieved for, encoded) on a second thread while the one
    // before it is captioned here, so that the retrieval encoder fills the cores beam search
    // leaves idle; lines are written in the images' order.
    std::thread::scope(|s| -> anyhow::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(0);
        let (pipeline, images) = (&pipeline, &images);
        s.spawn(move || {
            for chunk in images.chunks(args.batch_size) {
                let (mut items, mut paths, mut failed) = (Vec::new(), Vec::new(), Vec::new());
                for path in chunk {
                    match prompt_of(path) {
                        Ok(prompt) => {
                            items.push((ImageInput::Path(path.clone()), prompt, args.k));
                            paths.push(path.as_path());
                        }
                        Err(e) => failed.push((path.as_path(), e.to_string())),
                    }
                }
                let staged = pipeline.stage(items);
                // The receiver is gone when captioning failed: stop staging.
                if tx.send((chunk.len(), paths, failed, staged)).is_err() {
                    break;
                }
            }
        });
        for (n, paths, failed, staged) in rx {
            for (path, e) in &failed {
                report(path, e);
            }
            failures += failed.len();
            let results = pipeline.finish(staged, &generation)?;
            let coco_out = args.coco_results.is_some().then_some(&mut coco);
            failures += write_lines(&paths, results, coco_out, &report)?;
            progress.inc(n as u64);
        }
        Ok(())
    })?;
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

/// One JSON line per captioned image, in order; failures are reported. With `coco`, the COCO
/// results entry of each image too. Returns the number of failures.
fn write_lines(
    paths: &[&Path],
    results: Vec<smallcap::Result<PipelineCaption>>,
    mut coco: Option<&mut Vec<serde_json::Value>>,
    report: &dyn Fn(&Path, &dyn std::fmt::Display),
) -> anyhow::Result<usize> {
    let mut failures = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (&path, r) in paths.iter().zip(results) {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                report(path, &e);
                failures += 1;
                continue;
            }
        };
        let line = OutputLine {
            image: &path.to_string_lossy(),
            caption: &r.caption,
            generated_ids: &r.generated_ids,
            retrieved_captions: &r.retrieved_captions,
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
        if let Some(coco) = coco.as_deref_mut() {
            match image_id(path) {
                Some(id) => coco.push(serde_json::json!({"image_id": id, "caption": r.caption})),
                None => {
                    report(
                        path,
                        &"no integer image id in the file name for --coco-results",
                    );
                    failures += 1;
                }
            }
        }
    }
    out.flush()?;
    Ok(failures)
}
