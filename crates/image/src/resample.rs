//! Pillow 9.x resampling kernels, bit-exact: the separable antialiased convolution of
//! `libImaging/Resample.c` (bicubic, a = −0.5) for 8-bit bands in 22-bit fixed point and for 32-bit
//! integer bands in `f64`, and the nearest-neighbour affine scale of `libImaging/Geometry.c`
//! (`ImagingScaleAffine`) that `Image.resize` uses for modes "1" and "P".
//!
//! Buffers are interleaved, `channels` samples per pixel, rows top to bottom.

/// Fixed-point fraction bits of the 8-bit kernels: `32 - 8 - 2`.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `bicubic_filter` with `a = -0.5`, operation for operation.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Filter taps for one axis: for each output index, the first input index and the weights.
struct Coeffs {
    /// Maximum taps per output sample (row stride of `weights`).
    ksize: usize,
    /// `(xmin, count)` per output sample.
    bounds: Vec<(usize, usize)>,
    /// `ksize` normalised weights per output sample; entries past `count` are zero.
    weights: Vec<f64>,
}

/// `precompute_coeffs` for the box `[0, in_size)` (Pillow passes the box as C `float`s).
fn precompute(in_size: usize, out_size: usize) -> Coeffs {
    const SUPPORT: f64 = 2.0; // bicubic
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0.0f64; out_size * ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts with `(int)`, i.e. truncation toward zero, then clamps.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let count = (xmax - xmin).max(0) as usize;
        let k = &mut weights[xx * ksize..xx * ksize + ksize];
        let mut ww = 0.0f64;
        for (x, kx) in k.iter_mut().enumerate().take(count) {
            let w = bicubic((((x as i64 + xmin) as f64) - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        if ww != 0.0 {
            for kx in k.iter_mut().take(count) {
                *kx /= ww;
            }
        }
        bounds.push((xmin as usize, count));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

/// `normalize_coeffs_8bpc`: weights to 22-bit fixed point, rounding half away from zero.
fn fixed_point(c: &Coeffs) -> Vec<i32> {
    let one = f64::from(1u32 << PRECISION_BITS);
    c.weights
        .iter()
        .map(|&k| {
            if k < 0.0 {
                (-0.5 + k * one) as i32
            } else {
                (0.5 + k * one) as i32
            }
        })
        .collect()
}

/// `clip8`: drop the fraction bits and clamp to 0..=255.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Pillow `ImagingResample(im, (out_w, out_h), BICUBIC)` for 8-bit bands (modes L, LA→La, RGB,
/// RGBA→RGBa, CMYK). A pass whose size is unchanged is skipped; the horizontal pass runs first and
/// only over the rows the vertical pass reads, as in `ImagingResampleInner`.
pub(crate) fn resample_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), width * height * channels);
    if out_w == 0 || out_h == 0 || width == 0 || height == 0 {
        return vec![0; out_w * out_h * channels];
    }
    let need_h = out_w != width;
    let need_v = out_h != height;
    let vert = precompute(height, out_h);
    // Rows of the source the vertical pass uses.
    let (ybox_first, _) = vert.bounds[0];
    let (lmin, lcount) = vert.bounds[out_h - 1];
    let ybox_last = lmin + lcount;

    let mut cur: std::borrow::Cow<'_, [u8]> = std::borrow::Cow::Borrowed(src);
    let mut cur_w = width;
    let mut row_offset = 0usize; // source row held in `cur`'s first row
    if need_h {
        let horiz = precompute(width, out_w);
        let kk = fixed_point(&horiz);
        let rows = ybox_last - ybox_first;
        let band = &src[ybox_first * width * channels..ybox_last * width * channels];
        let out = match channels {
            1 => horizontal_u8::<1>(band, width, rows, out_w, &horiz, &kk),
            2 => horizontal_u8::<2>(band, width, rows, out_w, &horiz, &kk),
            3 => horizontal_u8::<3>(band, width, rows, out_w, &horiz, &kk),
            4 => horizontal_u8::<4>(band, width, rows, out_w, &horiz, &kk),
            _ => unreachable!("Pillow images have 1 to 4 bands"),
        };
        cur = std::borrow::Cow::Owned(out);
        cur_w = out_w;
        row_offset = ybox_first;
    }
    if need_v {
        let kk = fixed_point(&vert);
        let stride = cur_w * channels;
        let mut out = vec![0u8; out_h * stride];
        let mut acc = vec![0i32; stride];
        for (yy, &(ymin, count)) in vert.bounds.iter().enumerate() {
            let k = &kk[yy * vert.ksize..][..count];
            let base = ymin - row_offset;
            acc.fill(HALF);
            for (y, &ky) in k.iter().enumerate() {
                let row = &cur[(base + y) * stride..][..stride];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += i32::from(v) * ky;
                }
            }
            for (o, &a) in out[yy * stride..][..stride].iter_mut().zip(&acc) {
                *o = clip8(a);
            }
        }
        return out;
    }
    if need_h {
        // Only the horizontal pass ran; it covered every row because the height is unchanged.
        return cur.into_owned();
    }
    src.to_vec()
}

/// The horizontal 8-bit pass over `rows` rows with `C` interleaved bands.
fn horizontal_u8<const C: usize>(
    band: &[u8],
    width: usize,
    rows: usize,
    out_w: usize,
    horiz: &Coeffs,
    kk: &[i32],
) -> Vec<u8> {
    let mut out = vec![0u8; out_w * rows * C];
    for (in_row, out_row) in band
        .chunks_exact(width * C)
        .zip(out.chunks_exact_mut(out_w * C))
        .take(rows)
    {
        for (xx, (&(xmin, count), o)) in horiz
            .bounds
            .iter()
            .zip(out_row.chunks_exact_mut(C))
            .enumerate()
        {
            let k = &kk[xx * horiz.ksize..][..count];
            let px = &in_row[xmin * C..][..count * C];
            let mut ss = [HALF; C];
            for (p, &kx) in px.chunks_exact(C).zip(k) {
                for c in 0..C {
                    ss[c] += i32::from(p[c]) * kx;
                }
            }
            for c in 0..C {
                o[c] = clip8(ss[c]);
            }
        }
    }
    out
}

/// `ROUND_UP` of Resample.c: `(int)(f >= 0 ? f + 0.5F : f - 0.5F)`.
#[inline]
fn round_up(f: f64) -> i32 {
    if f >= 0.0 {
        (f + 0.5) as i32
    } else {
        (f - 0.5) as i32
    }
}

/// Pillow `ImagingResample` for one 32-bit integer band (mode "I"): `f64` weights, rounded after
/// each pass.
pub(crate) fn resample_i32(
    src: &[i32],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<i32> {
    if out_w == 0 || out_h == 0 || width == 0 || height == 0 {
        return vec![0; out_w * out_h];
    }
    let need_h = out_w != width;
    let need_v = out_h != height;
    let vert = precompute(height, out_h);
    let (ybox_first, _) = vert.bounds[0];
    let (lmin, lcount) = vert.bounds[out_h - 1];
    let ybox_last = lmin + lcount;
    let mut cur: Vec<i32> = Vec::new();
    let mut cur_w = width;
    let mut row_offset = 0;
    if need_h {
        let horiz = precompute(width, out_w);
        let rows = ybox_last - ybox_first;
        cur = vec![0; out_w * rows];
        for y in 0..rows {
            let in_row = &src[(y + ybox_first) * width..][..width];
            for (xx, &(xmin, count)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.weights[xx * horiz.ksize..][..count];
                let mut ss = 0.0f64;
                for (x, &kx) in k.iter().enumerate() {
                    ss += f64::from(in_row[x + xmin]) * kx;
                }
                cur[y * out_w + xx] = round_up(ss);
            }
        }
        cur_w = out_w;
        row_offset = ybox_first;
    }
    let input: &[i32] = if need_h { &cur } else { src };
    if need_v {
        let mut out = vec![0; out_h * cur_w];
        for (yy, &(ymin, count)) in vert.bounds.iter().enumerate() {
            let k = &vert.weights[yy * vert.ksize..][..count];
            for xx in 0..cur_w {
                let mut ss = 0.0f64;
                for (y, &ky) in k.iter().enumerate() {
                    ss += f64::from(input[(ymin - row_offset + y) * cur_w + xx]) * ky;
                }
                out[yy * cur_w + xx] = round_up(ss);
            }
        }
        return out;
    }
    input.to_vec()
}

/// `ImagingScaleAffine` with `fill = 1`, as `Image.resize` runs it for NEAREST (modes "1", "P"):
/// sample positions accumulate in `f64` from `scale / 2` in steps of `scale`; an output pixel whose
/// position falls outside the input stays zero.
pub(crate) fn nearest_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    if out_w == 0 || out_h == 0 {
        return vec![0; out_w * out_h * channels];
    }
    let ax = f64::from(width as f32) / out_w as f64;
    let ay = f64::from(height as f32) / out_h as f64;
    let coord = |v: f64| -> i64 {
        if v < 0.0 {
            -1
        } else {
            v as i64
        }
    };
    let mut xin = Vec::with_capacity(out_w);
    let mut xo = ax * 0.5;
    for _ in 0..out_w {
        let x = coord(xo);
        xin.push((x >= 0 && x < width as i64).then_some(x as usize));
        xo += ax;
    }
    let mut out = vec![0u8; out_w * out_h * channels];
    let mut yo = ay * 0.5;
    for y in 0..out_h {
        let yi = coord(yo);
        if yi >= 0 && yi < height as i64 {
            let in_row = &src[yi as usize * width * channels..][..width * channels];
            let out_row = &mut out[y * out_w * channels..][..out_w * channels];
            for (x, xi) in xin.iter().enumerate() {
                if let Some(xi) = xi {
                    out_row[x * channels..][..channels]
                        .copy_from_slice(&in_row[xi * channels..][..channels]);
                }
            }
        }
        yo += ay;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_kernel_shape() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert_eq!(bicubic(-0.5), bicubic(0.5));
        // a = -0.5: f(0.5) = (1.5*0.5 - 2.5)*0.25 + 1 = 0.5625
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(1.5), -0.0625);
    }

    #[test]
    fn coefficients_sum_to_one_and_stay_in_bounds() {
        for &(i, o) in &[(640usize, 298usize), (5, 17), (224, 224), (1000, 1)] {
            let c = precompute(i, o);
            for (xx, &(xmin, count)) in c.bounds.iter().enumerate() {
                assert!(xmin + count <= i);
                let s: f64 = c.weights[xx * c.ksize..][..count].iter().sum();
                assert!((s - 1.0).abs() < 1e-12, "{i}->{o} row {xx}: {s}");
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 13 * 9 * 3];
        let out = resample_u8(&src, 13, 9, 3, 31, 4);
        assert_eq!(out.len(), 31 * 4 * 3);
        assert!(out.iter().all(|&v| v == 77));
    }
}
