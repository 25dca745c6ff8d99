//! Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2016) for the f32 3×3 stride-1 convolutions of the exact RN50x64 tower.
//!
//! Each 2×2 block of outputs is computed from the 4×4 block of inputs around it as
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: 16 multiplications per channel pair instead of the 36 of the
//! direct convolution, so a layer costs 16 GEMMs of `[K, C] × [C, tiles]` (a quarter of the
//! outputs as columns) in place of one GEMM of `[K, 9C] × [9C, outputs]`: 2.25× fewer products.
//! On RN50x64 at 448 px the 3×3 convolutions are 55% of the tower's 507 GFLOP.
//!
//! The transforms' coefficients are 0, ±1 and ½, so the result differs from the direct
//! convolution only by rounding: the filters are transformed once in f64, the inputs and
//! outputs with a few additions in f32. The tests bound the error against the definition in f64.
//!
//! An image runs in bands of whole tile rows (about 256 tiles each, so the GEMMs stay wide and
//! the buffers small enough to be reused instead of faulted in afresh): each channel's input
//! blocks are transformed into `[C][16][tiles]` by one task, the 16 GEMMs run side by side (one
//! thread each, the `gemm` crate reading plane ξ with a row stride of `16 · tiles`) into
//! `[16][K][tiles]`, and each output channel is transformed back by one task.
//!
//! F(4×4, 3×3) (36 products per 16 outputs) was measured too and left out: on the 2-core AMD
//! Zen 4 machine of BENCHMARKS.md its layers were between 1.2× faster and 1.2× slower than
//! F(2×2, 3×3)'s (narrow GEMMs at 28 × 28 and 14 × 14), its filters take 2.25× the memory
//! (RN50x64's layer 3 alone: 1.36 GB against 0.60 GB), and its rounding error is ten times
//! larger.

use rayon::prelude::*;

/// Inputs per tile side (`m + 2` for m×m outputs).
const A: usize = 4;
/// Outputs per tile side.
const M: usize = 2;

/// `G` of F(2×2, 3×3) (interpolation points 0, ±1, ∞), in f64: the filters are transformed
/// once, at load time. (`Bᵀ` and `Aᵀ` are written out in the transforms below.)
const G: [[f64; 3]; A] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// `G (s·g) Gᵀ` for one 3×3 filter `g` (row-major) scaled by `s`, in f64, row-major `A`×`A`.
fn transform_filter(g: &[f32], s: f32) -> [[f64; A]; A] {
    // G applied to three values (a column of g, then a row of G g).
    let g_times = |v: [f64; 3]| -> [f64; A] {
        std::array::from_fn(|r| G[r][0] * v[0] + G[r][1] * v[1] + G[r][2] * v[2])
    };
    let s = s as f64;
    let cols: [[f64; A]; 3] =
        std::array::from_fn(|c| g_times([0, 3, 6].map(|r| g[r + c] as f64 * s)));
    std::array::from_fn(|r| g_times([cols[0][r], cols[1][r], cols[2][r]]))
}

/// A 3×3, stride 1, padding 1 convolution with a bias, its filters transformed for
/// F(2×2, 3×3).
#[derive(Debug, Clone)]
pub struct Winograd3x3 {
    /// `U[ξ] = (G g Gᵀ)[ξ]`: `A²` row-major `[K, C]` matrices.
    u: Vec<f32>,
    bias: Vec<f32>,
    k: usize,
    c: usize,
}

impl Winograd3x3 {
    /// The convolution `scale[k] · weight[k] * x + bias[k]` from the weight `[K, C, 3, 3]`
    /// (row-major), a per-output-channel `scale` `[K]` (a BatchNorm folded in; ones for none) and
    /// the bias `[K]`.
    ///
    /// Panics if the lengths do not match `k` and `c` (the caller loaded them with these shapes).
    pub fn new(weight: &[f32], scale: &[f32], bias: &[f32], k: usize, c: usize) -> Self {
        assert!(
            weight.len() == k * c * 9 && scale.len() == k && bias.len() == k,
            "Winograd3x3: a [{k}, {c}, 3, 3] weight, a [{k}] scale and a [{k}] bias expected"
        );
        Self {
            u: transform_filters(weight, scale, k, c),
            bias: bias.to_vec(),
            k,
            c,
        }
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.k
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.c
    }

    /// The convolution of one image `x` `[C, h, w]` (row-major), `[K, h, w]` out.
    ///
    /// Panics if `x.len() != C · h · w`.
    pub fn forward(&self, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (k, c) = (self.k, self.c);
        assert_eq!(
            x.len(),
            c * h * w,
            "Winograd3x3: input is not [{c}, {h}, {w}]"
        );
        let mut y = vec![0f32; k * h * w];
        if h == 0 || w == 0 {
            return y;
        }
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        // Bands of whole tile rows, about BAND_TILES tiles each: the GEMMs stay wide and the
        // buffers small enough to be reused rather than faulted in afresh for every image.
        let band = BAND_TILES.div_ceil(tw).min(th);
        let planes = A * A;
        let mut v = vec![0f32; c * planes * band * tw];
        let mut m = vec![0f32; k * planes * band * tw];
        for i0 in (0..th).step_by(band) {
            let rows = band.min(th - i0);
            let tiles = rows * tw;
            let v = &mut v[..c * planes * tiles];
            let m = &mut m[..k * planes * tiles];
            v.par_chunks_mut(planes * tiles)
                .zip(x.par_chunks(h * w))
                .for_each(|(out, plane)| input_transform(plane, (h, w), (i0, rows, tw), out));
            // The A² GEMMs side by side, one thread each (m is [A²][K][tiles]): as wide as
            // the machine without splitting a small product across threads.
            let v = &*v;
            m.par_chunks_mut(k * tiles)
                .enumerate()
                .for_each(|(xi, dst)| {
                    let lhs = &self.u[xi * k * c..(xi + 1) * k * c];
                    let rhs = &v[xi * tiles..];
                    // SAFETY: dst is `dst`, the row-major K × tiles slice of `m` for ξ; lhs is the
                    // row-major K × C slice `lhs`; rhs is the C × tiles matrix at offset ξ·tiles of
                    // `v` ([C][A²][tiles], C·A²·tiles long) with row stride A²·tiles: its last
                    // element is v[(C-1)·A²·tiles + ξ·tiles + tiles - 1], inside `v` as ξ < A², so
                    // the matrix lies within `rhs` (= &v[ξ·tiles..]). `dst` is written only by
                    // this task and overlaps neither input.
                    unsafe {
                        gemm::gemm(
                            k,
                            tiles,
                            c,
                            dst.as_mut_ptr(),
                            1,
                            tiles as isize,
                            false,
                            lhs.as_ptr(),
                            1,
                            c as isize,
                            rhs.as_ptr(),
                            1,
                            (planes * tiles) as isize,
                            0.0f32,
                            1.0f32,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                });
            let m = &*m;
            y.par_chunks_mut(h * w)
                .zip(&self.bias)
                .enumerate()
                .for_each(|(ko, (out, &b))| {
                    let plane = |xi: usize| &m[(xi * k + ko) * tiles..(xi * k + ko + 1) * tiles];
                    output_transform(plane, b, (h, w), (i0, rows, tw), out)
                });
        }
        y
    }
}

/// The `A²` planes `[K, C]` of every filter, transformed and scaled.
fn transform_filters(weight: &[f32], scale: &[f32], k: usize, c: usize) -> Vec<f32> {
    // Each output channel's A² rows (one in each plane), written by one task.
    let mut u = vec![0f32; A * A * k * c];
    let mut rows: Vec<Vec<&mut [f32]>> = (0..k).map(|_| Vec::with_capacity(A * A)).collect();
    for plane in u.chunks_mut(k * c) {
        for (r, row) in rows.iter_mut().zip(plane.chunks_mut(c)) {
            r.push(row);
        }
    }
    rows.into_par_iter()
        .zip(weight.par_chunks(c * 9))
        .zip(scale)
        .for_each(|((mut out, filters), &s)| {
            for (ci, g) in filters.chunks_exact(9).enumerate() {
                let t = transform_filter(g, s);
                for (xi, v) in t.iter().flatten().enumerate() {
                    out[xi][ci] = *v as f32;
                }
            }
        });
    u
}

/// The tiles of one band (the GEMMs' width), rounded up to whole tile rows.
const BAND_TILES: usize = 256;

/// `Bᵀ d B` of the 4×4 input blocks of tile rows `i0 … i0 + band` of one channel `plane`
/// `[h, w]` (zero-padded by one on the top and left, by what the tiles need on the bottom and
/// right), into `out` `[16][band · tw]`: `Bᵀ` down the columns across the whole width, then
/// `B` along each tile's four columns (`Bᵀ` = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
/// [0, 1, 0, -1]]).
fn input_transform(
    plane: &[f32],
    (h, w): (usize, usize),
    (i0, band, tw): (usize, usize, usize),
    out: &mut [f32],
) {
    let tiles = band * tw;
    let pw = M * tw + 2;
    let mut rows = vec![0f32; A * pw];
    let mut t = vec![0f32; A * pw];
    for i in 0..band {
        // Padded row 2·(i0 + i) + r is input row 2·(i0 + i) + r - 1.
        for (r, row) in rows.chunks_exact_mut(pw).enumerate() {
            row.fill(0.0);
            let iy = (M * (i0 + i) + r) as isize - 1;
            if iy >= 0 && (iy as usize) < h {
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                row[1..1 + w].copy_from_slice(src);
            }
        }
        let (r0, rest) = rows.split_at(pw);
        let (r1, rest) = rest.split_at(pw);
        let (r2, r3) = rest.split_at(pw);
        let (t0, rest) = t.split_at_mut(pw);
        let (t1, rest) = rest.split_at_mut(pw);
        let (t2, t3) = rest.split_at_mut(pw);
        for q in 0..pw {
            t0[q] = r0[q] - r2[q];
            t1[q] = r1[q] + r2[q];
            t2[q] = r2[q] - r1[q];
            t3[q] = r1[q] - r3[q];
        }
        for (r, tr) in [&*t0, &*t1, &*t2, &*t3].into_iter().enumerate() {
            let base = A * r * tiles + i * tw;
            for j in 0..tw {
                let (a, b, c, d) = (tr[2 * j], tr[2 * j + 1], tr[2 * j + 2], tr[2 * j + 3]);
                out[base + j] = a - c;
                out[base + tiles + j] = b + c;
                out[base + 2 * tiles + j] = c - b;
                out[base + 3 * tiles + j] = b - d;
            }
        }
    }
}

/// `Aᵀ m A + bias` of the tiles of one output channel in tile rows `i0 … i0 + band`, plane ξ
/// of them (`[band · tw]`) given by `m(ξ)`, into their rows of `out` `[h, w]` (the last tiles'
/// row and column past `h` and `w` dropped); `Aᵀ` = [[1, 1, 1, 0], [0, 1, -1, -1]].
fn output_transform<'a>(
    m: impl Fn(usize) -> &'a [f32],
    bias: f32,
    (h, w): (usize, usize),
    (i0, band, tw): (usize, usize, usize),
    out: &mut [f32],
) {
    let planes: [&[f32]; A * A] = std::array::from_fn(&m);
    let mut y0 = vec![0f32; M * tw];
    let mut y1 = vec![0f32; M * tw];
    for i in 0..band {
        for j in 0..tw {
            let p = i * tw + j;
            let m = |r: usize, s: usize| planes[A * r + s][p];
            // Aᵀ m: two rows of four.
            let a: [f32; A] = std::array::from_fn(|s| m(0, s) + m(1, s) + m(2, s));
            let b: [f32; A] = std::array::from_fn(|s| m(1, s) - m(2, s) - m(3, s));
            y0[2 * j] = a[0] + a[1] + a[2] + bias;
            y0[2 * j + 1] = a[1] - a[2] - a[3] + bias;
            y1[2 * j] = b[0] + b[1] + b[2] + bias;
            y1[2 * j + 1] = b[1] - b[2] - b[3] + bias;
        }
        let oy = M * (i0 + i);
        out[oy * w..(oy + 1) * w].copy_from_slice(&y0[..w]);
        if oy + 1 < h {
            out[(oy + 1) * w..(oy + 2) * w].copy_from_slice(&y1[..w]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test data uniform in [-1, 1), reproducible from `seed`.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = smallcap_util::rng::SplitMix64(seed);
        (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect()
    }

    /// The definition, in f64:
    /// `y[k, oy, ox] = b[k] + Σ s[k] w[k, c, dy, dx] x[c, oy+dy-1, ox+dx-1]`,
    /// with `Σ |w x| + |b|` beside it (the scale the rounding error is measured against).
    fn direct(
        x: &[f32],
        wt: &[f32],
        scale: &[f32],
        b: &[f32],
        (k, c, h, w): (usize, usize, usize, usize),
    ) -> Vec<(f64, f64)> {
        let mut y = vec![(0f64, 0f64); k * h * w];
        for ko in 0..k {
            for oy in 0..h {
                for ox in 0..w {
                    let (mut s, mut a) = (b[ko] as f64, (b[ko] as f64).abs());
                    for ci in 0..c {
                        for dy in 0..3 {
                            for dx in 0..3 {
                                let (iy, ix) =
                                    (oy as isize + dy as isize - 1, ox as isize + dx as isize - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let p = scale[ko] as f64
                                    * wt[((ko * c + ci) * 3 + dy) * 3 + dx] as f64
                                    * x[(ci * h + iy as usize) * w + ix as usize] as f64;
                                s += p;
                                a += p.abs();
                            }
                        }
                    }
                    y[(ko * h + oy) * w + ox] = (s, a);
                }
            }
        }
        y
    }

    /// The largest error against the definition, in units of the scale (the sum of the
    /// absolute products), over one random case.
    fn relative_error((k, c, h, w): (usize, usize, usize, usize), seed: u64) -> f64 {
        let x = values(c * h * w, seed);
        let wt = values(k * c * 9, seed + 1);
        let b = values(k, seed + 2);
        let scale: Vec<f32> = values(k, seed + 3).iter().map(|v| v + 1.5).collect();
        let conv = Winograd3x3::new(&wt, &scale, &b, k, c);
        let y = conv.forward(&x, h, w);
        let want = direct(&x, &wt, &scale, &b, (k, c, h, w));
        assert_eq!(y.len(), want.len());
        y.iter()
            .zip(&want)
            .map(|(&got, &(v, scale))| (got as f64 - v).abs() / scale)
            .fold(0.0, f64::max)
    }

    #[test]
    fn matches_the_definition() {
        // Even and odd sizes (the last tiles cut), smaller than a tile, one channel, and a
        // 56 × 30 image in two bands (BAND_TILES = 256: 18 and then 10 tile rows of 15 tiles).
        let shapes = [
            (4, 3, 8, 8),
            (16, 32, 14, 14),
            (5, 64, 6, 10),
            (3, 2, 7, 5),
            (2, 5, 1, 1),
            (1, 1, 3, 2),
            (7, 9, 1, 6),
            (6, 17, 9, 9),
            (3, 4, 5, 13),
            (8, 128, 12, 4),
            (3, 5, 56, 30),
        ];
        for (i, shape) in shapes.into_iter().enumerate() {
            // A wrong tap, tile, band or border is off by about one product: ≥ 1e-3 of the
            // scale here. Rounding measured 0.1e-7 to 1.6e-7 of it (a few units of f32's
            // epsilon, 1.2e-7, through transforms whose coefficients are 0, ±1 and ½).
            let e = relative_error(shape, i as u64 + 1);
            assert!(e <= 5e-7, "{shape:?}: error {e:e} of the scale");
        }
    }

    #[test]
    fn transforms_a_filter_as_g_g_gt() {
        // A single tap at the centre: G g Gᵀ = (G e₁)(G e₁)ᵀ with G e₁ the middle column of G,
        // scaled by s².
        let mut g = [0f32; 9];
        g[4] = 1.0;
        let u = transform_filter(&g, 3.0);
        let col = [0.0, 0.5, -0.5, 0.0];
        for r in 0..4 {
            for s in 0..4 {
                assert_eq!(u[r][s], 3.0 * col[r] * col[s]);
            }
        }
    }
}
