//! The crate's error type: every variant names the file (or the name the caller gave the bytes).

use std::path::PathBuf;

/// Why an image could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("{}: cannot read image file: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not JPEG, PNG, WebP, GIF, BMP or TIFF.
    #[error("{name}: not a supported image format (JPEG, PNG, WebP, GIF, BMP, TIFF); file starts with {magic}")]
    UnknownFormat {
        /// File name.
        name: String,
        /// The first bytes, in hex.
        magic: String,
    },
    /// The header claims more pixels than [`crate::MAX_PIXELS`]; nothing was decoded.
    #[error("{name}: image header claims {width}x{height} pixels, more than the limit of {limit}")]
    TooLarge {
        /// File name.
        name: String,
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
        /// The limit in pixels.
        limit: u64,
    },
    /// The header's sides differ by more than [`crate::MAX_ASPECT`] to 1; nothing was decoded.
    #[error("{name}: image is {width}x{height}, its sides differ by more than {limit}:1 (CLIP's resize of the shorter side would make it enormous)")]
    ExtremeAspect {
        /// File name.
        name: String,
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
        /// The limit on longer side / shorter side.
        limit: u64,
    },
    /// The header says the image has no pixels.
    #[error("{name}: image has zero size ({width}x{height})")]
    ZeroSized {
        /// File name.
        name: String,
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
    },
    /// The data is corrupt or truncated.
    #[error("{name}: cannot decode {format} image: {reason}")]
    Decode {
        /// File name.
        name: String,
        /// The format that was detected.
        format: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A valid file using a feature this crate (or Pillow 9.3) does not read.
    #[error("{name}: unsupported {format} image: {reason}")]
    Unsupported {
        /// File name.
        name: String,
        /// The format that was detected.
        format: &'static str,
        /// The feature.
        reason: String,
    },
}
