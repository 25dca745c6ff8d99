//! `smallcap serve`'s HTTP server: the captioning API (`/v1/captions`, `/v1/captions/batch`,
//! `/v1/retrieve`, `/v1/datastores`), health and readiness probes, Prometheus metrics, the OpenAPI
//! description and the web page, over one shared [`Pipeline`](crate::pipeline::Pipeline)
//! whose forward passes are shared by concurrent requests (see [`batcher`]).
//!
//! This module owns the router, the shared state, the per-request middleware (request id, one
//! structured log line, metrics; API keys and CORS in [`access`]) and the server's life: bind, load the models on the batch
//! worker thread (`/readyz` answers 503 until they are loaded), serve, and shut down gracefully
//! (accepted requests are finished).
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use smallcap::server::{Server, ServerConfig};
//! use smallcap::{Pipeline, PipelineOptions};
//! let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smallcap-tiny");
//! // Port 0 picks a free port; a deployment binds e.g. 127.0.0.1:8080.
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let server = Server::start(listener, ServerConfig::default(), move || {
//!     Ok(Pipeline::load(&PipelineOptions {
//!         tokenizer: Some(format!("{fixture}/tokenizer")),
//!         ..PipelineOptions::new(format!("{fixture}/model"))
//!     })?)
//! })?;
//! server.wait_ready()?; // the model is loaded: POST /caption is served at server.addr()
//! println!("serving on http://{}", server.addr());
//! server.shutdown()?; // or server.join() to serve until stopped
//! # Ok(()) }
//! ```

pub mod access;
mod api;
pub(crate) mod batcher;
pub(crate) mod error;
pub(crate) mod metrics;
mod schema;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{mpsc, oneshot};

use crate::pipeline::Pipeline;
use crate::retrieval::DatastoreInfo;
pub use batcher::BatchPolicy;
use error::ErrorCode;
use metrics::{Gauges, Metrics};

/// Limits and batching.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Images per shared forward pass.
    pub max_batch: usize,
    /// The longest a request waits for others to share its forward pass.
    pub batch_wait: Duration,
    /// Jobs that may wait for the worker; more are refused with 503 + `Retry-After`.
    pub queue_capacity: usize,
    /// The largest request body.
    pub max_body_bytes: usize,
    /// The most pixels an uploaded image may have (checked from its header before decoding).
    pub max_image_pixels: u64,
    /// The most images in one `/v1/captions/batch` request (and texts in one `/v1/retrieve`).
    pub max_images_per_request: usize,
    /// From the request's arrival to its answer; past it: 408 while uploading, 504 after.
    pub request_timeout: Duration,
    /// The largest `k`.
    pub max_k: usize,
    /// The largest `beams`.
    pub max_beams: usize,
    /// The largest `max_new_tokens`.
    pub max_new_tokens: usize,
    /// Also stop on SIGINT and SIGTERM (the command does; tests stop through [`Server::shutdown`]).
    pub handle_signals: bool,
    /// API keys and CORS (default: open, no CORS).
    pub access: access::AccessPolicy,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            batch_wait: Duration::from_millis(10),
            queue_capacity: 64,
            max_body_bytes: 32 << 20,
            max_image_pixels: 40_000_000,
            max_images_per_request: 32,
            request_timeout: Duration::from_secs(60),
            max_k: 32,
            max_beams: 8,
            max_new_tokens: 100,
            handle_signals: false,
            access: access::AccessPolicy::default(),
        }
    }
}

/// What the handlers share.
pub(crate) struct AppState {
    config: ServerConfig,
    /// The pipeline, once loaded. Without datastores it serves only requests with
    /// `no_retrieval` or caller-given `captions`.
    models: OnceLock<Arc<Pipeline>>,
    /// The datastores, the default first (set with `models`).
    datastores: OnceLock<Vec<DatastoreInfo>>,
    queue: mpsc::Sender<batcher::Job>,
    metrics: Arc<Metrics>,
    /// Bounds concurrent image decoding to the number of cores.
    decode_permits: tokio::sync::Semaphore,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    /// Distinguishes this process's request ids from another's.
    id_prefix: String,
}

impl AppState {
    fn gauges(&self) -> Gauges {
        Gauges {
            queue_depth: self.queue.max_capacity() - self.queue.capacity(),
            queue_capacity: self.queue.max_capacity(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            ready: self.models.get().is_some(),
        }
    }
}

/// A request's id, also answered in the `x-request-id` header.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub String);

/// Stage timings a handler leaves in its response's extensions for the log line.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogTimings(pub String);

struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Request id, metrics and one log line per request.
async fn observe(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    state.in_flight.fetch_add(1, Ordering::Relaxed);
    let _guard = InFlight(&state.in_flight);
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}-{n:06}", state.id_prefix);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().clone();
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16();
    let seconds = start.elapsed().as_secs_f64();
    let code = resp.extensions().get::<ErrorCode>().map(|c| c.0);
    state.metrics.record_request(&route, status, seconds, code);
    let timings = resp
        .extensions()
        .get::<LogTimings>()
        .map(|t| t.0.clone())
        .unwrap_or_default();
    let total_ms = (seconds * 1e6).round() / 1e3;
    if status >= 500 {
        tracing::warn!(target: "smallcap::server", id, %method, route, status, total_ms, error = code.unwrap_or(""), timings, "request");
    } else {
        tracing::info!(target: "smallcap::server", id, %method, route, status, total_ms, error = code.unwrap_or(""), timings, "request");
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Refuses a declared body over the limit at once, before any of it is read (a client announcing
/// 2 GB gets 413 without the server waiting for, or buffering, the data).
async fn check_length(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared {
        if n > state.config.max_body_bytes as u64 {
            return api::too_large(n, state.config.max_body_bytes).into_response();
        }
    }
    next.run(req).await
}

fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/", get(api::index))
        .route("/openapi.json", get(api::openapi))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/v1/datastores", get(api::datastores))
        .route("/v1/captions", post(api::caption))
        .route("/v1/captions/batch", post(api::caption_batch))
        .route("/v1/retrieve", post(api::retrieve))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_length,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A running server.
pub struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    ready: std::sync::mpsc::Receiver<Result<(), String>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Serves on `listener` at once; `load` runs on the batch worker thread, and `/readyz` and
    /// the API answer 503 until it has returned.
    pub fn start(
        listener: std::net::TcpListener,
        config: ServerConfig,
        load: impl FnOnce() -> anyhow::Result<Pipeline> + Send + 'static,
    ) -> std::io::Result<Server> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("smallcap-http")
            .build()?;
        let (queue_tx, queue_rx) = mpsc::channel(config.queue_capacity.max(1));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let state = Arc::new(AppState {
            decode_permits: tokio::sync::Semaphore::new(cores),
            models: OnceLock::new(),
            datastores: OnceLock::new(),
            queue: queue_tx,
            metrics: Arc::new(Metrics::default()),
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            id_prefix: format!("{:08x}", std::process::id() ^ (addr.port() as u32) << 16),
            config,
        });

        // The batch worker: loads the models, then drains the queue until it is closed.
        let worker = {
            let state = state.clone();
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("smallcap-batcher".into())
                .spawn(move || {
                    let models = match load() {
                        Ok(m) => Arc::new(m),
                        Err(e) => {
                            tracing::error!("cannot load the models: {e:#}");
                            let _ = ready_tx.send(Err(format!("{e:#}")));
                            return;
                        }
                    };
                    let stores = models
                        .retriever()
                        .map(|r| r.datastores())
                        .unwrap_or_default();
                    let _ = state.datastores.set(stores);
                    let _ = state.models.set(models.clone());
                    let policy = BatchPolicy {
                        max_batch: state.config.max_batch.max(1),
                        batch_wait: state.config.batch_wait,
                    };
                    let metrics = state.metrics.clone();
                    drop(state);
                    let _ = ready_tx.send(Ok(()));
                    batcher::run(queue_rx, models, policy, metrics, handle);
                })?
        };

        let handle_signals = state.config.handle_signals;
        let thread = std::thread::Builder::new()
            .name("smallcap-server".into())
            .spawn(move || {
                let result = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let app = router(state);
                    let stop = async move {
                        if handle_signals {
                            tokio::select! {
                                _ = stop_rx => {}
                                _ = shutdown_signal() => {}
                            }
                        } else {
                            let _ = stop_rx.await;
                        }
                        tracing::info!("shutting down: finishing accepted requests");
                    };
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await
                });
                // The router (and with it every queue sender) is gone: the worker finishes the
                // jobs already queued and returns.
                let _ = worker.join();
                runtime.shutdown_timeout(Duration::from_secs(5));
                result
            })?;
        Ok(Server {
            addr,
            stop: Some(stop_tx),
            ready: ready_rx,
            thread: Some(thread),
        })
    }

    /// The address served.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Waits until the models are loaded, or returns why they could not be.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        match self.ready.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("{e}")),
            Err(_) => Err(anyhow::anyhow!(
                "the batch worker stopped while loading the models"
            )),
        }
    }

    /// Stops accepting connections, finishes the accepted requests, and waits for that.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join_thread()
    }

    /// Serves until stopped (by a signal when `handle_signals` is set).
    pub fn join(mut self) -> anyhow::Result<()> {
        self.join_thread()
    }

    fn join_thread(&mut self) -> anyhow::Result<()> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => Ok(r?),
            Some(Err(_)) => Err(anyhow::anyhow!("the server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.join_thread();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
