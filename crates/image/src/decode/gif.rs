//! GIF, first frame only, composed as Pillow 9.3's `GifImagePlugin` does for frame 0: the canvas is
//! the logical screen (grown if the frame extends past it) filled with index 0, or with the frame's
//! transparent index when it has one; the frame's indices are written at its offset; the mode is P
//! with the local (else global) palette over Pillow's grey ramp, or L when that palette is absent
//! or is exactly the identity grey ramp (`_is_palette_needed`).

use std::io::Cursor;

use super::{build_u8, expand_palette, palette_with_ramp, Ctx};
use crate::error::ImageError;
use crate::source::{PilMode, SourceImage};

/// The canvas of frame 0 as Pillow sizes it: the logical screen, grown to hold the first frame
/// where that extends past it. Reads the blocks up to the first image descriptor, no pixel data
/// (so the pixel limit holds for the canvas actually allocated, however far a frame is offset).
pub(super) fn header_size(bytes: &[u8], ctx: Ctx<'_>) -> Result<(u64, u64), ImageError> {
    let mut dec = open(bytes, ctx)?;
    let (w, h, _, _) = first_frame(&mut dec, bytes, ctx)?;
    Ok((w, h))
}

/// The logical screen's size (`bytes` holds at least the 10-byte header).
fn screen(bytes: &[u8]) -> (u64, u64) {
    let w = u16::from_le_bytes([bytes[6], bytes[7]]);
    let h = u16::from_le_bytes([bytes[8], bytes[9]]);
    (u64::from(w), u64::from(h))
}

/// The decoder, positioned before the first frame.
fn open<'a>(bytes: &'a [u8], ctx: Ctx<'_>) -> Result<gif::Decoder<Cursor<&'a [u8]>>, ImageError> {
    if bytes.len() < 10 {
        return Err(ctx.truncated());
    }
    let (sw, sh) = screen(bytes);
    // An empty or oversized logical screen is refused before any block is read.
    ctx.check_size(sw, sh)?;
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    opts.set_memory_limit(gif::MemoryLimit::Unlimited); // sizes are checked by the callers
    opts.read_info(Cursor::new(bytes))
        .map_err(|e| map_err(ctx, e))
}

/// Reads the first frame's descriptor: the canvas size (the logical screen grown to hold the
/// frame) and the frame's offset.
fn first_frame(
    dec: &mut gif::Decoder<Cursor<&[u8]>>,
    bytes: &[u8],
    ctx: Ctx<'_>,
) -> Result<(u64, u64, u64, u64), ImageError> {
    let (sw, sh) = screen(bytes);
    let frame = dec
        .next_frame_info()
        .map_err(|e| map_err(ctx, e))?
        .ok_or_else(|| ctx.decode_err("no image frame"))?;
    let (left, top) = (u64::from(frame.left), u64::from(frame.top));
    // Pillow grows the image to hold a first frame that extends past the logical screen.
    let w = sw.max(left + u64::from(frame.width));
    let h = sh.max(top + u64::from(frame.height));
    Ok((w, h, left, top))
}

/// `_is_palette_needed`: false when entry i is (i, i, i) for every entry.
fn palette_needed(p: &[u8]) -> bool {
    p.chunks(3).enumerate().any(|(i, c)| {
        c.len() < 3 || !(c[0] as usize == i && c[1] as usize == i && c[2] as usize == i)
    })
}

fn map_err(ctx: Ctx<'_>, e: gif::DecodingError) -> ImageError {
    match e {
        gif::DecodingError::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ctx.truncated()
        }
        gif::DecodingError::UnexpectedEof => ctx.truncated(),
        other => ctx.decode_err(other),
    }
}

pub(super) fn decode(bytes: &[u8], ctx: Ctx<'_>) -> Result<SourceImage, ImageError> {
    let mut dec = open(bytes, ctx)?;
    let global = dec.global_palette().map(<[u8]>::to_vec);
    let (w, h, left, top) = first_frame(&mut dec, bytes, ctx)?;
    let (w, h) = ctx.check_size(w, h)?;
    let frame = dec
        .current_frame_info()
        .ok_or_else(|| ctx.decode_err("no image frame"))?;
    let (fw, fh) = (usize::from(frame.width), usize::from(frame.height));
    let transparent = frame.transparent;
    let local = frame.palette.clone();
    let mut buf = vec![0u8; fw * fh];
    if !buf.is_empty() {
        dec.read_into_buffer(&mut buf)
            .map_err(|e| map_err(ctx, e))?;
    }

    let (wu, hu) = (w as usize, h as usize);
    let mut canvas = vec![transparent.unwrap_or(0); wu * hu];
    for y in 0..fh {
        let row = &buf[y * fw..][..fw];
        let start = (top as usize + y) * wu + left as usize;
        canvas[start..start + fw].copy_from_slice(row);
    }

    // The frame's palette: local if present, else global; one that is the identity ramp is dropped.
    let palette = match (&local, &global) {
        (Some(p), _) => Some(p),
        (None, Some(p)) => Some(p),
        (None, None) => None,
    }
    .filter(|p| palette_needed(p));
    match palette {
        Some(p) => {
            let pal = palette_with_ramp(p.chunks_exact(3).map(|c| [c[0], c[1], c[2]]));
            build_u8(ctx, w, h, PilMode::P, expand_palette(&canvas, &pal))
        }
        None => build_u8(ctx, w, h, PilMode::L, canvas),
    }
}
