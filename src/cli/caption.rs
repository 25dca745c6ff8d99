//! `smallcap caption`: images in, one JSON line per image out, in input order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use candle_core::{Device, Tensor};
use clap::Args;

use smallcap::captioner::{Captioner, Prepared, Retrieval};
use smallcap::models::packed_linear::WeightType;
use smallcap::retrieval::Retriever;
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
    /// How the decoder's weights are kept in memory: f32 (the reference's results), or f16 or
    /// bf16 (half the memory read per decoding step; captions may differ slightly).
    #[arg(long, default_value = "f32", value_name = "f32|f16|bf16")]
    decoder_weights: WeightType,
    /// Images to caption.
    images: Vec<PathBuf>,
    /// Also caption every image file in this folder (sorted by name).
    #[arg(long = "images", value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// Retrieved captions: a JSON object mapping an image's file name, stem or id to captions.
    #[arg(long, conflicts_with_all = ["captions", "no_retrieval", "datastore"])]
    retrieved: Option<PathBuf>,
    /// Retrieve each image's prompt captions live from this datastore: a folder, or a
    /// `postgres://…?table=NAME` URL of one pushed with `smallcap datastore push`.
    #[arg(long, value_name = "DIR|URL", conflicts_with_all = ["captions", "no_retrieval"])]
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
}

/// `--share-vision-tower` is only right when the retrieval encoder's vision tower is the
/// captioner's: on the same pixels, the query from the captioner's states must equal the
/// retrieval encoder's own image embedding.
fn check_shared_tower(r: &Retriever, pixels: &Tensor, states: &Tensor) -> anyhow::Result<()> {
    let shared = r
        .encoder()
        .encode_from_vision_states(&states.unsqueeze(0)?)?;
    let own = r.encoder().encode_image_tensor(&pixels.unsqueeze(0)?)?;
    let diff = shared
        .iter()
        .zip(&own)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // Both are unit vectors from the same tower and pixels: they differ only by rounding.
    if shared.len() != own.len() || diff > 1e-4 {
        bail!(
            "--share-vision-tower: the retrieval encoder {} does not have the captioning encoder's vision tower (its image embedding differs by {diff:.3e}); drop the option or use the captioning encoder's CLIP",
            r.encoder().identity()
        );
    }
    Ok(())
}

/// One line of output, in the documented key order.
#[derive(serde::Serialize)]
struct OutputLine<'a> {
    image: &'a str,
    caption: &'a str,
    generated_ids: &'a [u32],
    retrieved_captions: &'a [String],
}

pub fn run(args: CaptionArgs) -> anyhow::Result<ExitCode> {
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
    let retriever = match &args.datastore {
        Some(spec) => Some(Retriever::open(
            spec,
            args.retrieval_encoder.as_deref(),
            &device,
        )?),
        None => None,
    };
    if let Some(r) = &retriever {
        if args.k > r.store().len() {
            bail!(
                "--k {} is larger than the datastore ({} captions)",
                args.k,
                r.store().len()
            );
        }
    }
    let captioner = Captioner::from_specs_with_weights(
        &args.model,
        args.tokenizer.as_deref(),
        &device,
        args.decoder_weights,
    )?;
    if retrieved.is_none() && retriever.is_none() && args.captions.is_empty() && !args.no_retrieval
    {
        bail!("give the prompt captions: --datastore DIR, --retrieved FILE, --captions TEXT (repeatable), or --no-retrieval");
    }
    let generation = GenerationConfig {
        num_beams: args.beams,
        early_stopping: args.early_stopping,
        length_penalty: args.length_penalty,
        max_new_tokens: args.max_new_tokens,
        ..captioner.default_generation()
    };

    let progress = super::progress_bar(images.len(), "images");

    let tower_checked = std::sync::atomic::AtomicBool::new(false);
    let prepare = |path: &Path| -> anyhow::Result<Prepared> {
        let image = smallcap_image::load(path)?;
        if let (Some(r), true) = (&retriever, args.share_vision_tower) {
            let pixels = captioner.pixel_values(&image.to_rgb())?;
            let states = captioner.encode(&pixels)?;
            if !tower_checked.swap(true, std::sync::atomic::Ordering::Relaxed) {
                check_shared_tower(r, &pixels, &states)?;
            }
            let found = r.retrieve_from_vision_states(&states.unsqueeze(0)?, args.k)?;
            let captions = found.into_iter().next().map(|f| f.captions);
            let mut prepared = captioner.prepare(
                pixels,
                Retrieval::Captions(captions.unwrap_or_default()),
                args.k,
            )?;
            prepared.encoder_hidden_states = Some(states);
            return Ok(prepared);
        }
        let retrieval = if args.no_retrieval {
            Retrieval::None
        } else if let Some(r) = &retriever {
            let found = r.retrieve_images(std::slice::from_ref(&image), args.k)?;
            Retrieval::Captions(
                found
                    .into_iter()
                    .next()
                    .map(|f| f.captions)
                    .unwrap_or_default(),
            )
        } else if let Some(r) = &retrieved {
            Retrieval::Captions(r.lookup(path)?.to_vec())
        } else {
            Retrieval::Captions(args.captions.clone())
        };
        let pixels = captioner.pixel_values(&image.to_rgb())?;
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
            let line = OutputLine {
                image: &path.to_string_lossy(),
                caption: &r.caption,
                generated_ids: &r.generated_ids,
                retrieved_captions: &r.retrieved_captions,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
            if args.coco_results.is_some() {
                match image_id(path) {
                    Some(id) => {
                        coco.push(serde_json::json!({"image_id": id, "caption": r.caption}))
                    }
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
