//! Error type of the crate: every error names the file (or argument) and what is wrong.

use std::path::PathBuf;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The content of a file is not what its format requires.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A file is not valid JSON (or not the JSON shape expected).
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A file is not UTF-8.
    #[error("{}: not valid UTF-8 (first bad byte at offset {offset})", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// The offset of the first byte that is not UTF-8.
        offset: usize,
    },
    /// A file holds no data at all.
    #[error("{}: file is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Vector dimensions that disagree.
    #[error("dimension mismatch: {what} has dimension {found}, expected {expected}")]
    DimensionMismatch {
        /// What has the wrong dimension.
        what: String,
        /// The dimension it must have.
        expected: usize,
        /// The dimension it has.
        found: usize,
    },
    /// The number of vectors and captions disagree.
    #[error("count mismatch: {vectors} vectors but {captions} captions ({what})")]
    CountMismatch {
        /// The store or files.
        what: String,
        /// The number of vectors.
        vectors: usize,
        /// The number of captions.
        captions: usize,
    },
    /// `k` asked for more results than the store holds.
    #[error("k = {k} is larger than the store ({ntotal} vectors)")]
    KTooLarge {
        /// The k asked for.
        k: usize,
        /// The number of vectors in the store.
        ntotal: usize,
    },
    /// A PostgreSQL error (connection, SQL, COPY), with what was being done where.
    #[cfg(feature = "pgvector")]
    #[error("{what}: {}", pg_message(source))]
    Postgres {
        /// What was being done, where.
        what: String,
        /// The client's error.
        source: postgres::Error,
    },
    /// An invalid argument (not tied to a file).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// The server's message of a PostgreSQL error (`postgres::Error`'s own display says only
/// "db error" for those).
#[cfg(feature = "pgvector")]
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({})", db.message(), d),
            None => db.message().to_string(),
        },
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
