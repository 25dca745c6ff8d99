//! WebP via `image-webp`, whose lossy path (fancy upsampling, YUV→RGB) matches libwebp 1.2.4 as
//! bundled with Pillow 9.3 byte for byte on the fixtures. Pillow opens WebP through libwebp's
//! `WebPAnimDecoder`: mode RGBA when the file declares alpha, else RGB; the first frame of an
//! animation is drawn on a canvas cleared to transparent black.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image_webp::{DecodingError, WebPDecoder};

use super::{build_u8, Ctx};
use crate::error::ImageError;
use crate::source::{PilMode, SourceImage};

fn map_err(ctx: Ctx<'_>, e: DecodingError) -> ImageError {
    match e {
        DecodingError::IoError(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ctx.truncated()
        }
        other => ctx.decode_err(other),
    }
}

/// Canvas size from the first chunk's header (VP8X canvas, VP8L or VP8 frame header).
pub(super) fn header_size(bytes: &[u8], ctx: Ctx<'_>) -> Result<(u64, u64), ImageError> {
    let b = |range: std::ops::Range<usize>| bytes.get(range).ok_or_else(|| ctx.truncated());
    let u24 = |s: &[u8]| u64::from(s[0]) | u64::from(s[1]) << 8 | u64::from(s[2]) << 16;
    match b(12..16)? {
        b"VP8X" => {
            let s = b(24..30)?;
            Ok((1 + u24(&s[0..3]), 1 + u24(&s[3..6])))
        }
        b"VP8L" => {
            let s = b(20..25)?;
            if s[0] != 0x2f {
                return Err(ctx.decode_err("bad VP8L signature"));
            }
            let bits = u32::from_le_bytes([s[1], s[2], s[3], s[4]]);
            Ok((
                1 + u64::from(bits & 0x3FFF),
                1 + u64::from((bits >> 14) & 0x3FFF),
            ))
        }
        _ => {
            let s = b(20..30)?;
            if s[3..6] != [0x9d, 0x01, 0x2a] {
                return Err(ctx.decode_err("bad VP8 start code"));
            }
            let w = u16::from_le_bytes([s[6], s[7]]) & 0x3FFF;
            let h = u16::from_le_bytes([s[8], s[9]]) & 0x3FFF;
            Ok((u64::from(w), u64::from(h)))
        }
    }
}

pub(super) fn decode(bytes: &[u8], ctx: Ctx<'_>) -> Result<SourceImage, ImageError> {
    let (w, h) = header_size(bytes, ctx)?;
    ctx.check_size(w, h)?;
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<SourceImage, ImageError> {
        let mut dec = WebPDecoder::new(Cursor::new(bytes)).map_err(|e| map_err(ctx, e))?;
        let (w, h) = dec.dimensions();
        let (w, h) = ctx.check_size(u64::from(w), u64::from(h))?;
        if dec.is_animated() {
            dec.set_background_color([0, 0, 0, 0])
                .map_err(|e| map_err(ctx, e))?;
        }
        let size = dec
            .output_buffer_size()
            .ok_or_else(|| ctx.decode_err("image too large for memory"))?;
        let mut buf = vec![0u8; size];
        dec.read_image(&mut buf).map_err(|e| map_err(ctx, e))?;
        let mode = if dec.has_alpha() {
            PilMode::Rgba
        } else {
            PilMode::Rgb
        };
        build_u8(ctx, w, h, mode, buf)
    }));
    outcome.unwrap_or_else(|_| Err(ctx.decode_err("WebP decoder failed on malformed data")))
}
