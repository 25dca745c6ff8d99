//! The `smallcap` command line: argument parsing and dispatch to one module per subcommand.

mod caption;
mod datastore;
mod download;
mod eval;
mod features;
mod retrieve;
mod serve;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "smallcap",
    version,
    about = "SmallCap image captioning, faithful to the reference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption images (one JSON object per line on stdout).
    Caption(caption::CaptionArgs),
    /// Score captions with the COCO caption metrics (as pycocoevalcap; English: the PTB
    /// tokeniser and METEOR's synonyms and stemmer are English-only).
    Eval(eval::EvalArgs),
    /// Build and manage caption datastores.
    Datastore(datastore::DatastoreArgs),
    /// Retrieve datastore captions for images or texts (one JSON object per line on stdout).
    Retrieve(retrieve::RetrieveArgs),
    /// Compute image features for training (the vision tower's last hidden state per image).
    Features(features::FeaturesArgs),
    /// Train SmallCap's cross-attention on precomputed features.
    Train(train::TrainArgs),
    /// Serve captions over HTTP: a JSON API and a web page.
    Serve(serve::ServeArgs),
    /// Fetch a checkpoint, its tokenizer, retrieval encoder and datastores into the caches, to
    /// run offline afterwards.
    Download(download::DownloadArgs),
}

/// Runs the command line; the exit code is non-zero when anything failed.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SMALLCAP_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,smallcap::server=info")
            }),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Caption(args) => caption::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Datastore(args) => datastore::run(args),
        Command::Retrieve(args) => retrieve::run(args),
        Command::Features(args) => features::run(args),
        Command::Train(args) => train::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Download(args) => download::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The device to run on: the first CUDA GPU in a `cuda` build when one is present, else the CPU.
/// The captioning model of `caption` and `serve`.
#[derive(clap::Args)]
pub struct CaptionerArgs {
    /// A SmallCap checkpoint folder, or a hub id such as Yova/SmallCap7M.
    #[arg(long)]
    pub model: String,
    /// The decoder's tokenizer: a folder with vocab.json + merges.txt (and, for OPT, its
    /// tokenizer_config.json) or XGLM's sentencepiece.bpe.model, or a hub id (default: the model
    /// folder's own files, else the hub's gpt2, facebook/opt-125m for an OPT checkpoint,
    /// facebook/xglm-564M for an XGLM one).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// How the decoder's weights are kept in memory: f32 (the reference's results), f16 or bf16
    /// (half the memory read per decoding step), or int8 (symmetric per output channel, f32
    /// activations: a quarter); captions may differ slightly from f32's.
    #[arg(long, default_value = "f32", value_name = "f32|f16|bf16|int8")]
    pub decoder_weights: smallcap::WeightType,
    /// How the retrieval encoder's ResNet image tower computes: f32 (the reference's query
    /// embeddings), or bf16 (bf16 operands on AMX or AVX-512 BF16, f32 sums: about 4× faster;
    /// embeddings agree with f32's to about 1e-3, so a caption near a tie may be retrieved
    /// instead of another).
    #[arg(long, default_value = "f32", value_name = "f32|bf16")]
    pub encoder_precision: smallcap::EncoderPrecision,
}

pub fn device_or_cpu() -> anyhow::Result<candle_core::Device> {
    Ok(candle_core::Device::cuda_if_available(0)?)
}

/// `--device cpu|cuda[:N]`.
pub fn device(spec: &str) -> anyhow::Result<candle_core::Device> {
    Ok(smallcap::device::parse(spec)?)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so that a
/// failure never leaves a partial file behind ([`smallcap_util::fs::write_atomic`]).
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    smallcap_util::fs::write_atomic(path, bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// The image files of a folder, sorted by name.
pub fn list_images(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use anyhow::Context;
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

/// A progress bar on stderr for `len` items, hidden unless stderr is a terminal and there is
/// more than one item.
pub fn progress_bar(len: usize, unit: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if len > 1 && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(len as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  {{elapsed}} (eta {{eta}})"
            ))
            .expect("valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    }
}
