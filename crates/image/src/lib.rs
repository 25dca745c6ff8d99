//! `smallcap-image`: loads images and preprocesses them exactly as the SmallCap reference does
//! with Pillow 9.3 (libjpeg-turbo, libwebp), transformers 4.21.1 `CLIPFeatureExtractor` and
//! OpenAI `clip._transform`.
//!
//! - [`load_rgb`] / [`decode_rgb`]: `Image.open(path).convert("RGB")` — JPEG, PNG, WebP, GIF (first
//!   frame), BMP, TIFF; no EXIF rotation (Pillow applies none). Headers are checked first: empty
//!   images, images over [`MAX_PIXELS`] and images whose sides differ by more than [`MAX_ASPECT`]
//!   to 1 are refused before any pixel data is decoded.
//! - [`load`] / [`decode`]: the same image kept in its Pillow mode ([`SourceImage`]), which
//!   `clip._transform` needs because it resizes before converting to RGB.
//! - [`resize_bicubic`]: Pillow's `Image.resize((w, h), Image.BICUBIC)`, bit-exact.
//! - [`clip_feature_extractor`]: the generation encoder's pixel values (224 px).
//! - [`clip_transform`]: the retrieval encoder's pixel values (448 px for RN50x64).
//!
//! The only unsafe code is the libjpeg binding in `decode::jpeg`; every unsafe block there says
//! why it is sound (`// SAFETY:`, checked by clippy's `undocumented_unsafe_blocks`).
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

mod decode;
mod error;
mod preprocess;
mod resample;
mod source;

use std::path::Path;

pub use decode::{decode, image_size, sniff, ImageFormat};
pub use error::ImageError;
pub use image::RgbImage;
pub use preprocess::{clip_feature_extractor, clip_transform, CLIP_MEAN, CLIP_STD};
pub use source::{PilMode, SourceImage};

/// The most pixels (width × height, as the file's header claims) an image may have.
pub const MAX_PIXELS: u64 = 100_000_000;

/// The most the longer side may exceed the shorter, as a ratio; more is refused from the header,
/// like [`MAX_PIXELS`]. CLIP's preprocessing resizes the shorter side to 224-448 px before it
/// crops, so a 1 × 65535 image (a 200-byte GIF) would become 448 × 29 million pixels (39 GB)
/// first; at 200:1 the resized image stays within 448 × 89,600 (120 MB). Pillow has no such
/// limit; no photograph comes near it.
pub const MAX_ASPECT: u64 = 200;

/// Reads and decodes an image file into its Pillow mode (see [`decode`]).
pub fn load(path: &Path) -> Result<SourceImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes, &path.display().to_string())
}

/// `Image.open(path).convert("RGB")`.
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    Ok(load(path)?.to_rgb())
}

/// `Image.open(BytesIO(bytes)).convert("RGB")`; `name` is used in error messages.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage, ImageError> {
    Ok(decode(bytes, name)?.to_rgb())
}

/// Pillow 9.x `img.resize((width, height), Image.BICUBIC)` for an RGB image, bit-exact: separable
/// antialiased bicubic (a = −0.5, support scaled by the downscale factor), 22-bit fixed-point
/// weights, rounding and clamping after each pass, horizontal pass first, a pass skipped when its
/// size is unchanged. A zero width or height gives an empty image.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    if (width, height) == img.dimensions() {
        return img.clone();
    }
    let data = resample::resample_u8(
        img.as_raw(),
        img.width() as usize,
        img.height() as usize,
        3,
        width as usize,
        height as usize,
    );
    RgbImage::from_raw(width, height, data).expect("resampler returns width*height*3 bytes")
}
