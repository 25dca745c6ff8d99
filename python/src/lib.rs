//! `smallcap._native`: the Rust engine for Python, a thin PyO3 layer over the library's
//! [`Pipeline`], datastores and metrics. The public Python API (`smallcap/__init__.py`) turns
//! Python inputs (paths, bytes, PIL images, numpy arrays, caption lists) into the plain values
//! these functions take, and their results into dicts.
//!
//! Every long call runs with the GIL released, on a worker thread, while the calling thread
//! polls for signals: a Ctrl-C raises `KeyboardInterrupt` at once (the worker's result is then
//! dropped). Errors become `FileNotFoundError` (a missing file), `ValueError` (bad input: images,
//! configs, checkpoints, tokenizers, datastores, arguments) or `RuntimeError`, with the
//! library's message.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use smallcap::retrieval::build::{
    add_to_datastore, build_datastore, BuildOptions, DEFAULT_BATCH_SIZE,
};
use smallcap::retrieval::{CaptionStore, RetrievalEncoder};
use smallcap::{
    EncoderPrecision, Error, GenerationConfig, ImageInput, Pipeline, PipelineCaption,
    PipelineOptions, PromptSource, Retrieved, WeightType,
};
use smallcap_datastore::{CaptionRecord, Datastore, Dtype};

/// The Python exception for a library error.
fn py_err(e: Error) -> PyErr {
    match e {
        Error::Shared(inner) => match Arc::try_unwrap(inner) {
            Ok(e) => py_err(e),
            Err(shared) => message_err(&shared, shared.to_string()),
        },
        e => {
            let msg = e.to_string();
            message_err(&e, msg)
        }
    }
}

fn message_err(e: &Error, msg: String) -> PyErr {
    match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        Error::Image(smallcap_image::ImageError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            PyFileNotFoundError::new_err(msg)
        }
        Error::Shared(inner) => message_err(inner, msg),
        Error::Candle(_) | Error::Interrupted(_) | Error::Hub(_) => PyRuntimeError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

/// Runs `work` on a worker thread with the GIL released, raising `KeyboardInterrupt` (or any
/// other pending signal's exception) as soon as one arrives.
fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    work: impl FnOnce() -> smallcap::Result<T> + Send + 'static,
) -> PyResult<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("smallcap".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start a worker thread: {e}")))?;
    let mut rx = rx;
    loop {
        let (received, back) = py.detach(move || (rx.recv_timeout(Duration::from_millis(50)), rx));
        rx = back;
        match received {
            Ok(result) => return result.map_err(py_err),
            Err(mpsc::RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err("the worker thread panicked"))
            }
        }
    }
}

/// An image as the Python layer passes it: `("path", str)`, `("bytes", bytes)` or
/// `("rgb", bytes, height, width)` (row-major `H×W×3` uint8).
fn image_input(item: &Bound<'_, PyAny>) -> PyResult<ImageInput> {
    let kind: String = item.get_item(0)?.extract()?;
    match kind.as_str() {
        "path" => Ok(ImageInput::Path(item.get_item(1)?.extract::<PathBuf>()?)),
        "bytes" => {
            let bytes: Vec<u8> = item.get_item(1)?.extract()?;
            Ok(ImageInput::Bytes {
                name: "<bytes>".into(),
                bytes: bytes.into(),
            })
        }
        "rgb" => {
            let bytes: Vec<u8> = item.get_item(1)?.extract()?;
            let (h, w): (u32, u32) = (item.get_item(2)?.extract()?, item.get_item(3)?.extract()?);
            let pixels = u64::from(h) * u64::from(w);
            if h == 0 || w == 0 || pixels > smallcap_image::MAX_PIXELS {
                return Err(PyValueError::new_err(format!(
                    "image array of {h}×{w} pixels: must be non-empty and at most {} pixels",
                    smallcap_image::MAX_PIXELS
                )));
            }
            if bytes.len() as u64 != pixels * 3 {
                return Err(PyValueError::new_err(format!(
                    "image array: {} bytes for {h}×{w}×3",
                    bytes.len()
                )));
            }
            let rgb = smallcap_image::RgbImage::from_raw(w, h, bytes)
                .ok_or_else(|| PyValueError::new_err("image array: wrong size"))?;
            Ok(ImageInput::Image(Arc::new(
                smallcap_image::SourceImage::from(rgb),
            )))
        }
        other => Err(PyValueError::new_err(format!(
            "unknown image kind {other:?}"
        ))),
    }
}

fn images(items: &Bound<'_, PyList>) -> PyResult<Vec<ImageInput>> {
    items.iter().map(|i| image_input(&i)).collect()
}

fn retrieved_dict<'py>(py: Python<'py>, r: &Retrieved) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("ids", &r.ids)?;
    d.set_item("scores", &r.scores)?;
    d.set_item("captions", &r.captions)?;
    Ok(d)
}

fn caption_dict<'py>(py: Python<'py>, c: &PipelineCaption) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("caption", &c.caption)?;
    d.set_item("generated_ids", &c.generated_ids)?;
    d.set_item("prompt_ids", &c.prompt_ids)?;
    d.set_item("retrieved_captions", &c.retrieved_captions)?;
    d.set_item(
        "retrieval_scores",
        c.retrieved.as_ref().map(|r| r.scores.clone()),
    )?;
    Ok(d)
}

/// A loaded SmallCap pipeline (checkpoint, tokenizer, retrieval encoder, datastores), safe to
/// share between Python threads.
#[pyclass(frozen, module = "smallcap._native")]
struct Model {
    pipeline: Arc<Pipeline>,
}

#[pymethods]
impl Model {
    /// Loads a checkpoint folder or hub id with its tokenizer and datastores (`[NAME=]SPEC`).
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (model, tokenizer, datastores, retrieval_encoder, decoder_weights, encoder_precision, device))]
    fn new(
        py: Python<'_>,
        model: String,
        tokenizer: Option<String>,
        datastores: Vec<String>,
        retrieval_encoder: Option<String>,
        decoder_weights: &str,
        encoder_precision: &str,
        device: &str,
    ) -> PyResult<Self> {
        let decoder_weights: WeightType = decoder_weights.parse().map_err(PyValueError::new_err)?;
        let encoder_precision: EncoderPrecision =
            encoder_precision.parse().map_err(PyValueError::new_err)?;
        let device = smallcap::device::parse(device).map_err(py_err)?;
        let opts = PipelineOptions {
            tokenizer,
            decoder_weights,
            encoder_precision,
            datastores,
            retrieval_encoder,
            device,
            ..PipelineOptions::new(model)
        };
        let pipeline = interruptible(py, move || Pipeline::load(&opts))?;
        Ok(Self {
            pipeline: Arc::new(pipeline),
        })
    }

    /// The names of the loaded datastores, the default first.
    fn datastores(&self) -> Vec<String> {
        self.pipeline
            .retriever()
            .map(|r| r.datastores().into_iter().map(|d| d.name).collect())
            .unwrap_or_default()
    }

    /// The checkpoint's eos and pad ids.
    fn special_ids(&self) -> (u32, u32) {
        let g = self.pipeline.default_generation();
        (g.eos_token_id, g.pad_token_id)
    }

    /// Captions `images`; `prompts[i]` is `None` (the datastore `datastore`, or the default),
    /// `False` (no retrieval) or a list of captions. Returns one dict per image, or raises the
    /// first image's error (naming its index).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (images, prompts, datastore, k, num_beams, max_new_tokens, early_stopping, length_penalty))]
    fn caption<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyList>,
        prompts: &Bound<'py, PyList>,
        datastore: Option<String>,
        k: usize,
        num_beams: usize,
        max_new_tokens: usize,
        early_stopping: bool,
        length_penalty: f64,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let inputs = self::images(images)?;
        if prompts.len() != inputs.len() {
            return Err(PyValueError::new_err(format!(
                "{} prompts for {} images",
                prompts.len(),
                inputs.len()
            )));
        }
        let mut items = Vec::with_capacity(inputs.len());
        for (image, p) in inputs.into_iter().zip(prompts.iter()) {
            let prompt = if p.is_none() {
                PromptSource::Datastore(datastore.clone())
            } else if let Ok(false) = p.extract::<bool>() {
                PromptSource::NoRetrieval
            } else {
                PromptSource::Captions(p.extract::<Vec<String>>()?)
            };
            items.push((image, prompt, k));
        }
        let generation = GenerationConfig {
            num_beams,
            max_new_tokens,
            early_stopping,
            length_penalty,
            ..self.pipeline.default_generation()
        };
        let pipeline = self.pipeline.clone();
        let out = interruptible(py, move || pipeline.caption_each(items, &generation))?;
        out.into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Ok(c) => caption_dict(py, &c),
                Err(e) => {
                    let err = py_err(e);
                    let msg = format!("image {i}: {}", err.value(py));
                    Err(PyErr::from_type(err.get_type(py), msg))
                }
            })
            .collect()
    }

    /// The top-k captions of each image (`images`) or text (`texts`) in `datastore`.
    #[pyo3(signature = (images, texts, k, datastore))]
    fn retrieve<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyList>,
        texts: Vec<String>,
        k: usize,
        datastore: Option<String>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let inputs = self::images(images)?;
        let pipeline = self.pipeline.clone();
        let found = interruptible(py, move || {
            let r = pipeline
                .retriever()
                .ok_or_else(|| Error::Input("no datastore is loaded".into()))?;
            let decoded = inputs
                .iter()
                .map(|i| pipeline.retrieval_query(i))
                .collect::<smallcap::Result<Vec<_>>>()?;
            let queries: Vec<&smallcap_image::SourceImage> =
                decoded.iter().map(|s| s.as_ref()).collect();
            let mut out = r.retrieve_images(datastore.as_deref(), &queries, k)?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            out.extend(r.retrieve_texts(datastore.as_deref(), &refs, k)?);
            Ok(out)
        })?;
        found.iter().map(|r| retrieved_dict(py, r)).collect()
    }
}

/// A caption datastore opened from a spec (our folder, a FAISS file, a pgvector table).
#[pyclass(frozen, module = "smallcap._native")]
struct Store {
    store: Arc<CaptionStore>,
    spec: String,
}

/// Captions from a file (text lines, JSON list, COCO, Karpathy) or a list of strings.
fn caption_records(
    path: Option<PathBuf>,
    texts: Option<Vec<String>>,
) -> smallcap::Result<Vec<CaptionRecord>> {
    let records = match (path, texts) {
        (Some(p), None) => smallcap_datastore::captions::read_captions(&p, None)?,
        (None, Some(t)) => t
            .into_iter()
            .map(|text| CaptionRecord {
                text,
                image_id: None,
            })
            .collect(),
        _ => return Err(Error::Input("give captions as a file or a list".into())),
    };
    if records.is_empty() {
        return Err(Error::Input("no captions to encode".into()));
    }
    Ok(records)
}

#[pymethods]
impl Store {
    /// Opens the store `spec` names.
    #[new]
    fn new(py: Python<'_>, spec: String) -> PyResult<Self> {
        let s = spec.clone();
        let store = interruptible(py, move || CaptionStore::open(&s))?;
        Ok(Self {
            store: Arc::new(store),
            spec,
        })
    }

    /// Builds a new datastore folder `out` from captions encoded by `encoder`.
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (out, encoder, path, texts, batch_size, f16, encoder_precision, device))]
    fn build(
        py: Python<'_>,
        out: PathBuf,
        encoder: String,
        path: Option<PathBuf>,
        texts: Option<Vec<String>>,
        batch_size: Option<usize>,
        f16: bool,
        encoder_precision: &str,
        device: &str,
    ) -> PyResult<Self> {
        let precision: EncoderPrecision =
            encoder_precision.parse().map_err(PyValueError::new_err)?;
        let device = smallcap::device::parse(device).map_err(py_err)?;
        let spec = out.to_string_lossy().to_string();
        interruptible(py, move || {
            let caps = caption_records(path, texts)?;
            let enc = RetrievalEncoder::load_for_texts(&encoder, &device, precision)?;
            let opts = BuildOptions {
                batch_size: batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
                dtype: if f16 { Dtype::F16 } else { Dtype::F32 },
                stop_after_batches: None,
            };
            build_datastore(&enc, &caps, &out, &opts, |_, _| {})?;
            Ok(())
        })?;
        Self::new(py, spec)
    }

    /// Adds captions to the datastore folder `dir` (with its recorded encoder unless one is
    /// given) and reopens it.
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (dir, encoder, path, texts, batch_size, encoder_precision, device))]
    fn add(
        py: Python<'_>,
        dir: PathBuf,
        encoder: Option<String>,
        path: Option<PathBuf>,
        texts: Option<Vec<String>>,
        batch_size: Option<usize>,
        encoder_precision: &str,
        device: &str,
    ) -> PyResult<Self> {
        let precision: EncoderPrecision =
            encoder_precision.parse().map_err(PyValueError::new_err)?;
        let device = smallcap::device::parse(device).map_err(py_err)?;
        let spec = dir.to_string_lossy().to_string();
        interruptible(py, move || {
            let ds = Datastore::open(&dir)?;
            let spec = match encoder {
                Some(s) => s,
                None => smallcap::retrieval::build::recorded_encoder_spec(&ds)?,
            };
            let enc = RetrievalEncoder::load_for_texts(&spec, &device, precision)?;
            let caps = caption_records(path, texts)?;
            let opts = BuildOptions {
                batch_size: batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
                dtype: ds.dtype(),
                stop_after_batches: None,
            };
            add_to_datastore(&enc, ds, &caps, &opts, |_, _| {})?;
            Ok(())
        })?;
        Self::new(py, spec)
    }

    /// The store's manifest (our folders, pgvector) or its size and dimension, as JSON.
    fn info(&self) -> PyResult<String> {
        let v = match self.store.manifest() {
            Some(m) => {
                serde_json::to_value(m).map_err(|e| PyRuntimeError::new_err(e.to_string()))?
            }
            None => serde_json::json!({
                "format": "faiss",
                "location": self.store.location(),
                "count": self.store.len(),
                "dim": self.store.dim(),
            }),
        };
        Ok(v.to_string())
    }

    /// Rows, embedding dimension, and the spec it was opened from.
    fn shape(&self) -> (usize, usize, String) {
        (self.store.len(), self.store.dim(), self.spec.clone())
    }

    /// Top-k (ids, scores, captions) of `n` row-major f32 queries (`queries`, little-endian
    /// bytes) of the store's dimension.
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: Vec<u8>,
        n: usize,
        k: usize,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let dim = self.store.dim();
        if queries.len() != n * dim * 4 {
            return Err(PyValueError::new_err(format!(
                "queries: {} bytes for {n} rows of {dim} float32",
                queries.len()
            )));
        }
        let rows: Vec<f32> = queries
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let store = self.store.clone();
        let found = interruptible(py, move || {
            let hits = store.search(&rows, k)?;
            hits.into_iter()
                .map(|h| {
                    let (ids, scores): (Vec<i64>, Vec<f32>) = h.into_iter().unzip();
                    let captions = ids
                        .iter()
                        .map(|&id| Ok(store.caption(id)?.text))
                        .collect::<smallcap::Result<Vec<_>>>()?;
                    Ok(Retrieved {
                        ids,
                        scores,
                        captions,
                    })
                })
                .collect::<smallcap::Result<Vec<_>>>()
        })?;
        found.iter().map(|r| retrieved_dict(py, r)).collect()
    }
}

/// `smallcap eval --json` of a COCO annotations file and a results file.
#[pyfunction]
#[pyo3(signature = (gold, pred, spice, meteor))]
fn evaluate(
    py: Python<'_>,
    gold: PathBuf,
    pred: PathBuf,
    spice: bool,
    meteor: bool,
) -> PyResult<String> {
    use smallcap_metrics::{EvalOptions, Metric};
    interruptible(py, move || {
        let mut opts = EvalOptions::default();
        opts.metrics
            .retain(|m| (spice || *m != Metric::Spice) && (meteor || *m != Metric::Meteor));
        let report = smallcap_metrics::evaluate(&gold, &pred, &opts)
            .map_err(|e| Error::Input(e.to_string()))?;
        Ok(report.to_json())
    })
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Store>()?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    Ok(())
}
