//! `bench`: times captioning at full size (CLIP ViT-B/32 vision tower, GPT-2 124M, reduce factor
//! 4) with random weights that it writes itself in the hub layout, on the workload of the
//! reference's `perf_reference.py`: 4 retrieved captions (a prompt of about 60 tokens), 3 beams,
//! early stopping, 25 new tokens at most. Reports per-image encode and generate time (median of
//! the runs) and peak memory, for single images and for batches.
//!
//! `cargo run --release --bin bench -- [--images DIR] [--runs 3] [--batch 8]`

#[path = "support/measure.rs"]
mod measure;
#[path = "support/random_checkpoint.rs"]
mod random_checkpoint;
use measure::peak_rss_mib;
use smallcap_util::stats::median;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use clap::Parser;

use smallcap::captioner::{Captioner, Prepared, Retrieval};
use smallcap::WeightType;
use smallcap::{SmallCap, Tokenizer};

#[derive(Parser)]
struct Args {
    /// Where the random full-size checkpoint is written (reused when present).
    #[arg(long, default_value = "target/bench-model")]
    model_dir: PathBuf,
    /// Images to caption.
    #[arg(long, default_value = "tests/fixtures/smallcap-tiny/images")]
    images: PathBuf,
    /// GPT-2 BPE files.
    #[arg(long, default_value = "tests/fixtures/smallcap-tiny/tokenizer")]
    tokenizer: PathBuf,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Batch size of the batched measurement.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// A folder made by the reference's `perf_reference.py --make` and run: its `model/` is used
    /// instead of the random checkpoint, its `cases.json` gives each image's prompt ids, and every
    /// generated id sequence is checked against the reference's.
    #[arg(long)]
    perf_dir: Option<PathBuf>,
    /// How the decoder's weights are kept: f32 (the reference's results), f16, bf16 or int8.
    #[arg(long, default_value = "f32")]
    decoder_weights: WeightType,
}

#[derive(serde::Deserialize)]
struct PerfCase {
    image: String,
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct PerfCases {
    cases: Vec<PerfCase>,
}

/// perf_reference.py's caption vocabulary: 6–14 random words, deterministic.
fn random_captions(seed: u64) -> Vec<String> {
    let words: Vec<&str> =
        "a the man woman dog cat bus train on near with riding standing street beach table"
            .split(' ')
            .collect();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    (0..4)
        .map(|_| {
            let n = 6 + next() % 9;
            (0..n)
                .map(|_| words[next() % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (model_dir, reference) = match &args.perf_dir {
        Some(dir) => {
            let text = std::fs::read_to_string(dir.join("cases.json"))?;
            let cases: PerfCases = serde_json::from_str(&text)?;
            let map: HashMap<String, PerfCase> = cases
                .cases
                .into_iter()
                .map(|c| (c.image.clone(), c))
                .collect();
            (dir.join("model"), Some(map))
        }
        None => {
            random_checkpoint::write_random_checkpoint(
                &args.model_dir,
                &random_checkpoint::full_size_config(),
                1234,
            )
            .context("writing the random checkpoint")?;
            (args.model_dir.clone(), None)
        }
    };
    let dev = Device::Cpu;
    let t0 = Instant::now();
    let mut model = SmallCap::load_dir(&model_dir, &dev)?;
    model.pack_decoder(args.decoder_weights)?;
    let tokenizer = Tokenizer::from_dir(&args.tokenizer)?;
    let captioner = Captioner::new(model, tokenizer, dev)?;
    let load_s = t0.elapsed().as_secs_f64();
    let generation = captioner.default_generation();
    let mut images: Vec<PathBuf> = std::fs::read_dir(&args.images)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    images.sort();

    let name = |path: &Path| {
        path.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string()
    };
    let prepare = |path: &Path, i: usize| -> anyhow::Result<(Prepared, f64)> {
        let t = Instant::now();
        let px = captioner.load_image(path)?;
        let pre = t.elapsed().as_secs_f64();
        let mut p = captioner.prepare(px, Retrieval::Captions(random_captions(i as u64)), 4)?;
        if let Some(reference) = &reference {
            let case = reference.get(&name(path)).with_context(|| {
                format!("{} is not in the reference's cases.json", path.display())
            })?;
            p.prompt_ids = case.prompt_ids.clone();
        }
        Ok((p, pre))
    };
    let mut mismatches = 0usize;

    // Single images: encode (preprocessing + vision tower) and generate, separately timed.
    let (mut enc, mut gen, mut tokens, mut prompt_len) = (vec![], vec![], vec![], vec![]);
    for _ in 0..args.runs {
        for (i, path) in images.iter().enumerate() {
            let (p, pre_s) = prepare(path, i)?;
            let t = Instant::now();
            let states = captioner.model().encode(&p.pixel_values.unsqueeze(0)?)?;
            enc.push(pre_s + t.elapsed().as_secs_f64());
            let t = Instant::now();
            let out = smallcap::generation::generate(
                &captioner.model().decoder,
                &[smallcap::generation::Request {
                    prompt_ids: &p.prompt_ids,
                    encoder_hidden_states: states.get(0)?,
                }],
                &generation,
            )?;
            gen.push(t.elapsed().as_secs_f64());
            if let Some(reference) = &reference {
                if reference[&name(path)].generated_ids != out[0] {
                    mismatches += 1;
                    eprintln!(
                        "{}: generated ids differ from the reference's",
                        path.display()
                    );
                }
            }
            tokens.push(out[0].len() as f64);
            prompt_len.push(p.prompt_ids.len() as f64);
        }
    }
    let single_peak = peak_rss_mib();

    // Batches: the whole captioner call per batch, per image.
    let mut batched = vec![];
    let mut batch_mismatches = 0usize;
    for _ in 0..args.runs {
        for chunk in images.chunks(args.batch).filter(|c| c.len() == args.batch) {
            let t = Instant::now();
            let items = chunk
                .iter()
                .enumerate()
                .map(|(i, p)| prepare(p, i).map(|x| x.0))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let out = captioner.caption(&items, &generation)?;
            batched.push(t.elapsed().as_secs_f64() / chunk.len() as f64);
            if let Some(reference) = &reference {
                for (path, caption) in chunk.iter().zip(&out) {
                    if reference[&name(path)].generated_ids != caption.generated_ids {
                        batch_mismatches += 1;
                        eprintln!(
                            "{}: batched ids differ from the reference's",
                            path.display()
                        );
                    }
                }
            }
        }
    }
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| decoder weights | {} |", args.decoder_weights.as_str());
    println!("| load checkpoint (s) | {load_s:.2} |");
    println!("| images × runs | {} × {} |", images.len(), args.runs);
    if reference.is_some() {
        println!(
            "| generated ids equal to the reference's | {} of {} |",
            enc.len() - mismatches,
            enc.len()
        );
    }
    println!("| prompt tokens (mean) | {:.1} |", avg(&prompt_len));
    println!("| new tokens (mean) | {:.1} |", avg(&tokens));
    println!(
        "| encode per image, batch 1 (s, median) | {:.3} |",
        median(enc.clone())
    );
    println!(
        "| generate per image, batch 1 (s, median) | {:.3} |",
        median(gen.clone())
    );
    println!(
        "| encode + generate per image, batch 1 (s, median) | {:.3} |",
        median(enc.iter().zip(&gen).map(|(a, b)| a + b).collect())
    );
    println!("| peak RSS after batch 1 (MiB) | {single_peak:.0} |");
    if !batched.is_empty() {
        println!(
            "| encode + generate per image, batch {} (s, median) | {:.3} |",
            args.batch,
            median(batched)
        );
        if reference.is_some() {
            println!(
                "| batched images whose ids differ from the reference's | {batch_mismatches} |"
            );
        }
        println!(
            "| peak RSS after batch {} (MiB) | {:.0} |",
            args.batch,
            peak_rss_mib()
        );
    }
    Ok(())
}
