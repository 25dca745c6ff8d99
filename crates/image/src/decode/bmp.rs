//! BMP, read as Pillow 9.3's `BmpImagePlugin` reads it: OS/2 v1 and Windows v3–v5 headers;
//! 1/4/8-bit palette images become P (or "1"/L when the palette is the plain black-white pair or
//! grey ramp), 16-bit is "BGR;15" or "BGR;16" (`v * 255 / 31`, `v * 255 / 63`), 24-bit BGR, 32-bit
//! BGRX unless BITFIELDS masks name one of Pillow's alpha layouts (then RGBA); RLE8/RLE4 follow
//! Pillow's `BmpRleDecoder`. Layouts Pillow refuses are refused here too.

use super::{build_u8, expand_palette, palette_with_ramp, Ctx};
use crate::error::ImageError;
use crate::source::{PilMode, SourceImage};

const RAW: u32 = 0;
const RLE8: u32 = 1;
const RLE4: u32 = 2;
const BITFIELDS: u32 = 3;

fn u16le(b: &[u8], i: usize) -> u32 {
    u32::from(u16::from_le_bytes([b[i], b[i + 1]]))
}

fn u32le(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// How the pixel rows are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// Palette indices of 1, 4 or 8 bits.
    P(u32),
    /// Mode "1" from 1-bit data.
    Bilevel,
    /// Mode L from 8-bit data.
    L,
    Bgr15,
    Bgr16,
    Bgr,
    Bgrx,
    Xbgr,
    Abgr,
    Rgba,
    Bgra,
}

struct Header {
    width: u64,
    height: u64,
    /// True for top-down rows.
    top_down: bool,
    bits: u32,
    compression: u32,
    raw: Raw,
    palette: Option<Box<[[u8; 3]; 256]>>,
    /// Start of the pixel data.
    data_offset: usize,
}

fn parse(bytes: &[u8], ctx: Ctx<'_>) -> Result<Header, ImageError> {
    if bytes.len() < 18 {
        return Err(ctx.truncated());
    }
    let mut offset = u32le(bytes, 10) as usize;
    let header_size = u32le(bytes, 14) as usize;
    if !matches!(header_size, 12 | 40 | 64 | 108 | 124) {
        return Err(ctx.unsupported(format!("BMP header type ({header_size})")));
    }
    let hd = bytes
        .get(18..14 + header_size)
        .ok_or_else(|| ctx.truncated())?;
    let mut pos = 14 + header_size;
    let (width, height, top_down, bits, compression, mut colors, padding);
    let mut masks = None;
    if header_size == 12 {
        width = u64::from(u16le(hd, 0));
        height = u64::from(u16le(hd, 2));
        top_down = false;
        bits = u16le(hd, 6);
        compression = RAW;
        colors = 0u64;
        padding = 3usize;
    } else {
        top_down = hd[7] == 0xFF;
        width = u64::from(u32le(hd, 0));
        height = if top_down {
            (1u64 << 32) - u64::from(u32le(hd, 4))
        } else {
            u64::from(u32le(hd, 4))
        };
        bits = u16le(hd, 10);
        compression = u32le(hd, 12);
        colors = u64::from(u32le(hd, 28));
        padding = 4;
        if compression == BITFIELDS {
            masks = Some(if hd.len() >= 52 {
                [u32le(hd, 36), u32le(hd, 40), u32le(hd, 44), u32le(hd, 48)]
            } else {
                let m = bytes.get(pos..pos + 12).ok_or_else(|| ctx.truncated())?;
                pos += 12;
                [u32le(m, 0), u32le(m, 4), u32le(m, 8), 0]
            });
        }
    }
    if colors == 0 {
        colors = 1u64 << bits.min(32);
    }
    if offset == 14 + header_size && bits <= 8 {
        offset += 4 * colors as usize;
    }
    let mut raw = match bits {
        1 | 4 | 8 => Raw::P(bits),
        16 => Raw::Bgr15,
        24 => Raw::Bgr,
        32 => Raw::Bgrx,
        _ => return Err(ctx.unsupported(format!("BMP pixel depth ({bits})"))),
    };
    match compression {
        BITFIELDS => {
            let m = masks.expect("set for BITFIELDS");
            raw = match (bits, m) {
                (32, [0xFF0000, 0xFF00, 0xFF, 0]) => Raw::Bgrx,
                (32, [0xFF00_0000, 0xFF0000, 0xFF00, 0]) => Raw::Xbgr,
                (32, [0xFF00_0000, 0xFF0000, 0xFF00, 0xFF]) => Raw::Abgr,
                (32, [0xFF, 0xFF00, 0xFF0000, 0xFF00_0000]) => Raw::Rgba,
                (32, [0xFF0000, 0xFF00, 0xFF, 0xFF00_0000]) => Raw::Bgra,
                (32, [0, 0, 0, 0]) => Raw::Bgra,
                (24, [0xFF0000, 0xFF00, 0xFF, _]) => Raw::Bgr,
                (16, [0xF800, 0x7E0, 0x1F, _]) => Raw::Bgr16,
                (16, [0x7C00, 0x3E0, 0x1F, _]) => Raw::Bgr15,
                _ => return Err(ctx.unsupported("BMP bitfields layout")),
            };
        }
        RAW | RLE8 | RLE4 => {}
        c => return Err(ctx.unsupported(format!("BMP compression ({c})"))),
    }
    let mut palette = None;
    if let Raw::P(_) = raw {
        if !(1..=65536).contains(&colors) {
            return Err(ctx.unsupported(format!("BMP palette size ({colors})")));
        }
        let want = padding * colors as usize;
        let end = (pos + want).min(bytes.len());
        let pal = &bytes[pos.min(end)..end];
        pos = end;
        let entry = |i: usize| pal.get(i * padding..i * padding + 3);
        let greyscale = if colors == 2 {
            entry(0) == Some(&[0, 0, 0][..]) && entry(1) == Some(&[255, 255, 255][..])
        } else {
            (0..colors as usize).all(|i| entry(i) == Some(&[i as u8; 3][..]) && i < 256)
        };
        if greyscale {
            raw = match (colors == 2, bits, compression) {
                (true, 1, RAW) => Raw::Bilevel,
                (false, 8, RAW | RLE8 | RLE4) => Raw::L,
                // Pillow would unpack these with the wrong sample size.
                _ => {
                    return Err(
                        ctx.unsupported("BMP greyscale palette with this bit depth or compression")
                    )
                }
            };
        } else {
            palette = Some(palette_with_ramp(
                pal.chunks(padding)
                    .filter(|c| c.len() >= 3)
                    .map(|c| [c[2], c[1], c[0]]),
            ));
        }
    }
    let data_offset = if offset != 0 { offset } else { pos };
    Ok(Header {
        width,
        height,
        top_down,
        bits,
        compression,
        raw,
        palette,
        data_offset,
    })
}

pub(super) fn header_size(bytes: &[u8], ctx: Ctx<'_>) -> Result<(u64, u64), ImageError> {
    let h = parse(bytes, ctx)?;
    Ok((h.width, h.height))
}

/// Pillow's `BmpRleDecoder`, including its quirks (the delta escape reads two bytes, then takes
/// the offsets from the two bytes after them).
fn rle(
    bytes: &[u8],
    start: usize,
    w: usize,
    h: usize,
    rle4: bool,
    ctx: Ctx<'_>,
) -> Result<Vec<u8>, ImageError> {
    let mut pos = start;
    let mut data: Vec<u8> = Vec::with_capacity(w * h);
    let mut x = 0usize;
    let read = |n: usize, pos: &mut usize| -> &[u8] {
        let s = (*pos).min(bytes.len());
        let e = (s + n).min(bytes.len());
        *pos = e;
        &bytes[s..e]
    };
    while data.len() < w * h {
        let pair = read(2, &mut pos);
        if pair.len() < 2 {
            break;
        }
        let (n, byte) = (pair[0] as usize, pair[1]);
        if n != 0 {
            let n = if x + n > w { w.saturating_sub(x) } else { n };
            if rle4 {
                let (a, b) = (byte >> 4, byte & 0x0F);
                data.extend((0..n).map(|i| if i % 2 == 0 { a } else { b }));
            } else {
                data.extend(std::iter::repeat_n(byte, n));
            }
            x += n;
        } else {
            match byte {
                0 => {
                    while data.len() % w != 0 {
                        data.push(0);
                    }
                    x = 0;
                }
                1 => break,
                2 => {
                    if read(2, &mut pos).len() < 2 {
                        break;
                    }
                    let d = read(2, &mut pos);
                    if d.len() < 2 {
                        return Err(ctx.truncated());
                    }
                    let (right, up) = (d[0] as usize, d[1] as usize);
                    data.resize(data.len() + right + up * w, 0);
                    x = data.len() % w;
                }
                count => {
                    let count = count as usize;
                    let byte_count = if rle4 { count / 2 } else { count };
                    let got = read(byte_count, &mut pos);
                    let short = got.len() < byte_count;
                    if rle4 {
                        for &b in got {
                            data.push(b >> 4);
                            data.push(b & 0x0F);
                        }
                    } else {
                        data.extend_from_slice(got);
                    }
                    if short {
                        break;
                    }
                    x += count;
                    if pos % 2 != 0 {
                        pos += 1;
                    }
                }
            }
        }
    }
    // Pillow's `set_as_raw` refuses a buffer that does not fill the image.
    if data.len() < w * h {
        return Err(ctx.decode_err("not enough image data (RLE stream ends early)"));
    }
    data.truncate(w * h);
    Ok(data)
}

pub(super) fn decode(bytes: &[u8], ctx: Ctx<'_>) -> Result<SourceImage, ImageError> {
    let hd = parse(bytes, ctx)?;
    let (w, h) = ctx.check_size(hd.width, hd.height)?;
    let (wu, hu) = (w as usize, h as usize);

    // Samples in image order (top row first), one index/grey byte or 3/4 colour bytes per pixel.
    let (mode, data) = if matches!(hd.compression, RLE8 | RLE4) {
        let mut idx = rle(bytes, hd.data_offset, wu, hu, hd.compression == RLE4, ctx)?;
        if !hd.top_down {
            let rows: Vec<&[u8]> = idx.chunks_exact(wu).rev().collect();
            idx = rows.concat();
        }
        match (&hd.raw, &hd.palette) {
            (Raw::L, _) => (PilMode::L, idx),
            (Raw::P(_), Some(pal)) => (PilMode::P, expand_palette(&idx, pal)),
            _ => return Err(ctx.unsupported("RLE compression with this pixel format")),
        }
    } else {
        let stride = ((wu as u64 * u64::from(hd.bits) + 31) >> 3) as usize & !3;
        let need = stride
            .checked_mul(hu)
            .ok_or_else(|| ctx.decode_err("image too large"))?;
        let body = bytes
            .get(hd.data_offset..)
            .filter(|b| b.len() >= need)
            .ok_or_else(|| ctx.truncated())?;
        let channels = match hd.raw {
            Raw::P(_) | Raw::Bilevel | Raw::L => 1,
            Raw::Abgr | Raw::Rgba | Raw::Bgra => 4,
            _ => 3,
        };
        let mut out = Vec::with_capacity(wu * hu * channels);
        for y in 0..hu {
            let file_row = if hd.top_down { y } else { hu - 1 - y };
            let row = &body[file_row * stride..][..stride];
            unpack_row(row, wu, hd.raw, &mut out);
        }
        match (hd.raw, &hd.palette) {
            (Raw::P(_), Some(pal)) => (PilMode::P, expand_palette(&out, pal)),
            (Raw::P(_), None) => return Err(ctx.decode_err("palette image without palette")),
            (Raw::Bilevel, _) => (PilMode::Bilevel, out),
            (Raw::L, _) => (PilMode::L, out),
            (Raw::Abgr | Raw::Rgba | Raw::Bgra, _) => (PilMode::Rgba, out),
            _ => (PilMode::Rgb, out),
        }
    };
    build_u8(ctx, w, h, mode, data)
}

fn unpack_row(row: &[u8], w: usize, raw: Raw, out: &mut Vec<u8>) {
    match raw {
        Raw::P(8) | Raw::L => out.extend_from_slice(&row[..w]),
        Raw::P(bits) => {
            let per = 8 / bits as usize;
            let mask = (1u8 << bits) - 1;
            for i in 0..w {
                let shift = 8 - bits as usize * (i % per + 1);
                out.push((row[i / per] >> shift) & mask);
            }
        }
        Raw::Bilevel => {
            for i in 0..w {
                out.push(if row[i / 8] & (0x80 >> (i % 8)) != 0 {
                    255
                } else {
                    0
                });
            }
        }
        Raw::Bgr15 | Raw::Bgr16 => {
            for p in row[..w * 2].chunks_exact(2) {
                let v = u32::from(p[0]) | (u32::from(p[1]) << 8);
                let (r, g, b) = if raw == Raw::Bgr15 {
                    ((v >> 10) & 31, ((v >> 5) & 31) * 255 / 31, v & 31)
                } else {
                    ((v >> 11) & 31, ((v >> 5) & 63) * 255 / 63, v & 31)
                };
                out.extend_from_slice(&[(r * 255 / 31) as u8, g as u8, (b * 255 / 31) as u8]);
            }
        }
        Raw::Bgr => {
            for p in row[..w * 3].chunks_exact(3) {
                out.extend_from_slice(&[p[2], p[1], p[0]]);
            }
        }
        Raw::Bgrx => {
            for p in row[..w * 4].chunks_exact(4) {
                out.extend_from_slice(&[p[2], p[1], p[0]]);
            }
        }
        Raw::Xbgr => {
            for p in row[..w * 4].chunks_exact(4) {
                out.extend_from_slice(&[p[3], p[2], p[1]]);
            }
        }
        Raw::Abgr => {
            for p in row[..w * 4].chunks_exact(4) {
                out.extend_from_slice(&[p[3], p[2], p[1], p[0]]);
            }
        }
        Raw::Rgba => out.extend_from_slice(&row[..w * 4]),
        Raw::Bgra => {
            for p in row[..w * 4].chunks_exact(4) {
                out.extend_from_slice(&[p[2], p[1], p[0], p[3]]);
            }
        }
    }
}
