//! [`SourceImage`]: a decoded image in the mode Pillow 9.3 would give it after `Image.open` + `load`
//! ("1", L, LA, P, RGB, RGBA, CMYK, I, I;16), with Pillow's conversion to RGB (`libImaging/Convert.c`)
//! and Pillow's mode-dependent `Image.resize(size, BICUBIC)` (RGBA/LA premultiplied, "1"/P nearest,
//! I in 32-bit), which `clip._transform` applies before its own `convert("RGB")`.

use image::RgbImage;

use crate::resample;

/// A Pillow image mode, as `Image.open(..).mode` reports it for the files this crate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PilMode {
    /// "1": bilevel, stored as 0 or 255.
    Bilevel,
    /// "L": 8-bit grey.
    L,
    /// "LA": grey + alpha.
    La,
    /// "P": palette indices (held here already looked up through the palette, as RGB).
    P,
    /// "RGB".
    Rgb,
    /// "RGBA" (straight alpha).
    Rgba,
    /// "CMYK" (after Pillow's JPEG "CMYK;I" inversion where that applies).
    Cmyk,
    /// "I": 32-bit signed integer grey (16-bit PNGs).
    I,
    /// "I;16": 16-bit grey (16-bit TIFFs). Pillow 9.3 cannot resize this mode; see
    /// [`SourceImage::resize_bicubic`].
    I16,
}

impl PilMode {
    /// Pillow's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            PilMode::Bilevel => "1",
            PilMode::L => "L",
            PilMode::La => "LA",
            PilMode::P => "P",
            PilMode::Rgb => "RGB",
            PilMode::Rgba => "RGBA",
            PilMode::Cmyk => "CMYK",
            PilMode::I => "I",
            PilMode::I16 => "I;16",
        }
    }

    /// Interleaved samples per pixel in [`SourceImage`]'s buffer.
    fn channels(self) -> usize {
        match self {
            PilMode::Bilevel | PilMode::L | PilMode::I | PilMode::I16 => 1,
            PilMode::La => 2,
            PilMode::P | PilMode::Rgb => 3,
            PilMode::Rgba | PilMode::Cmyk => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Samples {
    U8(Vec<u8>),
    I32(Vec<i32>),
}

/// A decoded image, kept in the mode Pillow would hold it in.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceImage {
    width: u32,
    height: u32,
    mode: PilMode,
    samples: Samples,
}

/// `MULDIV255` of `libImaging/ImagingUtils.h`.
#[inline]
fn muldiv255(a: u32, b: u32) -> u8 {
    let t = a * b + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// `CLIP8((255 * v) / alpha)`, the un-premultiply of `rgba2rgbA` / `la2lA`.
#[inline]
fn unpremultiply(v: u8, alpha: u8) -> u8 {
    if alpha == 255 || alpha == 0 {
        v
    } else {
        ((255 * u32::from(v)) / u32::from(alpha)).min(255) as u8
    }
}

impl SourceImage {
    /// Wraps 8-bit samples; `None` if the buffer length does not match the mode and size.
    pub(crate) fn from_u8(width: u32, height: u32, mode: PilMode, data: Vec<u8>) -> Option<Self> {
        let expected = (width as usize)
            .checked_mul(height as usize)?
            .checked_mul(mode.channels())?;
        if matches!(mode, PilMode::I | PilMode::I16) || data.len() != expected {
            return None;
        }
        Some(SourceImage {
            width,
            height,
            mode,
            samples: Samples::U8(data),
        })
    }

    /// Wraps 32-bit grey samples (mode I or I;16).
    pub(crate) fn from_i32(width: u32, height: u32, mode: PilMode, data: Vec<i32>) -> Option<Self> {
        let expected = (width as usize).checked_mul(height as usize)?;
        if !matches!(mode, PilMode::I | PilMode::I16) || data.len() != expected {
            return None;
        }
        Some(SourceImage {
            width,
            height,
            mode,
            samples: Samples::I32(data),
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The Pillow mode the image was decoded in.
    pub fn mode(&self) -> PilMode {
        self.mode
    }

    /// Pillow's `convert("RGB")`: L/"1" replicated, LA/RGBA alpha dropped, P through the palette,
    /// CMYK by `cmyk2rgb`, I and I;16 clamped to 0..=255 and replicated.
    pub fn to_rgb(&self) -> RgbImage {
        let n = self.width as usize * self.height as usize;
        let mut out = Vec::with_capacity(n * 3);
        match (&self.samples, self.mode) {
            (Samples::U8(d), PilMode::Rgb | PilMode::P) => out.extend_from_slice(d),
            (Samples::U8(d), PilMode::L | PilMode::Bilevel) => {
                for &v in d {
                    out.extend_from_slice(&[v, v, v]);
                }
            }
            (Samples::U8(d), PilMode::La) => {
                for p in d.chunks_exact(2) {
                    out.extend_from_slice(&[p[0], p[0], p[0]]);
                }
            }
            (Samples::U8(d), PilMode::Rgba) => {
                for p in d.chunks_exact(4) {
                    out.extend_from_slice(&p[..3]);
                }
            }
            (Samples::U8(d), PilMode::Cmyk) => {
                for p in d.chunks_exact(4) {
                    let nk = 255 - u32::from(p[3]);
                    for &c in &p[..3] {
                        // CLIP8(nk - MULDIV255(c, nk)); never negative since MULDIV255(c, nk) <= nk.
                        out.push((nk - u32::from(muldiv255(u32::from(c), nk))) as u8);
                    }
                }
            }
            (Samples::I32(d), _) => {
                for &v in d {
                    let g = v.clamp(0, 255) as u8;
                    out.extend_from_slice(&[g, g, g]);
                }
            }
            (Samples::U8(_), PilMode::I | PilMode::I16) => unreachable!("constructors forbid this"),
        }
        RgbImage::from_raw(self.width, self.height, out).expect("buffer sized from dimensions")
    }

    /// Pillow 9.3 `Image.resize((width, height), Image.BICUBIC)` in this image's mode:
    /// the same size is a copy; "1" and P use nearest neighbour; LA and RGBA are resized
    /// premultiplied (`LA→La`, `RGBA→RGBa`) and converted back; L, RGB, CMYK use the 8-bit kernel
    /// and I the 32-bit one. Pillow 9.3 refuses to resize I;16 ("image has wrong mode"); here I;16 is
    /// resized like I, which gives what Pillow gives for the same data opened as a 16-bit PNG.
    /// A zero target size gives an empty image.
    pub fn resize_bicubic(&self, width: u32, height: u32) -> SourceImage {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        let (w, h, ow, oh) = (
            self.width as usize,
            self.height as usize,
            width as usize,
            height as usize,
        );
        let samples = match (&self.samples, self.mode) {
            (Samples::U8(d), PilMode::Bilevel | PilMode::P) => {
                Samples::U8(resample::nearest_u8(d, w, h, self.mode.channels(), ow, oh))
            }
            (Samples::U8(d), PilMode::L | PilMode::Rgb | PilMode::Cmyk) => {
                Samples::U8(resample::resample_u8(d, w, h, self.mode.channels(), ow, oh))
            }
            (Samples::U8(d), PilMode::Rgba) => {
                let mut pre = d.clone();
                for p in pre.chunks_exact_mut(4) {
                    let a = u32::from(p[3]);
                    for c in &mut p[..3] {
                        *c = muldiv255(u32::from(*c), a);
                    }
                }
                let mut r = resample::resample_u8(&pre, w, h, 4, ow, oh);
                for p in r.chunks_exact_mut(4) {
                    let a = p[3];
                    for c in &mut p[..3] {
                        *c = unpremultiply(*c, a);
                    }
                }
                Samples::U8(r)
            }
            (Samples::U8(d), PilMode::La) => {
                let mut pre = d.clone();
                for p in pre.chunks_exact_mut(2) {
                    p[0] = muldiv255(u32::from(p[0]), u32::from(p[1]));
                }
                let mut r = resample::resample_u8(&pre, w, h, 2, ow, oh);
                for p in r.chunks_exact_mut(2) {
                    p[0] = unpremultiply(p[0], p[1]);
                }
                Samples::U8(r)
            }
            (Samples::I32(d), _) => Samples::I32(resample::resample_i32(d, w, h, ow, oh)),
            (Samples::U8(_), PilMode::I | PilMode::I16) => unreachable!("constructors forbid this"),
        };
        SourceImage {
            width,
            height,
            mode: self.mode,
            samples,
        }
    }
}

impl From<RgbImage> for SourceImage {
    fn from(img: RgbImage) -> Self {
        SourceImage {
            width: img.width(),
            height: img.height(),
            mode: PilMode::Rgb,
            samples: Samples::U8(img.into_raw()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muldiv255_matches_exact_rounding() {
        for a in 0..=255u32 {
            for b in 0..=255u32 {
                let exact = (f64::from(a * b) / 255.0).round() as u32;
                assert_eq!(u32::from(muldiv255(a, b)), exact, "{a}*{b}");
            }
        }
    }

    #[test]
    fn constructors_check_lengths() {
        assert!(SourceImage::from_u8(2, 2, PilMode::Rgb, vec![0; 12]).is_some());
        assert!(SourceImage::from_u8(2, 2, PilMode::Rgb, vec![0; 11]).is_none());
        assert!(SourceImage::from_u8(2, 2, PilMode::I, vec![0; 4]).is_none());
        assert!(SourceImage::from_i32(2, 2, PilMode::I, vec![0; 4]).is_some());
        assert!(SourceImage::from_i32(2, 2, PilMode::L, vec![0; 4]).is_none());
    }

    #[test]
    fn cmyk_to_rgb_follows_pillow() {
        // nk = 255 - k; out = nk - MULDIV255(c, nk)
        let img = SourceImage::from_u8(1, 1, PilMode::Cmyk, vec![0, 128, 255, 55]).unwrap();
        let rgb = img.to_rgb();
        assert_eq!(rgb.as_raw(), &vec![200, 100, 0]);
    }
}
