//! TIFF (first page) via the `tiff` crate (uncompressed, PackBits, LZW, Deflate, CCITT fax),
//! mapped to the modes of Pillow 9.3's `TiffImagePlugin` `OPEN_INFO`: 1-bit → "1", 8-bit grey → L,
//! 16-bit grey → I;16, grey+alpha → LA, RGB/RGBA (16-bit keeps the high byte; associated alpha is
//! un-premultiplied like Pillow's "RGBa" unpacker), CMYK → CMYK. WhiteIsZero is inverted by the
//! decoder, as Pillow's ";I" raw modes do. Palette, YCbCr/JPEG-compressed and other layouts are
//! reported as unsupported.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;
use tiff::{ColorType, TiffError};

use super::{build_u8, Ctx};
use crate::error::ImageError;
use crate::source::{PilMode, SourceImage};

fn map_err(ctx: Ctx<'_>, e: TiffError) -> ImageError {
    match e {
        TiffError::IoError(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ctx.truncated()
        }
        TiffError::UnsupportedError(u) => ctx.unsupported(u),
        other => ctx.decode_err(other),
    }
}

/// Checks the first IFD before the `tiff` crate reads it: its entry count and every entry's
/// values (count × type size) must fit in the file. The crate reads that IFD with its own
/// default limits (up to 1 MiB per value, allocated before the data is read) before ours can be
/// set, so a tiny file announcing huge tag arrays is refused here, by name.
fn check_first_ifd(bytes: &[u8], ctx: Ctx<'_>) -> Result<(), ImageError> {
    let le = bytes.starts_with(b"II");
    // An unsigned integer of `width` bytes at `at`, in the file's byte order.
    let uint_at = |at: usize, width: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(width)?)?;
        let fold = |acc: u64, &byte: &u8| (acc << 8) | u64::from(byte);
        Some(if le {
            b.iter().rev().fold(0, fold)
        } else {
            b.iter().fold(0, fold)
        })
    };
    let u16_at = |at: usize| uint_at(at, 2);
    let u32_at = |at: usize| uint_at(at, 4);
    let u64_at = |at: usize| uint_at(at, 8);
    let big = u16_at(2) == Some(43);
    let ifd = if big { u64_at(8) } else { u32_at(4) };
    let Some(ifd) = ifd.and_then(|o| usize::try_from(o).ok()) else {
        return Err(ctx.truncated());
    };
    let (count, first, entry_len) = if big {
        (u64_at(ifd), ifd + 8, 20)
    } else {
        (u16_at(ifd), ifd + 2, 12)
    };
    let Some(count) = count else {
        return Err(ctx.truncated());
    };
    let len = bytes.len() as u64;
    if count.saturating_mul(entry_len as u64) > len {
        return Err(ctx.decode_err(format!(
            "the first IFD announces {count} entries, more than the {len}-byte file holds"
        )));
    }
    for i in 0..count as usize {
        let at = first + i * entry_len;
        let (Some(tag), Some(ty)) = (u16_at(at), u16_at(at + 2)) else {
            return Err(ctx.truncated());
        };
        let n = if big { u64_at(at + 4) } else { u32_at(at + 4) };
        let Some(n) = n else {
            return Err(ctx.truncated());
        };
        let size: u64 = match ty {
            1 | 2 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 | 16 | 17 | 18 => 8,
            _ => continue,
        };
        if n.saturating_mul(size) > len {
            return Err(ctx.decode_err(format!(
                "tag {tag} announces {n} values of {size} bytes, more than the {len}-byte file holds"
            )));
        }
    }
    Ok(())
}

pub(super) fn header_size(bytes: &[u8], ctx: Ctx<'_>) -> Result<(u64, u64), ImageError> {
    check_first_ifd(bytes, ctx)?;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut dec = Decoder::new(Cursor::new(bytes)).map_err(|e| map_err(ctx, e))?;
        let (w, h) = dec.dimensions().map_err(|e| map_err(ctx, e))?;
        Ok((u64::from(w), u64::from(h)))
    }));
    outcome.unwrap_or_else(|_| Err(ctx.decode_err("TIFF decoder failed on malformed data")))
}

pub(super) fn decode(bytes: &[u8], ctx: Ctx<'_>) -> Result<SourceImage, ImageError> {
    let outcome = catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, ctx)));
    outcome.unwrap_or_else(|_| Err(ctx.decode_err("TIFF decoder failed on malformed data")))
}

fn decode_inner(bytes: &[u8], ctx: Ctx<'_>) -> Result<SourceImage, ImageError> {
    check_first_ifd(bytes, ctx)?;
    let mut dec = Decoder::new(Cursor::new(bytes)).map_err(|e| map_err(ctx, e))?;
    let (w, h) = dec.dimensions().map_err(|e| map_err(ctx, e))?;
    let (w, h) = ctx.check_size(u64::from(w), u64::from(h))?;
    // Sizes read from the file are held to what the file can hold: the decoded image to its
    // (checked) pixel count at up to 16 bytes a pixel (4 samples of 32 bits), and a strip's
    // compressed bytes or a tag's values, which lie inside the file, to the file's length.
    let mut limits = Limits::default();
    limits.decoding_buffer_size = (w as usize * h as usize).saturating_mul(16);
    limits.intermediate_buffer_size = bytes.len();
    limits.ifd_value_size = bytes.len();
    let mut dec = dec.with_limits(limits);
    let color = dec.colortype().map_err(|e| map_err(ctx, e))?;
    let associated_alpha = dec
        .find_tag_unsigned_vec::<u16>(Tag::ExtraSamples)
        .map_err(|e| map_err(ctx, e))?
        .is_some_and(|v| v.first() == Some(&1));
    let image = dec.read_image().map_err(|e| map_err(ctx, e))?;
    let (wu, hu) = (w as usize, h as usize);
    match (color, image) {
        (ColorType::Gray(1), DecodingResult::U8(d)) => {
            let stride = wu.div_ceil(8);
            if d.len() < stride * hu {
                return Err(ctx.truncated());
            }
            let mut out = Vec::with_capacity(wu * hu);
            for row in d.chunks_exact(stride).take(hu) {
                out.extend((0..wu).map(|x| {
                    if row[x / 8] & (0x80 >> (x % 8)) != 0 {
                        255
                    } else {
                        0
                    }
                }));
            }
            build_u8(ctx, w, h, PilMode::Bilevel, out)
        }
        (ColorType::Gray(8), DecodingResult::U8(d)) => build_u8(ctx, w, h, PilMode::L, d),
        (ColorType::Gray(16), DecodingResult::U16(d)) => {
            SourceImage::from_i32(w, h, PilMode::I16, d.into_iter().map(i32::from).collect())
                .ok_or_else(|| ctx.truncated())
        }
        (
            ColorType::Multiband {
                bit_depth: 8,
                num_samples: 2,
            },
            DecodingResult::U8(d),
        ) => build_u8(ctx, w, h, PilMode::La, d),
        (ColorType::RGB(8), DecodingResult::U8(d)) => build_u8(ctx, w, h, PilMode::Rgb, d),
        (ColorType::RGB(16), DecodingResult::U16(d)) => build_u8(
            ctx,
            w,
            h,
            PilMode::Rgb,
            d.into_iter().map(|v| (v >> 8) as u8).collect(),
        ),
        (ColorType::RGBA(8), DecodingResult::U8(d)) => build_u8(
            ctx,
            w,
            h,
            PilMode::Rgba,
            straight_alpha(d, associated_alpha),
        ),
        (ColorType::RGBA(16), DecodingResult::U16(d)) => {
            let d = d.into_iter().map(|v| (v >> 8) as u8).collect();
            build_u8(
                ctx,
                w,
                h,
                PilMode::Rgba,
                straight_alpha(d, associated_alpha),
            )
        }
        (ColorType::CMYK(8), DecodingResult::U8(d)) => build_u8(ctx, w, h, PilMode::Cmyk, d),
        (c, _) => Err(ctx.unsupported(format!("TIFF colour type {c:?}"))),
    }
}

/// Pillow's "RGBa" unpacker for associated (premultiplied) alpha; straight alpha is kept.
fn straight_alpha(mut d: Vec<u8>, associated: bool) -> Vec<u8> {
    if associated {
        for p in d.chunks_exact_mut(4) {
            let a = u32::from(p[3]);
            if a == 0 {
                p.copy_from_slice(&[0, 0, 0, 0]);
            } else if a != 255 {
                for c in &mut p[..3] {
                    *c = (u32::from(*c) * 255 / a).min(255) as u8;
                }
            }
        }
    }
    d
}
