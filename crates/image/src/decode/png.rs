//! PNG via the `png` crate with no transformations, then unpacked the way Pillow 9.3's
//! `PngImagePlugin` `_MODES` table does: 1-bit grey → "1", 2/4-bit grey scaled (×0x55, ×0x11) → L,
//! 16-bit grey → I, 16-bit colour keeps the high byte, 16-bit grey+alpha → RGBA, palette → P with the
//! PLTE entries over Pillow's grey ramp. tRNS and gAMA do not change the samples.

use std::io::Cursor;

use super::{build_u8, expand_palette, palette_with_ramp, Ctx};
use crate::error::ImageError;
use crate::source::{PilMode, SourceImage};

pub(super) fn header_size(bytes: &[u8], ctx: Ctx<'_>) -> Result<(u64, u64), ImageError> {
    if bytes.len() < 24 {
        return Err(ctx.truncated());
    }
    if &bytes[12..16] != b"IHDR" {
        return Err(ctx.decode_err("first chunk is not IHDR"));
    }
    let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    Ok((u64::from(w), u64::from(h)))
}

fn map_err(ctx: Ctx<'_>, e: png::DecodingError) -> ImageError {
    match e {
        png::DecodingError::IoError(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ctx.truncated()
        }
        other => ctx.decode_err(other),
    }
}

/// Unpacks `depth`-bit samples (1, 2 or 4) of one row, most significant bits first.
fn unpack_bits(row: &[u8], depth: u8, count: usize, out: &mut Vec<u8>, map: impl Fn(u8) -> u8) {
    let per_byte = 8 / depth as usize;
    let mask = (1u8 << depth) - 1;
    for i in 0..count {
        let byte = row[i / per_byte];
        let shift = 8 - depth as usize * (i % per_byte + 1);
        out.push(map((byte >> shift) & mask));
    }
}

pub(super) fn decode(bytes: &[u8], ctx: Ctx<'_>) -> Result<SourceImage, ImageError> {
    let (w, h) = header_size(bytes, ctx)?;
    let (w, h) = ctx.check_size(w, h)?;
    let mut decoder =
        png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: usize::MAX });
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| map_err(ctx, e))?;
    let info = reader.info();
    let (color, depth) = (info.color_type, info.bit_depth as u8);
    let palette = info
        .palette
        .as_ref()
        .map(|p| palette_with_ramp(p.chunks_exact(3).map(|c| [c[0], c[1], c[2]])));
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| ctx.decode_err("image too large for memory"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| map_err(ctx, e))?;
    let line = frame.line_size;
    let (wu, hu) = (w as usize, h as usize);
    if frame.width != w || frame.height != h || buf.len() < line * hu {
        return Err(ctx.decode_err("first frame does not match the header size"));
    }
    let rows = buf.chunks_exact(line).take(hu);
    use png::ColorType as C;
    match (color, depth) {
        (C::Grayscale, 1 | 2 | 4) => {
            let mut out = Vec::with_capacity(wu * hu);
            let (mode, scale) = match depth {
                1 => (PilMode::Bilevel, 255u8),
                2 => (PilMode::L, 0x55),
                _ => (PilMode::L, 0x11),
            };
            for row in rows {
                unpack_bits(row, depth, wu, &mut out, |v| v * scale);
            }
            build_u8(ctx, w, h, mode, out)
        }
        (C::Grayscale, 8) => build_u8(ctx, w, h, PilMode::L, packed(rows, wu)),
        (C::Grayscale, 16) => {
            let mut out = Vec::with_capacity(wu * hu);
            for row in rows {
                out.extend(
                    row[..wu * 2]
                        .chunks_exact(2)
                        .map(|s| i32::from(u16::from_be_bytes([s[0], s[1]]))),
                );
            }
            SourceImage::from_i32(w, h, PilMode::I, out)
                .ok_or_else(|| ctx.decode_err("decoder returned a short buffer"))
        }
        (C::Rgb, 8) => build_u8(ctx, w, h, PilMode::Rgb, packed(rows, wu * 3)),
        (C::Rgba, 8) => build_u8(ctx, w, h, PilMode::Rgba, packed(rows, wu * 4)),
        (C::GrayscaleAlpha, 8) => build_u8(ctx, w, h, PilMode::La, packed(rows, wu * 2)),
        (C::Rgb, 16) => build_u8(ctx, w, h, PilMode::Rgb, high_bytes(rows, wu * 3)),
        (C::Rgba, 16) => build_u8(ctx, w, h, PilMode::Rgba, high_bytes(rows, wu * 4)),
        (C::GrayscaleAlpha, 16) => {
            // Pillow's "LA;16B" unpacker into RGBA: (L, L, L, A), high bytes.
            let la = high_bytes(rows, wu * 2);
            let mut out = Vec::with_capacity(wu * hu * 4);
            for p in la.chunks_exact(2) {
                out.extend_from_slice(&[p[0], p[0], p[0], p[1]]);
            }
            build_u8(ctx, w, h, PilMode::Rgba, out)
        }
        (C::Indexed, 1 | 2 | 4 | 8) => {
            let pal = palette.ok_or_else(|| ctx.decode_err("palette image without PLTE chunk"))?;
            let mut idx = Vec::with_capacity(wu * hu);
            for row in rows {
                if depth == 8 {
                    idx.extend_from_slice(&row[..wu]);
                } else {
                    unpack_bits(row, depth, wu, &mut idx, |v| v);
                }
            }
            build_u8(ctx, w, h, PilMode::P, expand_palette(&idx, &pal))
        }
        (c, d) => Err(ctx.unsupported(format!("colour type {c:?} with bit depth {d}"))),
    }
}

/// Concatenates the first `n` bytes of each row.
fn packed<'a>(rows: impl Iterator<Item = &'a [u8]>, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for row in rows {
        out.extend_from_slice(&row[..n]);
    }
    out
}

/// Keeps the most significant byte of each big-endian 16-bit sample (`n` samples per row).
fn high_bytes<'a>(rows: impl Iterator<Item = &'a [u8]>, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for row in rows {
        out.extend(row[..n * 2].iter().step_by(2));
    }
    out
}
