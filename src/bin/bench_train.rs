//! `bench_train`: training throughput at full size (CLIP ViT-B/32 features, GPT-2 124M, reduce
//! factor 4, k = 4 so sequences of 140 tokens), random weights written in the hub layout by the
//! shared random-checkpoint writer, random features. A step is what `smallcap train` does per
//! batch: forward with dropout 0.1, loss, backward, clipping, HF AdamW. Reports samples per
//! second (median over the timed steps after one warm-up step) and peak memory per batch size.
//!
//! `cargo run --release --bin bench_train -- [--batch 8 --batch 64] [--steps 3] [--micro-batch 8]
//! [--precision bf16]`

#[path = "support/measure.rs"]
mod measure;
#[path = "support/random_checkpoint.rs"]
mod random_checkpoint;
use measure::peak_rss_mib;
use smallcap_util::stats::median;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use clap::Parser;

use random_checkpoint::{full_size_config, write_random_checkpoint};
use smallcap::checkpoint::StateDict;
use smallcap::models::Dropout;
use smallcap::train::dataset::{max_length, prep_strings};
use smallcap::train::{
    clip_grad_norm, AdamW, AdamWConfig, Batch, TrainModel, TrainPrecision, Trainable,
};
use smallcap::Rng;
use smallcap::{SmallCapConfig, Tokenizer};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/bench-model")]
    model_dir: PathBuf,
    #[arg(long, default_value = "tests/fixtures/smallcap-tiny/tokenizer")]
    tokenizer: PathBuf,
    /// Batch sizes to time (repeatable).
    #[arg(long = "batch", default_values_t = vec![8usize])]
    batches: Vec<usize>,
    /// Timed steps per batch size (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Samples per forward/backward pass (gradient accumulation), as `smallcap train
    /// --micro-batch`; default: the whole batch.
    #[arg(long)]
    micro_batch: Option<usize>,
    /// The decoder's linear products, as `smallcap train --precision`.
    #[arg(long, default_value = "f32")]
    precision: TrainPrecision,
    /// Leave the allocator's defaults (freed buffers go back to the kernel) instead of
    /// keeping freed buffers as `smallcap train` does.
    #[arg(long)]
    default_allocator: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.default_allocator {
        smallcap::allocator::keep_freed_buffers();
    }
    write_random_checkpoint(&args.model_dir, &full_size_config(), 1234)
        .context("writing the random checkpoint")?;
    let device = Device::cuda_if_available(0)?;
    let config = SmallCapConfig::from_file(&args.model_dir.join("config.json"))?;
    let sd = StateDict::load_dir(&args.model_dir, &config, &device)?;
    let mut model = TrainModel::new(
        config.clone(),
        sd.tensors,
        Trainable::CrossAttention,
        false,
        &device,
    )?;
    model.use_precision(args.precision)?;
    let tok = Tokenizer::from_dir(&args.tokenizer)?;
    let max_len = max_length(&tok, Some(4))?;
    let words: Vec<&str> =
        "a the man woman dog cat bus train on near with riding standing street beach table"
            .split(' ')
            .collect();
    let mut rng = Rng::new(5);
    let sentence = |rng: &mut Rng| -> String {
        let n = 8 + rng.below(7);
        (0..n)
            .map(|_| words[rng.below(words.len())])
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "device: {device:?}; precision {}; trainable parameters: {}",
        args.precision,
        model.trainable_parameters()
    );
    println!(
        "| batch | micro-batch | samples/s (median of {}) | s/step | peak RSS (MiB) |",
        args.steps
    );
    println!("|---|---|---|---|---|");
    for &b in &args.batches {
        let mut opt = AdamW::new(model.params.clone(), AdamWConfig::default())?;
        let (mut ids, mut labels): (Vec<u32>, Vec<i64>) = (Vec::new(), Vec::new());
        for _ in 0..b {
            let caps: Vec<String> = (0..4).map(|_| sentence(&mut rng)).collect();
            let e = prep_strings(&tok, &sentence(&mut rng), Some(&caps), 4, max_len, 13, 0)?;
            ids.extend(e.input_ids.iter().take(max_len));
            labels.extend(e.labels.iter().take(max_len));
        }
        let feats: Vec<f32> = (0..b * 50 * 768).map(|_| rng.normal()).collect();
        let batch = Batch {
            input_ids: Tensor::from_vec(ids, (b, max_len), &device)?,
            labels,
            encoder_hidden: Tensor::from_vec(feats, (b, 50, 768), &device)?.to_dtype(DType::F32)?,
        };
        let mut times = Vec::new();
        for step in 0..=args.steps {
            let t = Instant::now();
            let mut dropout = Dropout::new(0.1, 42, step as u64, &device)?;
            let (_, mut grads) =
                model.loss_and_gradients(&batch, args.micro_batch, &mut dropout)?;
            clip_grad_norm(&mut grads, &model.params, 1.0)?;
            opt.step(&grads, 1e-4)?;
            device.synchronize()?;
            if step > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let med = median(times);
        println!(
            "| {b} | {} | {:.2} | {med:.2} | {:.0} |",
            args.micro_batch
                .filter(|&m| m < b)
                .map_or("whole batch".to_string(), |m| m.to_string()),
            b as f64 / med,
            peak_rss_mib()
        );
    }
    Ok(())
}
