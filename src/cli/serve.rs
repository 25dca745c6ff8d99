//! `smallcap serve`: the HTTP API and web page (see [`smallcap::server`]) on one address.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use smallcap::pipeline::{Pipeline, PipelineOptions};
use smallcap::retrieval::NamedSpec;
use smallcap::server::{Server, ServerConfig};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    captioner: super::CaptionerArgs,
    /// A datastore to retrieve from, `[NAME=]SPEC` (repeatable; the first is the default): a
    /// folder, a FAISS index file (its captions beside it as <index>_captions.json, or
    /// INDEX,captions=FILE) or a `postgres://…?table=NAME` URL. The name defaults to the folder's,
    /// the index file's or the table's name.
    #[arg(long = "datastore", value_name = "[NAME=]SPEC")]
    datastores: Vec<String>,
    /// The retrieval encoder that embeds queries for the datastores: an OpenAI CLIP file (e.g.
    /// RN50x64.pt) or a HF CLIPModel folder / hub id (default: the one the first datastore
    /// records). Every datastore must have been built with it.
    #[arg(long)]
    retrieval_encoder: Option<String>,
    /// Where the networks run: cpu, or cuda[:N] in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: String,
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
    /// Largest `k` a request may ask for.
    #[arg(long, default_value_t = 32)]
    max_k: usize,
    /// Largest `beams` a request may ask for.
    #[arg(long, default_value_t = 8)]
    max_beams: usize,
    /// Largest `max_new_tokens` a request may ask for.
    #[arg(long, default_value_t = 100)]
    max_new_tokens: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Require `Authorization: Bearer KEY` on /v1/* (repeatable; also `$SMALLCAP_API_KEY`).
    /// /healthz, /readyz, / and /openapi.json stay open.
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    /// A file of API keys, one per line (blank lines and `#` comments skipped).
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<std::path::PathBuf>,
    /// Require a key for /metrics too.
    #[arg(long)]
    protect_metrics: bool,
    /// Answer CORS requests from this origin (repeatable; `*` for any). Without it no CORS
    /// header is sent.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
}

/// The API keys from `--api-key`, `$SMALLCAP_API_KEY` and `--api-key-file`.
fn api_keys(args: &ServeArgs) -> anyhow::Result<Vec<String>> {
    let mut keys = args.api_keys.clone();
    if let Ok(k) = std::env::var("SMALLCAP_API_KEY") {
        if !k.trim().is_empty() {
            keys.push(k);
        }
    }
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--api-key-file {}", path.display()))?;
        let from_file = smallcap::server::access::read_key_file(&text);
        if from_file.is_empty() {
            bail!("--api-key-file {}: no key in the file", path.display());
        }
        keys.extend(from_file);
    }
    Ok(keys)
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let at_least_one = [
        ("--max-batch", args.max_batch),
        ("--queue", args.queue),
        ("--max-images-per-request", args.max_images_per_request),
        ("--max-k", args.max_k),
        ("--max-beams", args.max_beams),
        ("--max-new-tokens", args.max_new_tokens),
    ];
    for (flag, v) in at_least_one {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    // Specs are checked before the server starts, so that a bad one fails the command at once.
    let specs = args
        .datastores
        .iter()
        .map(|s| NamedSpec::parse(s).with_context(|| format!("--datastore {s}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.name == s.name) {
            bail!(
                "two datastores are named \"{}\"; name them with --datastore NAME=SPEC",
                s.name
            );
        }
    }
    if specs.is_empty() && args.retrieval_encoder.is_some() {
        bail!("--retrieval-encoder needs at least one --datastore");
    }
    let device = super::device(&args.device)?;
    let keys = api_keys(&args)?;
    let access = smallcap::server::access::AccessPolicy::new(
        &keys,
        args.protect_metrics,
        args.cors_origins.clone(),
    )
    .map_err(|e| anyhow::anyhow!("--api-key: {e}"))?;
    if args.protect_metrics && keys.is_empty() {
        bail!(
            "--protect-metrics needs an API key (--api-key, $SMALLCAP_API_KEY or --api-key-file)"
        );
    }
    let config = ServerConfig {
        max_batch: args.max_batch,
        batch_wait: Duration::from_millis(args.batch_wait_ms),
        queue_capacity: args.queue,
        max_body_bytes: args.max_body_bytes,
        max_image_pixels: args.max_image_pixels,
        max_images_per_request: args.max_images_per_request,
        request_timeout: Duration::from_secs_f64(args.timeout),
        max_k: args.max_k,
        max_beams: args.max_beams,
        max_new_tokens: args.max_new_tokens,
        handle_signals: true,
        access,
    };
    let listener = std::net::TcpListener::bind(&args.addr)
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    if keys.is_empty() && !listener.local_addr()?.ip().is_loopback() {
        eprintln!(
            "smallcap serve: warning: listening on {} without an API key: anyone who can reach it can use the API (--api-key or $SMALLCAP_API_KEY)",
            args.addr
        );
    }
    let options = PipelineOptions {
        tokenizer: args.captioner.tokenizer.clone(),
        decoder_weights: args.captioner.decoder_weights,
        encoder_precision: args.captioner.encoder_precision,
        datastores: args.datastores.clone(),
        retrieval_encoder: args.retrieval_encoder.clone(),
        device,
        ..PipelineOptions::new(args.captioner.model.clone())
    };
    let server = Server::start(listener, config, move || Ok(Pipeline::load(&options)?))?;
    eprintln!(
        "smallcap serve: listening on http://{} (loading the model)",
        server.addr()
    );
    if let Err(e) = server.wait_ready() {
        let _ = server.shutdown();
        return Err(e.context(format!("cannot load {}", args.captioner.model)));
    }
    eprintln!("smallcap serve: ready");
    server.join()?;
    Ok(ExitCode::SUCCESS)
}
