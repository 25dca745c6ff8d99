//! The library's error type: every failure names the file, tensor or field at fault.

use std::path::{Path, PathBuf};

/// Errors from loading checkpoints, tokenizers and images, and from captioning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A `config.json` that is not valid for the model.
    #[error("{}: invalid config: {msg}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A weight file that is not what the model needs.
    #[error("{}: {msg}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Tokenizer files that cannot be used.
    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The hub could not give a file.
    #[error("hub: {0}")]
    Hub(String),
    /// A datastore error.
    #[error(transparent)]
    Datastore(#[from] smallcap_datastore::Error),
    /// An image that cannot be decoded.
    #[error(transparent)]
    Image(#[from] smallcap_image::ImageError),
    /// Bad input from the caller (arguments, request fields).
    #[error("{0}")]
    Input(String),
    /// A long operation was stopped.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A tensor operation failed.
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

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
