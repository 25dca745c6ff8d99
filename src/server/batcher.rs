//! Dynamic batching: requests from many clients wait in a bounded queue; one worker thread (off
//! the async runtime) takes up to `max_batch` images' worth of jobs, waiting at most
//! `batch_wait` for more after the first, retrieves their captions per datastore in one call,
//! and captions all images that share decoding settings in one `Captioner::caption` call (one
//! encoder pass, every decoding step shared). Each job is answered through its own channel.
//! Jobs whose client has gone (timed out or disconnected) are skipped.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use candle_core::Tensor;
use tokio::sync::{mpsc, oneshot};

use super::datastores::{ImageQuery, Retrieved};
use super::error::ApiError;
use super::metrics::Metrics;
use super::Models;
use crate::captioner::{Prepared, Retrieval};
use crate::GenerationConfig;

/// Where a caption job's prompt captions come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptSource {
    /// The prompt without captions.
    NoRetrieval,
    /// Captions the client gave.
    Captions(Vec<String>),
    /// Retrieved from this datastore.
    Datastore(String),
}

/// One image of a caption job.
pub struct CaptionImage {
    /// `[3, size, size]` for the captioning encoder.
    pub pixel_values: Tensor,
    /// Present when the captions are retrieved.
    pub query: Option<ImageQuery>,
}

pub enum Work {
    Caption {
        images: Vec<CaptionImage>,
        source: PromptSource,
        k: usize,
        generation: GenerationConfig,
    },
    RetrieveImages {
        datastore: String,
        queries: Vec<ImageQuery>,
        k: usize,
    },
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
    pub reply: oneshot::Sender<Result<(Reply, WorkTimings), ApiError>>,
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
    models: Arc<Models>,
    policy: BatchPolicy,
    metrics: Arc<Metrics>,
    rt: tokio::runtime::Handle,
) {
    while let Some(first) = rx.blocking_recv() {
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
            n += job.work.images();
            jobs.push(job);
        }
        jobs.retain(|j| !j.reply.is_closed());
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

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A caption job being assembled.
struct Pending {
    reply: oneshot::Sender<Result<(Reply, WorkTimings), ApiError>>,
    timings: WorkTimings,
    generation: GenerationConfig,
    prepared: Vec<Prepared>,
    retrieved: Vec<Option<Retrieved>>,
}

fn process(jobs: Vec<Job>, models: &Models, metrics: &Metrics) {
    let start = Instant::now();
    let captioner = &models.captioner;
    let mut pending: Vec<Pending> = Vec::new();
    // Caption jobs that retrieve, grouped by (datastore, k): one retrieval call per group.
    let mut groups: Vec<((String, usize), Vec<usize>)> = Vec::new();
    let mut caption_jobs = Vec::new();
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
            } => {
                let t = Instant::now();
                let refs: Vec<&ImageQuery> = queries.iter().collect();
                let r = retrieval(models).and_then(|b| {
                    b.retrieve_images(&datastore, &refs, k)
                        .map_err(|e| ApiError::from_library(&e))
                });
                let timings = WorkTimings {
                    retrieve: ms(t.elapsed()),
                    ..timings
                };
                let _ = job.reply.send(r.map(|r| (Reply::Retrieved(r), timings)));
            }
            Work::RetrieveTexts {
                datastore,
                texts,
                k,
            } => {
                let t = Instant::now();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let r = retrieval(models).and_then(|b| {
                    b.retrieve_texts(&datastore, &refs, k)
                        .map_err(|e| ApiError::from_library(&e))
                });
                let timings = WorkTimings {
                    retrieve: ms(t.elapsed()),
                    ..timings
                };
                let _ = job.reply.send(r.map(|r| (Reply::Retrieved(r), timings)));
            }
            Work::Caption {
                images,
                source,
                k,
                generation,
            } => {
                if let PromptSource::Datastore(name) = &source {
                    let key = (name.clone(), k);
                    let i = caption_jobs.len();
                    match groups.iter_mut().find(|(g, _)| *g == key) {
                        Some((_, members)) => members.push(i),
                        None => groups.push((key, vec![i])),
                    }
                }
                caption_jobs.push((job.reply, timings, images, source, k, generation));
            }
        }
    }

    // Retrieval for the caption jobs.
    let mut retrieved: Vec<Option<Result<Vec<Retrieved>, ApiError>>> =
        (0..caption_jobs.len()).map(|_| None).collect();
    let mut retrieve_ms = vec![0.0; caption_jobs.len()];
    for ((datastore, k), members) in &groups {
        let t = Instant::now();
        let queries: Vec<&ImageQuery> = members
            .iter()
            .flat_map(|&i| caption_jobs[i].2.iter())
            .filter_map(|img| img.query.as_ref())
            .collect();
        let r = retrieval(models).and_then(|b| {
            b.retrieve_images(datastore, &queries, *k)
                .map_err(|e| ApiError::from_library(&e))
        });
        let took = ms(t.elapsed());
        match r {
            Ok(mut all) if all.len() == queries.len() => {
                for &i in members.iter().rev() {
                    let n = caption_jobs[i].2.len();
                    let tail = all.split_off(all.len() - n);
                    retrieved[i] = Some(Ok(tail));
                    retrieve_ms[i] = took;
                }
            }
            Ok(all) => {
                let e = ApiError::internal(format!(
                    "the retrieval backend answered {} results for {} queries",
                    all.len(),
                    queries.len()
                ));
                members
                    .iter()
                    .for_each(|&i| retrieved[i] = Some(Err(e.clone())));
            }
            Err(e) => members
                .iter()
                .for_each(|&i| retrieved[i] = Some(Err(e.clone()))),
        }
    }

    // Prompts.
    for (i, (reply, mut timings, images, source, k, generation)) in
        caption_jobs.into_iter().enumerate()
    {
        timings.retrieve = retrieve_ms[i];
        let per_image: Result<Vec<(Retrieval, Option<Retrieved>)>, ApiError> = match &source {
            PromptSource::NoRetrieval => {
                Ok(images.iter().map(|_| (Retrieval::None, None)).collect())
            }
            PromptSource::Captions(c) => Ok(images
                .iter()
                .map(|_| (Retrieval::Captions(c.clone()), None))
                .collect()),
            PromptSource::Datastore(_) => match retrieved[i].take() {
                Some(Ok(rs)) => Ok(rs
                    .into_iter()
                    .map(|r| (Retrieval::Captions(r.captions.clone()), Some(r)))
                    .collect()),
                Some(Err(e)) => Err(e),
                None => Err(ApiError::internal("retrieval did not run")),
            },
        };
        let prepared = per_image.and_then(|list| {
            images
                .into_iter()
                .zip(list)
                .map(|(img, (retrieval, r))| {
                    let kk = match &retrieval {
                        Retrieval::Captions(c) => k.min(c.len()),
                        Retrieval::None => k,
                    };
                    captioner
                        .prepare(img.pixel_values, retrieval, kk)
                        .map(|p| (p, r))
                        .map_err(|e| ApiError::from_library(&e))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        match prepared {
            Ok(items) => {
                let (prepared, retrieved) = items.into_iter().unzip();
                pending.push(Pending {
                    reply,
                    timings,
                    generation,
                    prepared,
                    retrieved,
                });
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    // One forward pass per set of decoding settings.
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
        let result = captioner.caption(&items, &generation);
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

fn retrieval(models: &Models) -> Result<&dyn super::datastores::RetrievalBackend, ApiError> {
    models.retrieval.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_datastore",
            "no datastore is loaded",
        )
    })
}
