//! The training loop of the reference's `Seq2SeqTrainer` run: epochs over the (shuffled)
//! samples in batches, one HF AdamW update per batch with the linear schedule and clipping,
//! a checkpoint at the end of each epoch (and where `--steps` stops), validation after each
//! epoch, a progress bar and a log, and resuming from a checkpoint exactly where it stopped.
//!
//! A checkpoint folder `checkpoint-<step>` holds the hub layout (`config.json`,
//! `model.safetensors`, `pytorch_model.bin` with the reference's key names) plus
//! `optimizer.safetensors` (AdamW moments) and `trainer_state.json`. It is written as
//! `.checkpoint-<step>.partial` and renamed when complete, so a failed save (a full disk) leaves
//! the earlier checkpoints as they were and no partial folder.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::{expected_tensors, StateDict, LM_HEAD, PYTORCH_FILE, SAFETENSORS_FILE};
use crate::config::SmallCapConfig;
use crate::error::{Error, Result};
use crate::generation::{generate, GenerationConfig, Request};
use crate::models::Dropout;
use crate::prompt;
use crate::retrieved::RetrievedCaptions;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::train::dataset::IGNORE_INDEX;
use crate::train::features::FeatureStore;
use crate::train::model::{Batch, TrainModel, TrainPrecision, Trainable};
use crate::train::optimizer::{clip_grad_norm, linear_lr, AdamW, AdamWConfig};
use crate::train::TrainDataset;

/// The optimiser state beside each checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The run's progress beside each checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// One JSON line per logged step and epoch.
pub const LOG_FILE: &str = "train.log";
/// Validation captions of the last epoch.
pub const VAL_CAPTIONS_FILE: &str = "val_captions.json";

/// The run's settings, kept in `trainer_state.json` so that a resumed run uses the same.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainOptions {
    /// Passes over the training set.
    pub epochs: u64,
    /// Samples per update.
    pub batch_size: usize,
    /// Peak learning rate of the linear schedule.
    pub lr: f64,
    /// Length of the linear schedule (default: all steps of all epochs).
    pub total_steps: Option<u64>,
    /// Seed of the shuffling and the dropout.
    pub seed: u64,
    /// Whether each epoch visits the samples in a new random order.
    pub shuffle: bool,
    /// GPT-2's dropout probability while training.
    pub dropout: f32,
    /// Gradient-norm clipping (train.py: 1.0).
    pub max_grad_norm: f64,
    /// Train the whole decoder, not only the cross-attention.
    pub train_decoder: bool,
    /// Samples per forward and backward pass, gradients accumulated over the batch (`None`:
    /// the whole batch at once). Bounds memory; the update is the same.
    #[serde(default)]
    pub micro_batch: Option<usize>,
    /// How the frozen layers' products are computed (`f32` in states written before it was
    /// an option).
    #[serde(default)]
    pub precision: TrainPrecision,
}

impl Default for TrainOptions {
    /// train.py's settings.
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 64,
            lr: 1e-4,
            total_steps: None,
            seed: 42,
            shuffle: true,
            dropout: 0.1,
            max_grad_norm: 1.0,
            train_decoder: false,
            micro_batch: None,
            precision: TrainPrecision::F32,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
/// What `trainer_state.json` records: the settings and where the run is.
pub struct TrainerState {
    /// The run's settings.
    pub options: TrainOptions,
    /// Updates done.
    pub global_step: u64,
    /// Training samples.
    pub num_samples: usize,
    /// Whether the LM head is tied to `wte`.
    pub tied_lm_head: bool,
    /// Logged steps and epochs.
    pub log_history: Vec<Value>,
}

/// Validation after each epoch: loss on the validation samples (dropout off), captions of the
/// validation images (infer.py's beam search) written to `val_captions.json`, and their BLEU-4 and
/// CIDEr-D against the validation references (`smallcap-metrics`, as pycocoevalcap computes them).
pub struct Validation {
    /// Validation pairs.
    pub data: TrainDataset,
    /// Their encoder states.
    pub features: FeatureStore,
    /// Per image: its id and prompt captions (`None` without retrieval).
    pub images: Vec<(String, Option<Vec<String>>)>,
    /// Captions in each prompt.
    pub k: usize,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Decoding settings for the validation captions.
    pub generation: GenerationConfig,
}

impl Validation {
    /// Validation over `data`, with the prompts of `images`.
    pub fn new(
        data: TrainDataset,
        features: FeatureStore,
        image_ids: Vec<String>,
        retrieved: Option<&RetrievedCaptions>,
        k: usize,
        tokenizer: Tokenizer,
    ) -> Result<Self> {
        let images = image_ids
            .into_iter()
            .map(|id| {
                let caps = match retrieved {
                    Some(r) => Some(r.get(&id)?.to_vec()),
                    None => None,
                };
                Ok((id, caps))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            data,
            features,
            images,
            k,
            tokenizer,
            generation: GenerationConfig::default(),
        })
    }
}

/// What one epoch's validation found.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    /// Mean validation loss.
    pub loss: f64,
    /// The validation captions, `{"image_id", "caption"}`.
    pub captions: Vec<Value>,
    #[serde(rename = "Bleu_4")]
    /// BLEU-4 of the captions.
    pub bleu_4: f64,
    #[serde(rename = "CIDEr")]
    /// CIDEr-D of the captions.
    pub cider: f64,
}

/// The training loop: the model, AdamW, the data and the checkpoints (see the module documentation).
pub struct Trainer {
    /// The model trained.
    pub model: TrainModel,
    opt: AdamW,
    data: TrainDataset,
    features: FeatureStore,
    config_json: Value,
    /// Where the run is.
    pub state: TrainerState,
    out: PathBuf,
    device: Device,
    /// Validation after each epoch, when set.
    pub validation: Option<Validation>,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
    log: std::fs::File,
}

fn prepare_out(out: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(out).map_err(|e| {
        Error::Input(format!(
            "{}: cannot create the output folder: {e}",
            out.display()
        ))
    })?;
    let log = out.join(LOG_FILE);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| {
            Error::Input(format!(
                "{}: the output folder is not writable: {e}",
                log.display()
            ))
        })
}

impl Trainer {
    /// A new run. Checks that every training image has features of the model's shape.
    pub fn new(
        model: TrainModel,
        config_json: Value,
        data: TrainDataset,
        features: FeatureStore,
        options: TrainOptions,
        out: &Path,
        device: &Device,
    ) -> Result<Self> {
        let state = TrainerState {
            options,
            global_step: 0,
            num_samples: data.len(),
            tied_lm_head: model.tied_lm_head,
            log_history: Vec::new(),
        };
        Self::build(model, config_json, data, features, state, out, device)
    }

    fn build(
        mut model: TrainModel,
        config_json: Value,
        data: TrainDataset,
        features: FeatureStore,
        state: TrainerState,
        out: &Path,
        device: &Device,
    ) -> Result<Self> {
        let o = &state.options;
        if o.batch_size == 0 || o.epochs == 0 {
            return Err(Error::Input(
                "--batch-size and --epochs must be at least 1".into(),
            ));
        }
        if data.is_empty() {
            return Err(Error::Input("no training samples".into()));
        }
        let cfg = &model.config;
        features.check(
            data.samples.iter().map(|s| s.image.as_str()),
            cfg.encoder.num_positions(),
            cfg.encoder.hidden_size,
        )?;
        model.use_precision(o.precision)?;
        let log = prepare_out(out)?;
        let opt = AdamW::new(model.params.clone(), AdamWConfig::default())?;
        Ok(Self {
            model,
            opt,
            data,
            features,
            config_json,
            state,
            out: out.to_path_buf(),
            device: device.clone(),
            validation: None,
            progress: true,
            log,
        })
    }

    /// Continues the run saved in the checkpoint folder `dir` (its settings, weights, optimiser
    /// state and step), on the same data. `adjust` may change the settings that do not change
    /// the run's course (`micro_batch`, `precision`) before the model is built.
    pub fn resume(
        dir: &Path,
        data: TrainDataset,
        features: FeatureStore,
        out: &Path,
        device: &Device,
        adjust: impl FnOnce(&mut TrainOptions),
    ) -> Result<Self> {
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let mut state: TrainerState = serde_json::from_str(&text).map_err(|e| {
            Error::Input(format!(
                "{}: not a trainer state: {e}",
                state_path.display()
            ))
        })?;
        if state.num_samples != data.len() {
            return Err(Error::Input(format!(
                "{}: the run had {} training samples, these annotations give {}",
                state_path.display(),
                state.num_samples,
                data.len()
            )));
        }
        adjust(&mut state.options);
        let config_path = dir.join("config.json");
        let config_text =
            std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config_json: Value = serde_json::from_str(&config_text).map_err(|e| Error::Config {
            path: config_path.clone(),
            msg: e.to_string(),
        })?;
        let config = SmallCapConfig::from_json(&config_text)?;
        let sd = StateDict::load_file(&dir.join(SAFETENSORS_FILE), &config, device)?;
        let trainable = if state.options.train_decoder {
            Trainable::Decoder
        } else {
            Trainable::CrossAttention
        };
        let model = TrainModel::new(config, sd.tensors, trainable, state.tied_lm_head, device)?;
        let opt_path = dir.join(OPTIMIZER_FILE);
        let opt_tensors = candle_core::safetensors::load(&opt_path, device)
            .map_err(|e| Error::Input(format!("{}: {e}", opt_path.display())))?;
        let step = state.global_step;
        let mut trainer = Self::build(model, config_json, data, features, state, out, device)?;
        trainer
            .opt
            .load_state(&opt_tensors, step)
            .map_err(|msg| Error::Input(format!("{}: {msg}", opt_path.display())))?;
        Ok(trainer)
    }

    /// Updates per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.data.len().div_ceil(self.state.options.batch_size) as u64
    }

    /// The schedule's length.
    pub fn total_steps(&self) -> u64 {
        let o = &self.state.options;
        o.total_steps.unwrap_or(self.steps_per_epoch() * o.epochs)
    }

    /// Sample order of epoch `epoch`.
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        if self.state.options.shuffle {
            Rng::for_stream(self.state.options.seed, (1 << 48) | epoch).shuffle(&mut order);
        }
        order
    }

    /// The padded batch of samples `indices` (to the reference's length, or to the longest
    /// sample when one is longer: padding on the right does not change the loss).
    pub fn batch(
        data: &TrainDataset,
        features: &FeatureStore,
        indices: &[usize],
        device: &Device,
    ) -> Result<Batch> {
        let encoded = indices
            .iter()
            .map(|&i| data.encode(i))
            .collect::<Result<Vec<_>>>()?;
        let t = encoded
            .iter()
            .map(|e| e.input_ids.len())
            .max()
            .unwrap_or(0)
            .max(data.max_len);
        let pad = data.pad();
        let mut ids = Vec::with_capacity(indices.len() * t);
        let mut labels = Vec::with_capacity(indices.len() * t);
        for e in &encoded {
            ids.extend(&e.input_ids);
            ids.resize(ids.len() + t - e.input_ids.len(), pad);
            labels.extend(&e.labels);
            labels.resize(labels.len() + t - e.labels.len(), IGNORE_INDEX);
        }
        let images: Vec<&str> = indices
            .iter()
            .map(|&i| data.samples[i].image.as_str())
            .collect();
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, (indices.len(), t), device)?,
            labels,
            encoder_hidden: features.stack(&images, device)?,
        })
    }

    fn log_line(&mut self, entry: &Value) -> Result<()> {
        writeln!(self.log, "{entry}").map_err(|e| Error::io(&self.out.join(LOG_FILE), e))
    }

    /// Trains until the last epoch ends or `stop_at` updates are done; returns the checkpoint
    /// folders written.
    pub fn run(&mut self, stop_at: Option<u64>) -> Result<Vec<PathBuf>> {
        let spe = self.steps_per_epoch();
        let end = (spe * self.state.options.epochs).min(stop_at.unwrap_or(u64::MAX));
        let total = self.total_steps();
        let o = self.state.options.clone();
        let bar = if self.progress && std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(end.saturating_sub(self.state.global_step));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps {elapsed} (eta {eta})  {msg}",
                )
                .expect("valid template"),
            );
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut written = Vec::new();
        let mut order_epoch = u64::MAX;
        let mut order = Vec::new();
        while self.state.global_step < end {
            let g = self.state.global_step;
            let (epoch, i) = (g / spe, (g % spe) as usize);
            if epoch != order_epoch {
                order = self.order(epoch);
                order_epoch = epoch;
            }
            let bs = o.batch_size;
            let indices = &order[i * bs..((i + 1) * bs).min(order.len())];
            let t0 = Instant::now();
            let batch = Self::batch(&self.data, &self.features, indices, &self.device)?;
            let mut dropout = Dropout::new(o.dropout, o.seed, g, &self.device)?;
            let (loss_value, mut grads) =
                self.model
                    .loss_and_gradients(&batch, o.micro_batch, &mut dropout)?;
            if !loss_value.is_finite() {
                return Err(Error::Input(format!(
                    "the loss became {loss_value} at step {}",
                    g + 1
                )));
            }
            let grad_norm = clip_grad_norm(&mut grads, &self.model.params, o.max_grad_norm)?;
            let lr = linear_lr(o.lr, g, total);
            self.opt.step(&grads, lr)?;
            drop(grads);
            self.state.global_step = g + 1;
            let sps = indices.len() as f64 / t0.elapsed().as_secs_f64();
            let entry = serde_json::json!({
                "step": g + 1, "epoch": (g + 1) as f64 / spe as f64, "loss": loss_value,
                "learning_rate": lr, "grad_norm": grad_norm, "samples_per_second": sps,
            });
            self.log_line(&entry)?;
            bar.set_message(format!(
                "loss {loss_value:.4}  lr {lr:.3e}  {sps:.1} samples/s"
            ));
            bar.inc(1);
            let epoch_end = self.state.global_step.is_multiple_of(spe);
            if epoch_end || self.state.global_step == end {
                let report = if epoch_end { self.validate()? } else { None };
                if let Some(r) = &report {
                    let entry = serde_json::json!({"step": self.state.global_step, "epoch": self.state.global_step / spe, "val_loss": r.loss, "val_Bleu_4": r.bleu_4, "val_CIDEr": r.cider});
                    self.log_line(&entry)?;
                    self.state.log_history.push(entry);
                    bar.suspend(|| {
                        eprintln!(
                            "epoch {}: validation loss {:.4}, BLEU-4 {:.4}, CIDEr {:.4}",
                            self.state.global_step / spe,
                            r.loss,
                            r.bleu_4,
                            r.cider
                        )
                    });
                }
                self.state.log_history.push(entry);
                written.push(self.save(report.as_ref())?);
            }
        }
        bar.finish_and_clear();
        Ok(written)
    }

    /// Loss on the validation samples and captions of the validation images.
    pub fn validate(&self) -> Result<Option<ValidationReport>> {
        let Some(v) = &self.validation else {
            return Ok(None);
        };
        let bs = self.state.options.batch_size;
        let (mut sum, mut count) = (0f64, 0usize);
        let all: Vec<usize> = (0..v.data.len()).collect();
        for chunk in all.chunks(bs) {
            let batch = Self::batch(&v.data, &v.features, chunk, &self.device)?;
            let n = batch.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
            let loss = self.model.loss(&batch, &mut Dropout::off())?;
            sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * n as f64;
            count += n;
        }
        let mut captions = Vec::new();
        for chunk in v.images.chunks(bs) {
            let prompts = chunk
                .iter()
                .map(|(_, caps)| {
                    v.tokenizer
                        .encode(&prompt::prompt_text(caps.as_deref(), v.k))
                })
                .collect::<Result<Vec<_>>>()?;
            let requests = chunk
                .iter()
                .zip(&prompts)
                .map(|((id, _), p)| {
                    Ok(Request {
                        prompt_ids: p,
                        encoder_hidden_states: v.features.get(id, &self.device)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let generated = generate(&self.model.decoder, &requests, &v.generation)?;
            for (((id, _), p), ids) in chunk.iter().zip(&prompts).zip(generated) {
                let mut full = p.clone();
                full.extend(ids);
                let caption = v.tokenizer.caption(&full)?;
                let image_id: Value = id
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or(Value::from(id.clone()));
                captions.push(serde_json::json!({"image_id": image_id, "caption": caption}));
            }
        }
        let (bleu_4, cider) = Self::caption_scores(v, &captions)?;
        Ok(Some(ValidationReport {
            loss: if count > 0 {
                sum / count as f64
            } else {
                f64::NAN
            },
            captions,
            bleu_4,
            cider,
        }))
    }

    /// BLEU-4 and CIDEr-D of the validation captions against the validation samples' texts.
    fn caption_scores(v: &Validation, captions: &[Value]) -> Result<(f64, f64)> {
        use smallcap_metrics::{EvalOptions, GoldCaptions, ImageId, Metric, Prediction};
        let id = |s: &str| {
            s.parse::<i64>()
                .map(ImageId::Int)
                .unwrap_or(ImageId::Str(s.to_string()))
        };
        let mut refs: Vec<(ImageId, Vec<String>)> = Vec::new();
        for sample in &v.data.samples {
            let key = id(&sample.image);
            match refs.iter_mut().find(|(k, _)| *k == key) {
                Some((_, texts)) => texts.push(sample.text.clone()),
                None => refs.push((key, vec![sample.text.clone()])),
            }
        }
        let gold = GoldCaptions::from_pairs(refs);
        let preds: Vec<Prediction> = captions
            .iter()
            .map(|c| Prediction {
                image_id: match &c["image_id"] {
                    Value::Number(n) => ImageId::Int(n.as_i64().unwrap_or_default()),
                    other => ImageId::Str(other.as_str().unwrap_or_default().to_string()),
                },
                caption: c["caption"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        let opts = EvalOptions {
            metrics: vec![Metric::Bleu, Metric::Cider],
            ..EvalOptions::default()
        };
        let report = smallcap_metrics::evaluate_data(&gold, &preds, &opts)
            .map_err(|e| Error::Input(format!("validation metrics: {e}")))?;
        Ok((
            report.corpus.bleu_4.unwrap_or(f64::NAN),
            report.corpus.cider.unwrap_or(f64::NAN),
        ))
    }

    /// The checkpoint tensors in the reference's state-dict order.
    fn ordered_tensors(&self) -> Vec<(String, Tensor)> {
        let mut names: Vec<String> = expected_tensors(&self.model.config)
            .into_iter()
            .map(|t| t.name)
            .collect();
        names.push(LM_HEAD.to_string());
        names
            .into_iter()
            .filter_map(|n| self.model.tensors.get(&n).map(|t| (n, t.clone())))
            .collect()
    }

    /// Writes `checkpoint-<step>` atomically.
    pub fn save(&self, report: Option<&ValidationReport>) -> Result<PathBuf> {
        let name = format!("checkpoint-{}", self.state.global_step);
        let dir = self.out.join(&name);
        let partial = self.out.join(format!(".{name}.partial"));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        let result = (|| -> Result<()> {
            std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
            let write = |file: &str, bytes: &[u8]| -> Result<()> {
                let p = partial.join(file);
                std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
            };
            write("config.json", pretty(&self.config_json)?.as_bytes())?;
            let tensors = self.ordered_tensors();
            let cpu = tensors
                .iter()
                .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?)))
                .collect::<Result<Vec<_>>>()?;
            let st_path = partial.join(SAFETENSORS_FILE);
            candle_core::safetensors::save(&cpu.iter().cloned().collect(), &st_path)
                .map_err(|e| Error::Input(format!("cannot write {}: {e}", st_path.display())))?;
            // Keep tied tensors tied in the pickle (one storage), as in the reference.
            let mut same: std::collections::HashMap<candle_core::TensorId, Tensor> =
                Default::default();
            let pickled: Vec<(String, Tensor)> = tensors
                .iter()
                .zip(&cpu)
                .map(|((n, t), (_, c))| {
                    (
                        n.clone(),
                        same.entry(t.id()).or_insert_with(|| c.clone()).clone(),
                    )
                })
                .collect();
            let pickled = crate::checkpoint::with_reference_buffers(pickled, &self.model.config)?;
            crate::pytorch_writer::write_state_dict(&partial.join(PYTORCH_FILE), &pickled)?;
            let opt_path = partial.join(OPTIMIZER_FILE);
            let opt_state: std::collections::HashMap<String, Tensor> = self
                .opt
                .state_tensors()
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?)))
                .collect::<Result<_>>()?;
            candle_core::safetensors::save(&opt_state, &opt_path)
                .map_err(|e| Error::Input(format!("cannot write {}: {e}", opt_path.display())))?;
            if let Some(r) = report {
                write(
                    VAL_CAPTIONS_FILE,
                    pretty(&Value::from(r.captions.clone()))?.as_bytes(),
                )?;
            }
            let state =
                serde_json::to_value(&self.state).map_err(|e| Error::Input(e.to_string()))?;
            write(STATE_FILE, pretty(&state)?.as_bytes())?;
            // The weight writers create private (0600) temporary files; give every file the
            // permissions of a plainly written one (the umask's), so a checkpoint can be shared.
            let plain = std::fs::metadata(partial.join(STATE_FILE))
                .map_err(|e| Error::io(&partial, e))?
                .permissions();
            for entry in std::fs::read_dir(&partial).map_err(|e| Error::io(&partial, e))? {
                let path = entry.map_err(|e| Error::io(&partial, e))?.path();
                std::fs::set_permissions(&path, plain.clone()).map_err(|e| Error::io(&path, e))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::rename(&partial, &dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }
}

/// Pretty JSON text of a value.
fn pretty(v: &Value) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::Input(e.to_string()))
}
