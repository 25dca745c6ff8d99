//! The HTTP handlers and their JSON: reading an upload (multipart form or a raw image body, with
//! parameters from the form fields or the query string), checking the parameters against the
//! limits and the loaded datastores, decoding the images (off the async runtime), handing the
//! work to the batch worker, and answering.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::Instant as TokioInstant;

use super::batcher::{CaptionOut, Job, Reply, Work, WorkTimings};
use super::error::ApiError;
use super::{AppState, DatastoreInfo, LogTimings, RequestId, ServerConfig};
use crate::pipeline::{DecodedImage, Pipeline, PromptSource};
use crate::GenerationConfig;
use smallcap_image::SourceImage;

const INDEX_HTML: &str = include_str!("index.html");

type Shared = State<Arc<AppState>>;

pub async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

pub async fn openapi(State(state): Shared) -> Response {
    Json(super::schema::document(&state)).into_response()
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): Shared) -> Response {
    if state.models.get().is_some() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        not_ready().into_response()
    }
}

pub async fn metrics(State(state): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&state.gauges()),
    )
        .into_response()
}

pub async fn datastores(State(state): Shared) -> Response {
    let Some(models) = state.models.get() else {
        return not_ready().into_response();
    };
    let stores = state.datastores.get().cloned().unwrap_or_default();
    Json(json!({
        "datastores": stores,
        "default": stores.first().map(|d| d.name.clone()),
        "k": models.captioner().model().config.k,
        "limits": {
            "max_k": state.config.max_k,
            "max_beams": state.config.max_beams,
            "max_new_tokens": state.config.max_new_tokens,
            "max_images_per_request": state.config.max_images_per_request,
            "max_body_bytes": state.config.max_body_bytes,
            "max_image_pixels": state.config.max_image_pixels,
        },
    }))
    .into_response()
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

fn not_ready() -> ApiError {
    ApiError::unavailable("not_ready", "the models are still loading", 5)
}

pub fn too_large(declared: u64, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is {declared} bytes; the limit is {limit} bytes"),
    )
}

/// What a request carried: images, query-string parameters and form fields, or a JSON body.
struct Upload {
    images: Vec<(String, Bytes)>,
    /// The query string's parameters, then the form's fields (from `form_from` on).
    fields: Vec<(String, String)>,
    form_from: usize,
    json: Option<Value>,
    read_ms: f64,
}

fn ms_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

fn body_error(e: axum::Error, limit: usize) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is over the limit of {limit} bytes"),
            );
        }
        source = s.source();
    }
    ApiError::bad_request(
        "body_read_failed",
        format!("the request body could not be read (did the client disconnect?): {e}"),
    )
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(status, "body_too_large", e.body_text());
    }
    if status.is_server_error() {
        // The body stream itself failed (it ended before its Content-Length, or the client
        // went away): the request's fault, not the server's, whatever status axum suggests.
        return ApiError::bad_request(
            "body_read_failed",
            format!(
                "the request body could not be read (shorter than its Content-Length, or the client disconnected): {}",
                e.body_text()
            ),
        );
    }
    ApiError::new(status, "invalid_multipart", e.body_text())
}

async fn read_upload(state: &AppState, req: Request, allow_json: bool) -> Result<Upload, ApiError> {
    let start = Instant::now();
    let limit = state.config.max_body_bytes;
    let mut fields: Vec<(String, String)> = Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?
        .0;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut images = Vec::new();
    let mut json = None;
    let form_from = fields.len();
    if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
        while let Some(field) = form.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or("").to_string();
            let file_name = field.file_name().map(str::to_string);
            if file_name.is_some() || name == "image" || name == "images" {
                let label = file_name.unwrap_or_else(|| format!("{name} {}", images.len() + 1));
                let bytes = field.bytes().await.map_err(multipart_error)?;
                images.push((label, bytes));
            } else {
                let text = field.text().await.map_err(multipart_error)?;
                fields.push((name, text));
            }
        }
    } else if content_type.starts_with("image/")
        || content_type.starts_with("application/octet-stream")
    {
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|e| body_error(e, limit))?;
        images.push(("body".to_string(), bytes));
    } else if allow_json && content_type.starts_with("application/json") {
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|e| body_error(e, limit))?;
        json = Some(serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
        })?);
    } else {
        let accepted = if allow_json {
            "multipart/form-data, image/*, application/octet-stream or application/json"
        } else {
            "multipart/form-data, image/* or application/octet-stream"
        };
        let got = if content_type.is_empty() {
            "no Content-Type".to_string()
        } else {
            format!("Content-Type {content_type}")
        };
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("{got}; send {accepted}"),
        ));
    }
    Ok(Upload {
        images,
        fields,
        form_from,
        json,
        read_ms: ms_since(start),
    })
}

/// The parameters of a caption or retrieval request.
#[derive(Debug, Default)]
struct Params {
    k: Option<usize>,
    beams: Option<usize>,
    max_new_tokens: Option<usize>,
    early_stopping: Option<bool>,
    no_retrieval: bool,
    datastore: Option<String>,
    captions: Vec<String>,
    texts: Vec<String>,
}

fn parse_usize(name: &str, v: &str) -> Result<usize, ApiError> {
    v.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_parameter",
            format!("{name} must be a non-negative integer, got \"{v}\""),
        )
    })
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ApiError> {
    match v.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request(
            "invalid_parameter",
            format!("{name} must be true or false, got \"{v}\""),
        )),
    }
}

/// The query string's parameters and the form's fields (those `allowed`). A parameter other
/// than a list (`captions`, `text`/`texts`) is given at most once in each; given in both, each
/// must be valid and the form's counts. Every value is checked against the server's limits.
fn parse_fields(upload: &Upload, allowed: &[&str], state: &AppState) -> Result<Params, ApiError> {
    let cfg = &state.config;
    let mut p = Params::default();
    let mut seen = std::collections::HashSet::new();
    for (i, (name, v)) in upload.fields.iter().enumerate() {
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!(
                    "unknown parameter \"{name}\" (known: {})",
                    allowed.join(", ")
                ),
            ));
        }
        let in_form = i >= upload.form_from;
        let list = matches!(name.as_str(), "captions" | "text" | "texts");
        if !list && !seen.insert((name.as_str(), in_form)) {
            let place = if in_form {
                "the form"
            } else {
                "the query string"
            };
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("{name} is given more than once in {place}"),
            ));
        }
        match name.as_str() {
            "k" => p.k = Some(check_range(name, parse_usize(name, v)?, cfg.max_k)?),
            "beams" => p.beams = Some(check_range(name, parse_usize(name, v)?, cfg.max_beams)?),
            "max_new_tokens" => {
                p.max_new_tokens = Some(check_range(
                    name,
                    parse_usize(name, v)?,
                    cfg.max_new_tokens,
                )?)
            }
            "early_stopping" => p.early_stopping = Some(parse_bool(name, v)?),
            "no_retrieval" => p.no_retrieval = parse_bool(name, v)?,
            "datastore" => p.datastore = Some(find_datastore(state, v)?.name.clone()),
            "captions" => p.captions.push(v.clone()),
            "text" | "texts" => p.texts.push(v.clone()),
            _ => unreachable!("checked against the allowed names"),
        }
    }
    Ok(p)
}

const CAPTION_FIELDS: &[&str] = &[
    "k",
    "beams",
    "max_new_tokens",
    "early_stopping",
    "no_retrieval",
    "datastore",
    "captions",
];
const RETRIEVE_FIELDS: &[&str] = &["k", "datastore", "text", "texts"];

/// A JSON retrieval body: `{"text" | "texts", "k", "datastore"}`.
fn parse_json_retrieve(v: &Value, cfg: &ServerConfig) -> Result<Params, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_parameter", m);
    let obj = v
        .as_object()
        .ok_or_else(|| bad("the JSON body must be an object".into()))?;
    if obj.contains_key("text") && obj.contains_key("texts") {
        return Err(bad("give text or texts, not both".into()));
    }
    let mut p = Params::default();
    for (name, v) in obj {
        match name.as_str() {
            "k" => {
                let k = v
                    .as_u64()
                    .ok_or_else(|| bad(format!("k must be a non-negative integer, got {v}")))?;
                p.k = Some(check_range(
                    "k",
                    usize::try_from(k).unwrap_or(usize::MAX),
                    cfg.max_k,
                )?)
            }
            "datastore" => {
                p.datastore = Some(
                    v.as_str()
                        .ok_or_else(|| bad(format!("datastore must be a string, got {v}")))?
                        .to_string(),
                )
            }
            "text" => p.texts.push(
                v.as_str()
                    .ok_or_else(|| bad(format!("text must be a string, got {v}")))?
                    .to_string(),
            ),
            "texts" => {
                let list = v
                    .as_array()
                    .ok_or_else(|| bad(format!("texts must be a list of strings, got {v}")))?;
                for t in list {
                    p.texts.push(
                        t.as_str()
                            .ok_or_else(|| {
                                bad(format!("texts must be a list of strings, got {t}"))
                            })?
                            .to_string(),
                    );
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown field \"{other}\" (known: text, texts, k, datastore)"
                )))
            }
        }
    }
    Ok(p)
}

fn models(state: &AppState) -> Result<&Arc<Pipeline>, ApiError> {
    state.models.get().ok_or_else(not_ready)
}

fn check_range(name: &str, v: usize, max: usize) -> Result<usize, ApiError> {
    if v == 0 || v > max {
        return Err(ApiError::bad_request(
            "parameter_out_of_range",
            format!("{name} = {v} is out of range: it must be between 1 and {max}"),
        ));
    }
    Ok(v)
}

/// The datastore a request names (or the default one), checked against those loaded, and the
/// `k` it answers: at most the server's `max_k` (refused above it), and no more than the
/// datastore's size (fewer rows give fewer captions, as the reference's `[:k]`).
fn choose_datastore(
    state: &AppState,
    models: &Pipeline,
    name: Option<&str>,
    k: Option<usize>,
) -> Result<(String, usize), ApiError> {
    let store = match name {
        Some(name) => find_datastore(state, name)?,
        None => state
            .datastores
            .get()
            .and_then(|stores| stores.first())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "no_datastore",
                    "no datastore is loaded: give captions, or no_retrieval=true",
                )
            })?,
    };
    let k = requested_k(state, models, k)?;
    Ok((store.name.clone(), k.min(store.size)))
}

/// The loaded datastore of this name.
fn find_datastore<'a>(state: &'a AppState, name: &str) -> Result<&'a DatastoreInfo, ApiError> {
    let stores = state.datastores.get().map(Vec::as_slice).unwrap_or(&[]);
    stores.iter().find(|d| d.name == name).ok_or_else(|| {
        let known: Vec<&str> = stores.iter().map(|d| d.name.as_str()).collect();
        ApiError::bad_request(
            "unknown_datastore",
            if known.is_empty() {
                format!("unknown datastore \"{name}\": no datastore is loaded")
            } else {
                format!("unknown datastore \"{name}\"; loaded: {}", known.join(", "))
            },
        )
    })
}

/// The request's `k` (default: the model's), refused outside 1..=`max_k`.
fn requested_k(state: &AppState, models: &Pipeline, k: Option<usize>) -> Result<usize, ApiError> {
    let max = state.config.max_k;
    check_range(
        "k",
        k.unwrap_or(models.captioner().model().config.k.min(max)),
        max,
    )
}

/// The prompt source, k and decoding settings of a caption request. The source is the first of:
/// `no_retrieval=true` (no captions), the given `captions`, the named (or default) datastore;
/// the parameters of the others are then unused, as the API document says.
fn plan(
    state: &AppState,
    models: &Pipeline,
    p: &Params,
) -> Result<(PromptSource, usize, GenerationConfig), ApiError> {
    let cfg = &state.config;
    let mut generation = models.captioner().default_generation();
    if let Some(b) = p.beams {
        generation.num_beams = check_range("beams", b, cfg.max_beams)?;
    }
    if let Some(n) = p.max_new_tokens {
        generation.max_new_tokens = check_range("max_new_tokens", n, cfg.max_new_tokens)?;
    }
    if let Some(e) = p.early_stopping {
        generation.early_stopping = e;
    }
    // Every parameter given is checked, used or not.
    let (name, k) = match (p.no_retrieval || !p.captions.is_empty(), &p.datastore) {
        (true, None) => (None, requested_k(state, models, p.k)?),
        (_, name) => {
            let (name, k) = choose_datastore(state, models, name.as_deref(), p.k)?;
            (Some(name), k)
        }
    };
    if p.no_retrieval {
        return Ok((PromptSource::NoRetrieval, 0, generation));
    }
    if !p.captions.is_empty() {
        let k = requested_k(state, models, p.k)?.min(p.captions.len());
        return Ok((PromptSource::Captions(p.captions.clone()), k, generation));
    }
    Ok((PromptSource::Datastore(name), k, generation))
}

/// An uploaded image: its captioning pixels and its retrieval query, as asked for.
type Decoded = (Option<candle_core::Tensor>, Option<Arc<SourceImage>>);

/// Decodes and preprocesses the images on the blocking pool (at most one per core at a time):
/// the pixel limit is checked from the header before any pixel is decoded.
async fn decode_images(
    state: &Arc<AppState>,
    models: &Arc<Pipeline>,
    images: Vec<(String, Bytes)>,
    for_captioning: bool,
    for_retrieval: bool,
) -> Result<Vec<Decoded>, ApiError> {
    let _permit = state
        .decode_permits
        .acquire()
        .await
        .map_err(|_| ApiError::internal("decoder closed"))?;
    let models = models.clone();
    let max_pixels = state.config.max_image_pixels;
    tokio::task::spawn_blocking(move || {
        images
            .into_iter()
            .map(|(name, bytes)| {
                let (w, h) =
                    smallcap_image::image_size(&bytes, &name).map_err(|e| ApiError::image(&e))?;
                if u64::from(w) * u64::from(h) > max_pixels {
                    return Err(ApiError::image(&smallcap_image::ImageError::TooLarge {
                        name,
                        width: w.into(),
                        height: h.into(),
                        limit: max_pixels,
                    }));
                }
                let src = smallcap_image::decode(&bytes, &name).map_err(|e| ApiError::image(&e))?;
                let src = Arc::new(src);
                if !for_captioning {
                    return Ok((None, for_retrieval.then_some(src)));
                }
                let d = models
                    .decoded(src, for_retrieval)
                    .map_err(|e| ApiError::from_library(&e))?;
                Ok((Some(d.pixel_values), d.source))
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::internal(format!("image decoding failed: {e}")))?
}

/// Queues work for the batch worker and waits for its answer until `deadline`.
async fn submit(
    state: &AppState,
    work: Work,
    deadline: TokioInstant,
) -> Result<(Reply, WorkTimings), ApiError> {
    let (tx, rx) = oneshot::channel();
    let job = Job {
        work,
        enqueued: Instant::now(),
        reply: tx,
    };
    state.queue.try_send(job).map_err(|e| match e {
        tokio::sync::mpsc::error::TrySendError::Full(_) => {
            state.metrics.record_rejected();
            ApiError::unavailable(
                "queue_full",
                format!(
                    "the server is busy ({} requests are waiting); retry later",
                    state.queue.max_capacity()
                ),
                1,
            )
        }
        tokio::sync::mpsc::error::TrySendError::Closed(_) => {
            ApiError::unavailable("shutting_down", "the server is shutting down", 1)
        }
    })?;
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(ApiError::internal(
            "the batch worker failed on this request's batch",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "no answer within the request timeout of {} ms",
                state.config.request_timeout.as_millis()
            ),
        )),
    }
}

/// Reads the upload before `deadline` (408 after it).
async fn read_before(
    state: &AppState,
    req: Request,
    allow_json: bool,
    deadline: TokioInstant,
) -> Result<Upload, ApiError> {
    match tokio::time::timeout_at(deadline, read_upload(state, req, allow_json)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request was not received within the request timeout",
        )),
    }
}

fn caption_json(out: &CaptionOut) -> Value {
    json!({
        "caption": out.caption,
        "retrieved_captions": out.retrieved_captions,
        "retrieval_scores": out.retrieved.as_ref().map(|r| &r.scores),
        "retrieved_ids": out.retrieved.as_ref().map(|r| &r.ids),
    })
}

fn respond(mut body: Value, id: &RequestId, timings: Value) -> Response {
    let log = timings
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    body["id"] = json!(id.0);
    body["timings_ms"] = timings;
    let mut resp = Json(body).into_response();
    resp.extensions_mut().insert(LogTimings(log));
    resp
}

async fn caption_inner(
    state: Arc<AppState>,
    id: RequestId,
    req: Request,
    batch: bool,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let deadline = TokioInstant::now() + state.config.request_timeout;
    let upload = read_before(&state, req, false, deadline).await?;
    let models = models(&state)?.clone();
    let p = parse_fields(&upload, CAPTION_FIELDS, &state)?;
    let (source, k, generation) = plan(&state, &models, &p)?;
    let n = upload.images.len();
    if n == 0 {
        return Err(ApiError::bad_request(
            "missing_image",
            "no image: send it as the body with an image Content-Type, or as a multipart file field \"image\"",
        ));
    }
    if !batch && n > 1 {
        return Err(ApiError::bad_request(
            "too_many_images",
            format!("{n} images sent; /v1/captions takes one (use /v1/captions/batch)"),
        ));
    }
    if n > state.config.max_images_per_request {
        return Err(ApiError::bad_request(
            "too_many_images",
            format!(
                "{n} images sent; the limit is {}",
                state.config.max_images_per_request
            ),
        ));
    }
    let names: Vec<String> = upload.images.iter().map(|(n, _)| n.clone()).collect();
    let t = Instant::now();
    let retrieving = matches!(source, PromptSource::Datastore(_));
    let images = decode_images(&state, &models, upload.images, true, retrieving)
        .await?
        .into_iter()
        .map(|(pixel_values, query)| {
            pixel_values
                .map(|pixel_values| DecodedImage {
                    pixel_values,
                    source: query,
                })
                .ok_or_else(|| ApiError::internal("an image was not preprocessed"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let decode_ms = ms_since(t);
    let datastore = match &source {
        PromptSource::Datastore(d) => d.clone(),
        _ => None,
    };
    let (reply, timings) = submit(
        &state,
        Work::Caption {
            images,
            source,
            k,
            generation,
        },
        deadline,
    )
    .await?;
    let Reply::Captions(outs) = reply else {
        return Err(ApiError::internal(
            "the worker answered a caption job with retrievals",
        ));
    };
    let timings_json = json!({
        "read": upload.read_ms,
        "decode": decode_ms,
        "queue": timings.queue,
        "retrieve": timings.retrieve,
        "caption": timings.caption,
        "total": ms_since(start),
    });
    let mut body = if batch {
        let results: Vec<Value> = outs
            .iter()
            .zip(&names)
            .map(|(o, name)| {
                let mut v = caption_json(o);
                v["image"] = json!(name);
                v
            })
            .collect();
        json!({"results": results})
    } else {
        caption_json(&outs[0])
    };
    body["datastore"] = json!(datastore);
    body["k"] = json!(k);
    body["batch_images"] = json!(timings.batch_images);
    Ok(respond(body, &id, timings_json))
}

pub async fn caption(
    State(state): Shared,
    Extension(id): Extension<RequestId>,
    req: Request,
) -> Response {
    caption_inner(state, id, req, false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn caption_batch(
    State(state): Shared,
    Extension(id): Extension<RequestId>,
    req: Request,
) -> Response {
    caption_inner(state, id, req, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn retrieve_inner(
    state: Arc<AppState>,
    id: RequestId,
    req: Request,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let deadline = TokioInstant::now() + state.config.request_timeout;
    let upload = read_before(&state, req, true, deadline).await?;
    let models = models(&state)?.clone();
    let mut p = match &upload.json {
        Some(v) => parse_json_retrieve(v, &state.config)?,
        None => parse_fields(&upload, RETRIEVE_FIELDS, &state)?,
    };
    if upload.json.is_some() && !upload.fields.is_empty() {
        // Query-string parameters with a JSON body.
        let q = parse_fields(&upload, RETRIEVE_FIELDS, &state)?;
        p.k = p.k.or(q.k);
        p.datastore = p.datastore.or(q.datastore);
        p.texts.extend(q.texts);
    }
    let (datastore, k) = choose_datastore(&state, &models, p.datastore.as_deref(), p.k)?;
    let n = upload.images.len() + p.texts.len();
    if n == 0 {
        return Err(ApiError::bad_request(
            "missing_query",
            "no query: send texts ({\"texts\": [...]}) or an image",
        ));
    }
    if !upload.images.is_empty() && !p.texts.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "send either texts or images in one request, not both",
        ));
    }
    if n > state.config.max_images_per_request {
        return Err(ApiError::bad_request(
            "too_many_queries",
            format!(
                "{n} queries sent; the limit is {}",
                state.config.max_images_per_request
            ),
        ));
    }
    let t = Instant::now();
    let (work, labels) = if p.texts.is_empty() {
        let names: Vec<String> = upload.images.iter().map(|(n, _)| n.clone()).collect();
        let images = decode_images(&state, &models, upload.images, false, true).await?;
        let queries = images.into_iter().filter_map(|(_, q)| q).collect();
        (
            Work::RetrieveImages {
                datastore: datastore.clone(),
                queries,
                k,
            },
            names,
        )
    } else {
        (
            Work::RetrieveTexts {
                datastore: datastore.clone(),
                texts: p.texts.clone(),
                k,
            },
            p.texts.clone(),
        )
    };
    let decode_ms = ms_since(t);
    let (reply, timings) = submit(&state, work, deadline).await?;
    let Reply::Retrieved(results) = reply else {
        return Err(ApiError::internal(
            "the worker answered a retrieval with captions",
        ));
    };
    let results: Vec<Value> = results
        .iter()
        .zip(labels)
        .map(|(r, q)| json!({"query": q, "ids": r.ids, "captions": r.captions, "scores": r.scores}))
        .collect();
    let timings_json = json!({
        "read": upload.read_ms,
        "decode": decode_ms,
        "queue": timings.queue,
        "retrieve": timings.retrieve,
        "total": ms_since(start),
    });
    Ok(respond(
        json!({"datastore": datastore, "k": k, "results": results}),
        &id,
        timings_json,
    ))
}

pub async fn retrieve(
    State(state): Shared,
    Extension(id): Extension<RequestId>,
    req: Request,
) -> Response {
    retrieve_inner(state, id, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
