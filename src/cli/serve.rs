//! `smallcap serve`: the HTTP API and web page (see [`smallcap::server`]) on one address.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use candle_core::Device;
use clap::Args;

use std::sync::Arc;

use smallcap::captioner::Captioner;
use smallcap::models::packed_linear::WeightType;
use smallcap::retrieval::RetrievalEncoder;
use smallcap::server::datastores::{DatastoreSet, RetrievalBackend};
use smallcap::server::{Models, Server, ServerConfig};
use smallcap_datastore::Datastore;

#[derive(Args)]
pub struct ServeArgs {
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
    /// A datastore to retrieve from, `[NAME=]DIR` (repeatable; the first is the default; the
    /// name defaults to the folder's name).
    #[arg(long = "datastore", value_name = "[NAME=]DIR")]
    datastores: Vec<String>,
    /// The retrieval encoder that embeds queries for the datastores: an OpenAI CLIP file (e.g.
    /// RN50x64.pt) or a HF CLIPModel folder / hub id (default: the one the first datastore records).
    #[arg(long)]
    retrieval_encoder: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Images per shared forward pass.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Longest wait (ms) for other requests to share a forward pass.
    #[arg(long, default_value_t = 10)]
    batch_wait_ms: u64,
    /// Requests that may wait; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Most pixels (width × height) of an uploaded image.
    #[arg(long, default_value_t = 40_000_000)]
    max_image_pixels: u64,
    /// Most images in one batch request.
    #[arg(long, default_value_t = 32)]
    max_images_per_request: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

/// Opens each `[NAME=]DIR` (the name defaults to the folder's name), checking that names are
/// unique.
fn open_datastores(specs: &[String]) -> anyhow::Result<Vec<(String, Datastore)>> {
    let mut out: Vec<(String, Datastore)> = Vec::new();
    for spec in specs {
        let (name, dir) = match spec.split_once('=') {
            Some((name, dir)) if !name.is_empty() && !name.contains('/') => {
                (name.to_string(), PathBuf::from(dir))
            }
            _ => {
                let dir = PathBuf::from(spec);
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .with_context(|| {
                        format!("--datastore {spec}: no folder name; give NAME={spec}")
                    })?;
                (name, dir)
            }
        };
        if out.iter().any(|(n, _)| *n == name) {
            bail!("two datastores are named \"{name}\"; name them with --datastore NAME=DIR");
        }
        let store = Datastore::open(&dir).with_context(|| format!("--datastore {spec}"))?;
        out.push((name, store));
    }
    Ok(out)
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.max_batch == 0 || args.queue == 0 || args.max_images_per_request == 0 {
        bail!("--max-batch, --queue and --max-images-per-request must be at least 1");
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let stores = open_datastores(&args.datastores)?;
    if stores.is_empty() && args.retrieval_encoder.is_some() {
        bail!("--retrieval-encoder needs at least one --datastore");
    }
    let encoder_spec = match (&args.retrieval_encoder, stores.first()) {
        (Some(spec), _) => Some(spec.clone()),
        (None, Some((name, store))) => Some(
            RetrievalEncoder::spec_of_identity(&store.manifest().encoder)
                .with_context(|| {
                    format!(
                        "datastore \"{name}\" records the encoder {:?}, which is not loadable; give --retrieval-encoder",
                        store.manifest().encoder
                    )
                })?
                .to_string(),
        ),
        (None, None) => None,
    };
    let config = ServerConfig {
        max_batch: args.max_batch,
        batch_wait: Duration::from_millis(args.batch_wait_ms),
        queue_capacity: args.queue,
        max_body_bytes: args.max_body_bytes,
        max_image_pixels: args.max_image_pixels,
        max_images_per_request: args.max_images_per_request,
        request_timeout: Duration::from_secs_f64(args.timeout),
        handle_signals: true,
        ..ServerConfig::default()
    };
    let listener = std::net::TcpListener::bind(&args.addr)
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let (model, tokenizer) = (args.model.clone(), args.tokenizer.clone());
    let weights = args.decoder_weights;
    let server = Server::start(listener, config, move || {
        let captioner = Captioner::from_specs_with_weights(
            &model,
            tokenizer.as_deref(),
            &Device::Cpu,
            weights,
        )?;
        let retrieval: Option<Arc<dyn RetrievalBackend>> = match encoder_spec {
            Some(spec) => {
                let encoder = RetrievalEncoder::load(&spec, &Device::Cpu)?;
                Some(Arc::new(DatastoreSet::new(Arc::new(encoder), stores)?))
            }
            None => None,
        };
        Ok(Models {
            captioner,
            retrieval,
        })
    })?;
    eprintln!(
        "smallcap serve: listening on http://{} (loading the model)",
        server.addr()
    );
    if let Err(e) = server.wait_ready() {
        let _ = server.shutdown();
        return Err(e.context(format!("cannot load {}", args.model)));
    }
    eprintln!("smallcap serve: ready");
    server.join()?;
    Ok(ExitCode::SUCCESS)
}
