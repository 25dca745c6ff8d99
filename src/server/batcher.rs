//! Dynamic batching: requests from many clients wait in a bounded queue; one worker thread (off
//! the async runtime) takes jobs until the next would take the batch past `max_batch` images
//! (a job with more runs alone), waiting at most `batch_wait` for more after the first, and hands
//! the caption jobs to [`Pipeline::prepare`] together (live retrieval batched per datastore),
//! then captions all images that share decoding settings in one forward pass (one encoder pass,
//! every decoding step shared). Each job is answered through its own channel. Jobs whose client
//! has gone (timed out or disconnected) are skipped.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use smallcap_image::SourceImage;
use tokio::sync::{mpsc, oneshot};

use super::error::ApiError;
use super::metrics::Metrics;
use crate::captioner::Prepared;
use crate::pipeline::{DecodedImage, Pipeline, PipelineItem, PromptSource};
use crate::retrieval::{Retrieved, Retriever};
use crate::GenerationConfig;

/// What a job asks for.
pub enum Work {
    /// Caption these images, each with the job's prompt source and k.
    Caption {
        images: Vec<DecodedImage>,
        source: PromptSource,
        k: usize,
        generation: GenerationConfig,
    },
    /// The k nearest captions of each image in `datastore`.
    RetrieveImages {
        datastore: String,
        queries: Vec<Arc<SourceImage>>,
        k: usize,
    },
    /// The k nearest captions of each text in `datastore`.
    RetrieveTexts {
        datastore: String,
        texts: Vec<String>,
        k: usize,
    },
}

impl Work {
    fn images(&self) -> usize {
        match self {
            Work::Caption { images, .. } => images.len(),
            Work::RetrieveImages { queries, .. } => queries.len(),
            Work::RetrieveTexts { .. } => 0,
        }
    }
}

/// One image's caption.
#[derive(Debug, Clone)]
pub struct CaptionOut {
    pub caption: String,
    pub retrieved_captions: Vec<String>,
    /// Ids and scores when the captions were retrieved from a datastore.
    pub retrieved: Option<Retrieved>,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkTimings {
    /// From entering the queue to the start of its batch.
    pub queue: f64,
    pub retrieve: f64,
    /// The shared forward pass (encoder and decoding) this job was part of.
    pub caption: f64,
    /// Images in that forward pass.
    #[serde(skip)]
    pub batch_images: usize,
}

pub enum Reply {
    Captions(Vec<CaptionOut>),
    Retrieved(Vec<Retrieved>),
}

pub struct Job {
    pub work: Work,
    pub enqueued: Instant,
    pub reply: ReplyTo,
}

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Images per forward pass (a job with more runs alone).
    pub max_batch: usize,
    /// The longest the first job of a batch waits for company.
    pub batch_wait: Duration,
}

/// The worker loop: returns when every sender is gone and the queue is drained.
pub fn run(
    mut rx: mpsc::Receiver<Job>,
    models: Arc<Pipeline>,
    policy: BatchPolicy,
    metrics: Arc<Metrics>,
    rt: tokio::runtime::Handle,
) {
    // A job that did not fit in the last batch starts the next one.
    let mut held: Option<Job> = None;
    while let Some(first) = held.take().or_else(|| rx.blocking_recv()) {
        let (jobs, next) = gather(first, &mut rx, policy, &rt);
        held = next;
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if jobs.is_empty() {
            continue;
        }
        // A panic answers the batch's jobs with 500 (their channels close) and the worker goes on.
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| process(jobs, &models, &metrics)));
        if r.is_err() {
            tracing::error!("the batch worker panicked; its batch was answered with 500");
        }
    }
}

/// A batch starting with `first`: more jobs while their images fit in `max_batch` and the
/// `batch_wait` deadline has not passed. The job that would overshoot is given back to start the
/// next batch.
fn gather(
    first: Job,
    rx: &mut mpsc::Receiver<Job>,
    policy: BatchPolicy,
    rt: &tokio::runtime::Handle,
) -> (Vec<Job>, Option<Job>) {
    let mut n = first.work.images();
    let mut jobs = vec![first];
    let deadline = Instant::now() + policy.batch_wait;
    while n < policy.max_batch {
        let next = match rx.try_recv() {
            Ok(job) => Some(job),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                let now = Instant::now();
                if now >= deadline {
                    None
                } else {
                    let wait = deadline - now;
                    rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await })
                        .ok()
                        .flatten()
                }
            }
        };
        let Some(job) = next else { break };
        if n + job.work.images() > policy.max_batch {
            return (jobs, Some(job));
        }
        n += job.work.images();
        jobs.push(job);
    }
    (jobs, None)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

type ReplyTo = oneshot::Sender<Result<(Reply, WorkTimings), ApiError>>;

/// A caption job whose prompts are ready.
struct Pending {
    reply: ReplyTo,
    timings: WorkTimings,
    generation: GenerationConfig,
    prepared: Vec<Prepared>,
    retrieved: Vec<Option<Retrieved>>,
}

/// A caption job waiting for its prompts.
struct CaptionJob {
    reply: ReplyTo,
    timings: WorkTimings,
    images: usize,
    /// Whether its captions are retrieved.
    retrieves: bool,
    generation: GenerationConfig,
}

fn process(jobs: Vec<Job>, models: &Pipeline, metrics: &Metrics) {
    let start = Instant::now();
    let mut caption_jobs = Vec::new();
    let mut items = Vec::new();
    for job in jobs {
        let timings = WorkTimings {
            queue: ms(start.duration_since(job.enqueued)),
            ..WorkTimings::default()
        };
        match job.work {
            Work::RetrieveImages {
                datastore,
                queries,
                k,
            } => answer_retrieval(job.reply, timings, || {
                let refs: Vec<&SourceImage> = queries.iter().map(Arc::as_ref).collect();
                retriever(models)?
                    .retrieve_images(Some(&datastore), &refs, k)
                    .map_err(|e| ApiError::from_library(&e))
            }),
            Work::RetrieveTexts {
                datastore,
                texts,
                k,
            } => answer_retrieval(job.reply, timings, || {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                retriever(models)?
                    .retrieve_texts(Some(&datastore), &refs, k)
                    .map_err(|e| ApiError::from_library(&e))
            }),
            Work::Caption {
                images,
                source,
                k,
                generation,
            } => {
                caption_jobs.push(CaptionJob {
                    reply: job.reply,
                    timings,
                    images: images.len(),
                    retrieves: matches!(source, PromptSource::Datastore(_)),
                    generation,
                });
                items.extend(images.into_iter().map(|image| PipelineItem {
                    image,
                    prompt: source.clone(),
                    k,
                }));
            }
        }
    }
    let pending = prepare(models, caption_jobs, items);
    caption(models, metrics, pending);
}

/// Runs a retrieval job and answers it.
fn answer_retrieval(
    reply: ReplyTo,
    timings: WorkTimings,
    f: impl FnOnce() -> Result<Vec<Retrieved>, ApiError>,
) {
    let t = Instant::now();
    let r = f();
    let timings = WorkTimings {
        retrieve: ms(t.elapsed()),
        ..timings
    };
    let _ = reply.send(r.map(|r| (Reply::Retrieved(r), timings)));
}

/// The prompts of every caption job's images in one [`Pipeline::prepare`] call; a job with a
/// failed image is answered with that image's error.
fn prepare(models: &Pipeline, jobs: Vec<CaptionJob>, items: Vec<PipelineItem>) -> Vec<Pending> {
    let retrieving = items
        .iter()
        .any(|i| matches!(i.prompt, PromptSource::Datastore(_)));
    if retrieving && models.retriever().is_none() {
        for job in jobs {
            let _ = job.reply.send(Err(no_datastore()));
        }
        return Vec::new();
    }
    let t = Instant::now();
    let mut results = models.prepare(items).into_iter();
    let retrieve_ms = if retrieving { ms(t.elapsed()) } else { 0.0 };
    let mut pending = Vec::new();
    for job in jobs {
        let mine: Result<Vec<_>, _> = results.by_ref().take(job.images).collect();
        match mine {
            Ok(list) => {
                let (prepared, retrieved) = list.into_iter().unzip();
                let mut timings = job.timings;
                if job.retrieves {
                    timings.retrieve = retrieve_ms;
                }
                pending.push(Pending {
                    reply: job.reply,
                    timings,
                    generation: job.generation,
                    prepared,
                    retrieved,
                });
            }
            Err(e) => {
                let _ = job.reply.send(Err(ApiError::from_library(&e)));
            }
        }
    }
    pending
}

/// One forward pass per set of decoding settings.
fn caption(models: &Pipeline, metrics: &Metrics, mut pending: Vec<Pending>) {
    while !pending.is_empty() {
        let generation = pending[0].generation.clone();
        let (same, rest): (Vec<Pending>, Vec<Pending>) = pending
            .into_iter()
            .partition(|p| p.generation == generation);
        pending = rest;
        let items: Vec<Prepared> = same
            .iter()
            .flat_map(|p| p.prepared.iter().cloned())
            .collect();
        let t = Instant::now();
        let result = models.caption_prepared(&items, &generation);
        let took = ms(t.elapsed());
        metrics.record_batch(items.len());
        match result {
            Ok(mut captions) => {
                for p in same.into_iter().rev() {
                    let mine = captions.split_off(captions.len() - p.prepared.len());
                    let out = mine
                        .into_iter()
                        .zip(p.retrieved)
                        .map(|(c, retrieved)| CaptionOut {
                            caption: c.caption,
                            retrieved_captions: c.retrieved_captions,
                            retrieved,
                        })
                        .collect();
                    let timings = WorkTimings {
                        caption: took,
                        batch_images: items.len(),
                        ..p.timings
                    };
                    let _ = p.reply.send(Ok((Reply::Captions(out), timings)));
                }
            }
            Err(e) => {
                let e = ApiError::from_library(&e);
                for p in same {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn no_datastore() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "no_datastore",
        "no datastore is loaded",
    )
}

fn retriever(models: &Pipeline) -> Result<&Retriever, ApiError> {
    models.retriever().ok_or_else(no_datastore)
}
