//! The library's error type: every failure names the file, tensor or field at fault.

use std::path::{Path, PathBuf};

/// Errors from loading checkpoints, tokenizers and images, and from captioning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: invalid config: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    #[error("hub: {0}")]
    Hub(String),
    #[error(transparent)]
    Datastore(#[from] smallcap_datastore::Error),
    #[error(transparent)]
    Image(#[from] smallcap_image::ImageError),
    #[error("{0}")]
    Input(String),
    #[error("interrupted: {0}")]
    Interrupted(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// One failure shared by every item of a batch (e.g. a retrieval that served several images).
    #[error(transparent)]
    Shared(std::sync::Arc<Error>),
}

impl Error {
    /// The error itself, looking through [`Error::Shared`].
    pub fn root(&self) -> &Error {
        match self {
            Error::Shared(e) => e.root(),
            other => other,
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn checkpoint(path: &Path, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
