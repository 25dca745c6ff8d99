//! Format sniffing, header-only size checks and dispatch to the per-format decoders. Every decoder
//! produces a [`SourceImage`] in the mode Pillow 9.3 would open the file in.

mod bmp;
mod gif;
mod jpeg;
mod png;
mod tiff;
mod webp;

use crate::error::ImageError;
use crate::source::SourceImage;
use crate::{MAX_ASPECT, MAX_PIXELS};

/// The container formats this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// JPEG (JFIF/EXIF/Adobe), decoded with libjpeg-turbo's algorithms (mozjpeg build).
    Jpeg,
    /// PNG (first frame of an APNG).
    Png,
    /// GIF (first frame).
    Gif,
    /// WebP, lossy or lossless (first frame).
    WebP,
    /// Windows/OS2 bitmap.
    Bmp,
    /// TIFF (first page).
    Tiff,
}

impl ImageFormat {
    /// Upper-case name, as Pillow's `Image.format`.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Png => "PNG",
            ImageFormat::Gif => "GIF",
            ImageFormat::WebP => "WEBP",
            ImageFormat::Bmp => "BMP",
            ImageFormat::Tiff => "TIFF",
        }
    }
}

/// Identifies the format from the first bytes, as Pillow's plugins' `_accept` functions do.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(b"\xFF\xD8\xFF") {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else if bytes.len() >= 16
        && &bytes[..4] == b"RIFF"
        && &bytes[8..12] == b"WEBP"
        && matches!(&bytes[12..16], b"VP8 " | b"VP8L" | b"VP8X")
    {
        Some(ImageFormat::WebP)
    } else if bytes.starts_with(b"BM") {
        Some(ImageFormat::Bmp)
    } else if bytes.starts_with(b"MM\x00\x2a")
        || bytes.starts_with(b"II\x2a\x00")
        || bytes.starts_with(b"MM\x00\x2b")
        || bytes.starts_with(b"II\x2b\x00")
    {
        Some(ImageFormat::Tiff)
    } else {
        None
    }
}

/// Context every decoder carries: the name for messages and the format.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub name: &'a str,
    pub format: ImageFormat,
}

impl Ctx<'_> {
    pub fn decode_err(&self, reason: impl std::fmt::Display) -> ImageError {
        ImageError::Decode {
            name: self.name.to_string(),
            format: self.format.name(),
            reason: reason.to_string(),
        }
    }

    pub fn truncated(&self) -> ImageError {
        self.decode_err("file is truncated")
    }

    pub fn unsupported(&self, reason: impl std::fmt::Display) -> ImageError {
        ImageError::Unsupported {
            name: self.name.to_string(),
            format: self.format.name(),
            reason: reason.to_string(),
        }
    }

    /// Refuses empty images, images over [`MAX_PIXELS`] and images longer than [`MAX_ASPECT`]
    /// times their width (or the reverse); call before decoding pixel data.
    pub fn check_size(&self, width: u64, height: u64) -> Result<(u32, u32), ImageError> {
        if width == 0 || height == 0 {
            return Err(ImageError::ZeroSized {
                name: self.name.to_string(),
                width,
                height,
            });
        }
        if width.saturating_mul(height) > MAX_PIXELS
            || width > u64::from(u32::MAX)
            || height > u64::from(u32::MAX)
        {
            return Err(ImageError::TooLarge {
                name: self.name.to_string(),
                width,
                height,
                limit: MAX_PIXELS,
            });
        }
        if width.max(height) > width.min(height).saturating_mul(MAX_ASPECT) {
            return Err(ImageError::ExtremeAspect {
                name: self.name.to_string(),
                width,
                height,
                limit: MAX_ASPECT,
            });
        }
        Ok((width as u32, height as u32))
    }
}

/// Pillow's palette store: 256 entries that start as a grey ramp, overwritten by the file's
/// palette (indices past the file's palette keep the ramp, as `ImagingPaletteNew` leaves them).
pub(crate) fn palette_with_ramp(
    rgb_triplets: impl IntoIterator<Item = [u8; 3]>,
) -> Box<[[u8; 3]; 256]> {
    let mut pal = Box::new([[0u8; 3]; 256]);
    for (i, e) in pal.iter_mut().enumerate() {
        *e = [i as u8; 3];
    }
    for (e, rgb) in pal.iter_mut().zip(rgb_triplets) {
        *e = rgb;
    }
    pal
}

/// Looks indices up in a palette, giving interleaved RGB.
pub(crate) fn expand_palette(indices: &[u8], pal: &[[u8; 3]; 256]) -> Vec<u8> {
    let mut out = Vec::with_capacity(indices.len() * 3);
    for &i in indices {
        out.extend_from_slice(&pal[i as usize]);
    }
    out
}

fn hex_prefix(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing (empty file)".to_string();
    }
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn sniff_or_err<'a>(bytes: &[u8], name: &'a str) -> Result<Ctx<'a>, ImageError> {
    let format = sniff(bytes).ok_or_else(|| ImageError::UnknownFormat {
        name: name.to_string(),
        magic: hex_prefix(bytes),
    })?;
    Ok(Ctx { name, format })
}

/// Width and height from the header alone (for GIF: the canvas of the first frame, as Pillow
/// grows the logical screen to hold it), after the same zero-size
/// and [`MAX_PIXELS`] checks `decode` makes. Reads no pixel data.
pub fn image_size(bytes: &[u8], name: &str) -> Result<(u32, u32), ImageError> {
    let ctx = sniff_or_err(bytes, name)?;
    let (w, h) = match ctx.format {
        ImageFormat::Jpeg => jpeg::header_size(bytes, ctx)?,
        ImageFormat::Png => png::header_size(bytes, ctx)?,
        ImageFormat::Gif => gif::header_size(bytes, ctx)?,
        ImageFormat::WebP => webp::header_size(bytes, ctx)?,
        ImageFormat::Bmp => bmp::header_size(bytes, ctx)?,
        ImageFormat::Tiff => tiff::header_size(bytes, ctx)?,
    };
    ctx.check_size(w, h)
}

/// Decodes `bytes` (the file's whole content; `name` is used in errors) into the mode Pillow 9.3
/// would open it in.
pub fn decode(bytes: &[u8], name: &str) -> Result<SourceImage, ImageError> {
    let ctx = sniff_or_err(bytes, name)?;
    match ctx.format {
        ImageFormat::Jpeg => jpeg::decode(bytes, ctx),
        ImageFormat::Png => png::decode(bytes, ctx),
        ImageFormat::Gif => gif::decode(bytes, ctx),
        ImageFormat::WebP => webp::decode(bytes, ctx),
        ImageFormat::Bmp => bmp::decode(bytes, ctx),
        ImageFormat::Tiff => tiff::decode(bytes, ctx),
    }
}

/// Builds the image or reports an internal size mismatch as a decode error (never a panic).
pub(crate) fn build_u8(
    ctx: Ctx<'_>,
    width: u32,
    height: u32,
    mode: crate::PilMode,
    data: Vec<u8>,
) -> Result<SourceImage, ImageError> {
    let len = data.len();
    SourceImage::from_u8(width, height, mode, data).ok_or_else(|| {
        ctx.decode_err(format!(
            "decoder returned {len} bytes for a {width}x{height} {} image",
            mode.name()
        ))
    })
}
