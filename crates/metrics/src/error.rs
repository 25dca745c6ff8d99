//! The error type of every fallible operation in this crate.

use std::path::PathBuf;

/// Why an evaluation (or one of its steps) failed. Messages name the file and field at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file is not UTF-8 text.
    #[error("{path}: not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { path: String, offset: usize },
    /// A file is not well-formed JSON.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    /// Well-formed JSON that does not have the expected shape (the message names the field).
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    /// A prediction names an image that the gold file does not list (pycocotools' `loadRes`
    /// asserts "Results do not correspond to current coco set").
    #[error("{path}: prediction {index} is for image {image_id}, which is not among the gold file's images")]
    UnknownImage {
        path: String,
        index: usize,
        image_id: String,
    },
    /// Two predictions for one image (pycocoevalcap's scorers assert one hypothesis per image).
    #[error("{path}: image {image_id} has more than one prediction (entries {first} and {second}); the toolkit scores exactly one caption per image")]
    DuplicatePrediction {
        path: String,
        image_id: String,
        first: usize,
        second: usize,
    },
    /// An evaluated image has no reference captions (the toolkit fails on it too).
    #[error("{path}: image {image_id} has no reference captions in the gold annotations")]
    NoReferences { path: String, image_id: String },
    /// Nothing to evaluate.
    #[error("{path}: there are no predictions to evaluate")]
    NoPredictions { path: String },
    /// Scorer inputs that break the toolkit's preconditions (library callers only).
    #[error("invalid scorer input: {0}")]
    InvalidInput(String),
    /// The tokenizer produced fewer lines than captions (a caption's text spans lines).
    #[error("PTB tokenisation misaligned: {0}")]
    Tokenizer(String),
    /// The METEOR jar failed or answered something unexpected.
    #[error("METEOR: {0}")]
    Meteor(String),
    /// The SPICE jar failed or wrote something unexpected.
    #[error("SPICE: {0}")]
    Spice(String),
    /// An output file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}
