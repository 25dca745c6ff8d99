//! The error type of every fallible operation in this crate.

use std::path::PathBuf;

/// Why an evaluation (or one of its steps) failed. Messages name the file and field at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// A file is not UTF-8 text.
    #[error("{path}: not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 {
        /// The file's path, as displayed.
        path: String,
        /// Byte offset of the first byte that is not part of valid UTF-8.
        offset: usize,
    },
    /// A file is not well-formed JSON.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        /// The file's path, or the label given for in-memory data.
        path: String,
        /// The parser's error (with line and column).
        source: serde_json::Error,
    },
    /// Well-formed JSON that does not have the expected shape (the message names the field).
    #[error("{path}: {message}")]
    Format {
        /// The file's path, or the label given for in-memory data.
        path: String,
        /// What is wrong, naming the entry and field (e.g. `images[0]: missing field "id"`).
        message: String,
    },
    /// A prediction names an image that the gold file does not list (pycocotools' `loadRes`
    /// asserts "Results do not correspond to current coco set").
    #[error("{path}: prediction {index} is for image {image_id}, which is not among the gold file's images")]
    UnknownImage {
        /// The predictions file's path, or the label given for in-memory data.
        path: String,
        /// 0-based index of the prediction (its position in the results array).
        index: usize,
        /// The unknown image id, as [`ImageId`](crate::ImageId) displays it (strings quoted).
        image_id: String,
    },
    /// Two predictions for one image (pycocoevalcap's scorers assert one hypothesis per image).
    #[error("{path}: image {image_id} has more than one prediction (entries {first} and {second}); the toolkit scores exactly one caption per image")]
    DuplicatePrediction {
        /// The predictions file's path, or the label given for in-memory data.
        path: String,
        /// The image, as [`ImageId`](crate::ImageId) displays it (strings quoted).
        image_id: String,
        /// 0-based index of the image's first prediction.
        first: usize,
        /// 0-based index of the image's second prediction.
        second: usize,
    },
    /// An evaluated image has no reference captions (the toolkit fails on it too).
    #[error("{path}: image {image_id} has no reference captions in the gold annotations")]
    NoReferences {
        /// The gold file's path, or the label given for in-memory data.
        path: String,
        /// The image, as [`ImageId`](crate::ImageId) displays it (strings quoted).
        image_id: String,
    },
    /// Nothing to evaluate.
    #[error("{path}: there are no predictions to evaluate")]
    NoPredictions {
        /// The predictions file's path, or the label given for in-memory data.
        path: String,
    },
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
        /// The file.
        path: PathBuf,
        /// Why writing it failed.
        source: std::io::Error,
    },
}
