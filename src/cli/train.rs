//! `smallcap train`: trains SmallCap's cross-attention (or the whole decoder) on precomputed
//! image features, as the reference's train.py, writing a checkpoint per epoch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use smallcap::checkpoint::StateDict;
use smallcap::hub;
use smallcap::retrieved::RetrievedCaptions;
use smallcap::train::dataset::Annotations;
use smallcap::train::features::FeatureStore;
use smallcap::train::init::{from_pretrained, reduce_factor, Pretrained, SpecialIds};
use smallcap::train::trainer::{TrainOptions, Trainer, Validation};
use smallcap::train::{TrainDataset, TrainModel, TrainPrecision, Trainable};
use smallcap::{SmallCapConfig, Tokenizer};

const TRAIN_SPLITS: &[&str] = &["train", "restval"];

#[derive(Args)]
pub struct TrainArgs {
    /// Karpathy-split annotations (`dataset_coco.json`); train + restval are used.
    #[arg(long)]
    annotations: PathBuf,
    /// Folder of image features (`smallcap features`).
    #[arg(long)]
    features: PathBuf,
    /// Retrieved captions per image id (as `smallcap retrieve --exclude-self` writes).
    #[arg(
        long,
        conflicts_with = "no_retrieval",
        required_unless_present = "no_retrieval"
    )]
    retrieved: Option<PathBuf>,
    /// Train without retrieved captions in the prompt.
    #[arg(long)]
    no_retrieval: bool,
    /// Output folder (checkpoints `checkpoint-<step>`, `train.log`).
    #[arg(long)]
    out: PathBuf,
    /// The decoder's tokenizer (folder or hub id; default: the --init folder's own files, else
    /// --decoder's).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Retrieved captions in the prompt.
    #[arg(long, default_value_t = 4)]
    k: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Samples per forward/backward pass, gradients accumulated over the batch: the same update
    /// as the whole batch at once, in the memory of this many samples (default: the whole batch;
    /// may also be given with --resume).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    micro_batch: Option<u64>,
    /// How the decoder's linear layers and LM head compute their products: f32, or bf16
    /// operands with f32 sums on the CPU's matrix units (AMX, else AVX-512 BF16), forward and
    /// backward, as torch's bf16 autocast; the trained parameters, their gradients and the
    /// optimiser state stay f32 (default f32; may also be given with --resume).
    #[arg(long)]
    precision: Option<TrainPrecision>,
    #[arg(long, default_value_t = 10)]
    epochs: u64,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// The CLIP model whose vision tower the new model uses.
    #[arg(long, default_value = "openai/clip-vit-base-patch32")]
    encoder: String,
    /// The pretrained decoder the new model decodes with: GPT-2, OPT (facebook/opt-125m) or XGLM
    /// (facebook/xglm-564M), by its config's model_type.
    #[arg(long, default_value = "gpt2")]
    decoder: String,
    /// Cross-attention size in millions: 28, 14, 7, 3.5, 1.75 (reduce factor 1, 2, 4, 8, 16; default 7).
    #[arg(long)]
    attention_size: Option<f64>,
    /// Start from this SmallCap checkpoint instead of a new model.
    #[arg(long, conflicts_with = "resume")]
    init: Option<String>,
    /// Continue the run saved in this checkpoint folder.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Train the whole decoder, not only the cross-attention.
    #[arg(long)]
    train_decoder: bool,
    /// GPT-2 dropout during training.
    #[arg(long, default_value_t = 0.1)]
    dropout: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the file order instead of shuffling each epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// Stop after this many updates (counted from the start of the run).
    #[arg(long)]
    steps: Option<u64>,
    /// Length of the learning-rate schedule (default: all updates of all epochs).
    #[arg(long)]
    total_steps: Option<u64>,
    /// Validate after each epoch on the `val` split of these annotations.
    #[arg(long)]
    val_annotations: Option<PathBuf>,
    /// Features of the validation images (default: --features).
    #[arg(long)]
    val_features: Option<PathBuf>,
    /// Retrieved captions of the validation images (default: --retrieved).
    #[arg(long)]
    val_retrieved: Option<PathBuf>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    smallcap::allocator::keep_freed_buffers();
    let device = super::device_or_cpu()?;
    let ann = Annotations::from_file(&args.annotations)?;
    let samples = ann.samples(TRAIN_SPLITS)?;
    let retrieved = match &args.retrieved {
        Some(p) => Some(RetrievedCaptions::from_file(p)?),
        None => None,
    };
    let features = FeatureStore::open(&args.features)?;
    let k_used = retrieved.as_ref().map(|_| args.k);

    // The tokenizer: --tokenizer, else the checkpoint's own (or its decoder family's hub
    // tokenizer) for --init and --resume, else the pretrained --decoder's.
    let tokenizer_dir = match (&args.tokenizer, &args.init, &args.resume) {
        (Some(t), _, _) => hub::tokenizer_dir(t)?,
        (None, Some(spec), _) => hub::tokenizer_dir_for(&hub::model_files(spec)?, None)?,
        (None, None, Some(dir)) => {
            hub::tokenizer_dir_for(&hub::model_files(&dir.to_string_lossy())?, None)?
        }
        (None, None, None) => hub::tokenizer_dir(&args.decoder)?,
    };
    let tokenizer = Tokenizer::from_dir(&tokenizer_dir)?;

    let mut trainer = if let Some(dir) = &args.resume {
        let config = SmallCapConfig::from_file(&dir.join("config.json"))?;
        tokenizer.check_for(&config.decoder)?;
        let data = TrainDataset::new(
            samples,
            retrieved.clone(),
            args.k,
            tokenizer.clone(),
            config.eos_token_id,
            config.pad_token_id,
        )?;
        Trainer::resume(dir, data, features, &args.out, &device, |o| {
            if let Some(m) = args.micro_batch {
                o.micro_batch = Some(m as usize);
            }
            if let Some(p) = args.precision {
                o.precision = p;
            }
        })?
    } else {
        let (config_json, model) = new_model(&args, k_used, &tokenizer, &device)?;
        tokenizer.check_for(&model.config.decoder)?;
        let (eos, pad) = (model.config.eos_token_id, model.config.pad_token_id);
        let data = TrainDataset::new(
            samples,
            retrieved.clone(),
            args.k,
            tokenizer.clone(),
            eos,
            pad,
        )?;
        let options = TrainOptions {
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            total_steps: args.total_steps,
            seed: args.seed,
            shuffle: !args.no_shuffle,
            dropout: args.dropout,
            max_grad_norm: 1.0,
            train_decoder: args.train_decoder,
            micro_batch: args.micro_batch.map(|m| m as usize),
            precision: args.precision.unwrap_or_default(),
        };
        eprintln!(
            "training a model with {} trainable parameters",
            model.trainable_parameters()
        );
        Trainer::new(
            model,
            config_json,
            data,
            features,
            options,
            &args.out,
            &device,
        )?
    };

    if let Some(val_path) = &args.val_annotations {
        trainer.validation = Some(validation(
            &args,
            val_path,
            &trainer.model.config,
            &retrieved,
            tokenizer,
        )?);
    }

    let written = trainer.run(args.steps)?;
    for dir in &written {
        eprintln!("saved {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A new model to train: from a SmallCap checkpoint (`--init`), or built from the pretrained
/// encoder and decoder as train.py does; with its `config.json`.
fn new_model(
    args: &TrainArgs,
    k_used: Option<usize>,
    tokenizer: &Tokenizer,
    device: &candle_core::Device,
) -> anyhow::Result<(serde_json::Value, TrainModel)> {
    let trainable = if args.train_decoder {
        Trainable::Decoder
    } else {
        Trainable::CrossAttention
    };
    Ok(match &args.init {
        Some(spec) => {
            let files = hub::model_files(spec)?;
            let text = std::fs::read_to_string(&files.config)?;
            let config = SmallCapConfig::from_json(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", files.config.display()))?;
            if let Some(size) = args.attention_size {
                let r = reduce_factor(size)?;
                if r != config.decoder.cross_attention_reduce_factor {
                    bail!(
                        "{spec}: the checkpoint's cross-attention has reduce factor {} (--attention-size {}), but --attention-size {size} asks for reduce factor {r}",
                        config.decoder.cross_attention_reduce_factor,
                        28.0 / config.decoder.cross_attention_reduce_factor as f64
                    );
                }
            }
            let sd = StateDict::load_file(&files.weights, &config, device)?;
            let json: serde_json::Value = serde_json::from_str(&text)?;
            (
                json,
                TrainModel::new(config, sd.tensors, trainable, false, device)?,
            )
        }
        None => {
            let r = reduce_factor(args.attention_size.unwrap_or(7.0))?;
            let enc = Pretrained::resolve(&args.encoder)?;
            let dec = Pretrained::resolve(&args.decoder)?;
            // train.py: tokenizer.pad_token = '!', tokenizer.eos_token = '.'.
            let ids = SpecialIds {
                eos: tokenizer.single_token(".")?,
                pad: tokenizer.single_token("!")?,
            };
            let (json, config, tensors) =
                from_pretrained(&enc, &dec, r, k_used, ids, args.seed, device)?;
            (
                json,
                TrainModel::new(config, tensors, trainable, true, device)?,
            )
        }
    })
}

/// Validation after each epoch on the `val` split of `val_path`.
fn validation(
    args: &TrainArgs,
    val_path: &std::path::Path,
    cfg: &SmallCapConfig,
    retrieved: &Option<RetrievedCaptions>,
    tokenizer: Tokenizer,
) -> anyhow::Result<Validation> {
    let val_ann = Annotations::from_file(val_path)?;
    let val_samples = val_ann.samples(&["val"])?;
    let val_retrieved = match (&args.val_retrieved, retrieved) {
        (Some(p), _) => Some(RetrievedCaptions::from_file(p)?),
        (None, r) => r.clone(),
    };
    let val_features = FeatureStore::open(args.val_features.as_ref().unwrap_or(&args.features))?;
    let ids: Vec<String> = val_ann.images_in(&["val"]).map(|im| im.key()).collect();
    val_features.check(
        ids.iter().map(String::as_str),
        cfg.encoder.num_positions(),
        cfg.encoder.hidden_size,
    )?;
    let (eos, pad) = (cfg.eos_token_id, cfg.pad_token_id);
    let val_data = TrainDataset::new(
        val_samples,
        val_retrieved.clone(),
        args.k,
        tokenizer.clone(),
        eos,
        pad,
    )?;
    Ok(Validation::new(
        val_data,
        val_features,
        ids,
        val_retrieved.as_ref(),
        args.k,
        tokenizer,
    )?)
}
