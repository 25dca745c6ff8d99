//! bf16 matrix products with f32 accumulation, and f32 operands split into bf16 parts so that
//! the same products reach f32's accuracy.
//!
//! The unit of work is a 32 × 32 block of C accumulated over a list of [`Step`]s, each a 32 × 32
//! piece of A (two 16-row tiles, rows at a byte stride) times a 32 × 32 piece of B packed in
//! the pair-interleaved layout of the tile unit ([`pack_b`]). Three [`Level`]s compute it: AMX
//! ([`super::amx`]), AVX-512 BF16 (`vdpbf16ps`) and a portable loop; [`Level::detect`] picks the
//! best this CPU has and `SMALLCAP_BF16_KERNEL=amx|avx512|portable` forces one (tests force
//! each).
//!
//! Splitting: an f32 `x` is written as `hi + mid + lo`, each a bf16 ([`split`]); a product of
//! two split numbers keeps the terms whose parts sum to less than the part count
//! ([`Split::products`]): two parts (3 products) hold about 16 of f32's 24 mantissa bits, three
//! parts (6 products) all of them.

use std::sync::OnceLock;

/// One 32 × 32 × 32 piece of a block product: A rows 0–15 from `a0`, rows 16–31 from `a1`
/// (each row 32 consecutive bf16, rows at the block's stride), B packed ([`pack_b`]) at `b`.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub a0: *const u16,
    pub a1: *const u16,
    pub b: *const u16,
}

/// Which implementation computes the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The tile unit (`tdpbf16ps`).
    Amx,
    /// AVX-512 BF16 (`vdpbf16ps`).
    Avx512,
    /// Plain loops (any CPU).
    Portable,
}

impl Level {
    /// The best level this CPU runs, or the one `SMALLCAP_BF16_KERNEL` names (a level the CPU
    /// lacks is not taken: the next one down is).
    pub fn detect() -> Level {
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let forced = std::env::var("SMALLCAP_BF16_KERNEL").ok();
            let best = Self::best();
            match forced.as_deref() {
                Some("portable") => Level::Portable,
                Some("avx512") if best != Level::Portable => Level::Avx512,
                _ => best,
            }
        })
    }

    /// The best level of this CPU.
    pub fn best() -> Level {
        if super::amx::available() {
            Level::Amx
        } else if avx512_bf16_available() {
            Level::Avx512
        } else {
            Level::Portable
        }
    }

    /// Whether this CPU can run `self`.
    pub fn runs_here(self) -> bool {
        match self {
            Level::Amx => super::amx::available(),
            Level::Avx512 => avx512_bf16_available(),
            Level::Portable => true,
        }
    }
}

fn avx512_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `c = Σ_steps A_s · B_s` for one 32 × 32 block (`lda`: bytes between A rows).
///
/// # Safety
/// `level.runs_here()`, and every step's pointers readable for 16 rows of 32 bf16 at stride
/// `lda` (`a0`, `a1`) and 1024 bf16 (`b`).
pub unsafe fn block(level: Level, steps: &[Step], lda: usize, c: &mut [f32; 1024]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        Level::Amx => unsafe { super::amx::block_2x2(steps, lda, c) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        Level::Avx512 => unsafe { block_avx512(steps, lda, c) },
        // SAFETY: forwarded from the caller.
        _ => unsafe { block_portable(steps, lda, c) },
    }
}

/// The A row `r` (0..32) of a step.
///
/// # Safety
/// As [`block`].
unsafe fn a_row(s: &Step, lda: usize, r: usize) -> *const u16 {
    let (base, r) = if r < 16 { (s.a0, r) } else { (s.a1, r - 16) };
    // SAFETY: the caller guarantees 16 rows at stride `lda` from each base.
    unsafe { (base as *const u8).add(r * lda) as *const u16 }
}

unsafe fn block_portable(steps: &[Step], lda: usize, c: &mut [f32; 1024]) {
    c.fill(0.0);
    for s in steps {
        for r in 0..32 {
            // SAFETY: the caller guarantees the row and B extents.
            let a = unsafe { std::slice::from_raw_parts(a_row(s, lda, r), 32) };
            // SAFETY: as above: 1024 bf16 at `b`.
            let b = unsafe { std::slice::from_raw_parts(s.b, 1024) };
            let row = &mut c[r * 32..r * 32 + 32];
            for (n, out) in row.iter_mut().enumerate() {
                let tile = &b[(n / 16) * 512..];
                let mut acc = *out;
                for kp in 0..16 {
                    let i = kp * 32 + (n % 16) * 2;
                    acc += bf16_to_f32(a[2 * kp]) * bf16_to_f32(tile[i])
                        + bf16_to_f32(a[2 * kp + 1]) * bf16_to_f32(tile[i + 1]);
                }
                *out = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn block_avx512(steps: &[Step], lda: usize, c: &mut [f32; 1024]) {
    use std::arch::x86_64::*;
    for group in 0..4 {
        let mut acc = [[_mm512_setzero_ps(); 2]; 8];
        for s in steps {
            for kp in 0..16 {
                // SAFETY: the caller guarantees 1024 bf16 at `b`; each load is 32 of them.
                let (b0, b1) = unsafe {
                    (
                        _mm512_loadu_si512(s.b.add(kp * 32) as *const _),
                        _mm512_loadu_si512(s.b.add(512 + kp * 32) as *const _),
                    )
                };
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    // SAFETY: the row holds 32 bf16; this reads the pair at 2·kp.
                    let pair = unsafe {
                        (a_row(s, lda, group * 8 + r).add(2 * kp) as *const i32).read_unaligned()
                    };
                    let a = _mm512_set1_epi32(pair);
                    acc_r[0] = _mm512_dpbf16_ps(acc_r[0], m512bh(a), m512bh(b0));
                    acc_r[1] = _mm512_dpbf16_ps(acc_r[1], m512bh(a), m512bh(b1));
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            let row = (group * 8 + r) * 32;
            // SAFETY: `row + 32 <= 1024`.
            unsafe {
                _mm512_storeu_ps(c.as_mut_ptr().add(row), acc_r[0]);
                _mm512_storeu_ps(c.as_mut_ptr().add(row + 16), acc_r[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn m512bh(x: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512bh {
    // SAFETY: both are 512-bit vectors; a bf16 vector is the same bits read as 32 bf16.
    unsafe { std::mem::transmute(x) }
}

/// A bf16 (its bits) as f32: exact.
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 → bf16, rounding to nearest even (torch's `x.to(torch.bfloat16)` for finite values).
#[inline(always)]
pub fn bf16_round(x: f32) -> u16 {
    let bits = x.to_bits();
    // Both results, then a select: branch-free, so loops over slices vectorise.
    let quiet = (bits >> 16) | 0x40;
    let nearest = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    (if x.is_nan() { quiet } else { nearest }) as u16
}

/// How many bf16 parts an f32 operand is split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One part, rounded to nearest: bf16 products.
    One = 1,
    /// `hi + lo`: 3 products, about 16 mantissa bits.
    Two = 2,
    /// `hi + mid + lo`: 6 products, f32's 24 bits.
    Three = 3,
}

impl Split {
    /// The number of parts.
    pub fn parts(self) -> usize {
        self as usize
    }

    /// The (A part, B part) pairs whose products are kept: those with `i + j < parts`,
    /// smallest terms first.
    pub fn products(self) -> &'static [(usize, usize)] {
        match self {
            Split::One => &[(0, 0)],
            Split::Two => &[(1, 0), (0, 1), (0, 0)],
            Split::Three => &[(2, 0), (1, 1), (0, 2), (1, 0), (0, 1), (0, 0)],
        }
    }
}

/// `x` as `split.parts()` bf16 parts whose sum is `x` to the split's precision: every part but
/// the last keeps the leading 8 bits of what is left (truncation, so no part overflows), the
/// last is rounded to nearest.
#[inline(always)]
pub fn split(x: f32, split: Split) -> [u16; 3] {
    let mut out = [0u16; 3];
    let mut rest = x;
    let n = split.parts();
    for (i, o) in out.iter_mut().enumerate().take(n) {
        if i + 1 == n {
            *o = bf16_round(rest);
        } else {
            *o = (rest.to_bits() >> 16) as u16;
            rest -= bf16_to_f32(*o);
            if !rest.is_finite() {
                rest = 0.0;
            }
        }
    }
    out
}

/// Splits `rows` rows of 32 values (row `r` at `src[r * stride..][..32]`) into the parts
/// `dst[p][r * 32..][..32]` (1 to 3 parts).
pub fn split_rows(src: &[f32], stride: usize, rows: usize, dst: &mut [&mut [u16]]) {
    assert!(rows == 0 || src.len() >= (rows - 1) * stride + 32);
    assert!((1..=3).contains(&dst.len()) && dst.iter().all(|d| d.len() >= rows * 32));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { split_rows_avx512(src, stride, rows, dst) };
        return;
    }
    split_rows_plain(src, stride, rows, dst);
}

#[inline(always)]
fn split_rows_plain(src: &[f32], stride: usize, rows: usize, dst: &mut [&mut [u16]]) {
    let s = match dst.len() {
        1 => Split::One,
        2 => Split::Two,
        _ => Split::Three,
    };
    for r in 0..rows {
        let row: &[f32; 32] = src[r * stride..r * stride + 32]
            .try_into()
            .expect("32 values");
        let parts = split_row(row, s);
        for (d, p) in dst.iter_mut().zip(&parts) {
            d[r * 32..r * 32 + 32].copy_from_slice(p);
        }
    }
}

/// The parts of 32 values (parts past the split's count are zero).
#[inline(always)]
pub fn split_row(row: &[f32; 32], s: Split) -> [[u16; 32]; 3] {
    let mut parts = [[0u16; 32]; 3];
    for (i, x) in row.iter().enumerate() {
        let p = split(*x, s);
        parts[0][i] = p[0];
        parts[1][i] = p[1];
        parts[2][i] = p[2];
    }
    parts
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn split_rows_avx512(src: &[f32], stride: usize, rows: usize, dst: &mut [&mut [u16]]) {
    // The same loops, compiled for AVX-512 (the compiler vectorises the fixed-size rows).
    split_rows_plain(src, stride, rows, dst)
}

/// Packs B (`k × n`) as split parts for [`Step`]s: `column(j, col)` fills `col` (`k` values,
/// zero when it is called) with column `j < n`. Returns, per part, `n_blocks × k_steps` pieces
/// of 1024 bf16 (`k` and `n` padded to 32 with zeros), piece `(nb, ks)` at
/// `(nb * k_steps + ks) * 1024`, each two tiles of 16 pairs of K × 16 columns. Column blocks are
/// packed in parallel.
pub fn pack_b(
    k: usize,
    n: usize,
    s: Split,
    column: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<Vec<u16>> {
    use rayon::prelude::*;
    let k_steps = k.div_ceil(32);
    let n_blocks = n.div_ceil(32);
    let piece = k_steps * 1024;
    let mut parts = vec![vec![0u16; n_blocks * piece]; s.parts()];
    let mut blocks: Vec<Vec<&mut [u16]>> = (0..n_blocks).map(|_| Vec::new()).collect();
    for part in parts.iter_mut() {
        for (nb, chunk) in part.chunks_mut(piece).enumerate() {
            blocks[nb].push(chunk);
        }
    }
    let kp = k_steps * 32;
    blocks.into_par_iter().enumerate().for_each_init(
        // The block's 32 columns and, for one part, their rounding: reused across the blocks
        // of a thread.
        || (vec![0f32; 32 * kp], Vec::new()),
        |(cols, rounded), (nb, mut dst)| {
            // The block's columns (zeros past `n` and `k`), then written a K pair at a time:
            // 16 columns × 2 values of one tile row are 32 consecutive bf16.
            for (jj, col) in cols.chunks_mut(kp).enumerate() {
                col.fill(0.0);
                if nb * 32 + jj < n {
                    column(nb * 32 + jj, &mut col[..k]);
                }
            }
            if s == Split::One {
                // One part (most of a bf16 model's load): the columns are rounded as they lie,
                // then interleaved a pair of values at a time.
                rounded.clear();
                rounded.extend(cols.iter().map(|&v| bf16_round(v)));
                let part = &mut dst[0];
                for pair in 0..kp / 2 {
                    let row = (pair / 16) * 1024 + (pair % 16) * 32;
                    for half in 0..2 {
                        let at = row + half * 512;
                        for j16 in 0..16 {
                            let src = (half * 16 + j16) * kp + 2 * pair;
                            part[at + 2 * j16..at + 2 * j16 + 2]
                                .copy_from_slice(&rounded[src..src + 2]);
                        }
                    }
                }
                return;
            }
            for pair in 0..kp / 2 {
                let row = (pair / 16) * 1024 + (pair % 16) * 32;
                for half in 0..2 {
                    let at = row + half * 512;
                    let mut vals = [[0u16; 32]; 3];
                    for j16 in 0..16 {
                        let col = &cols[(half * 16 + j16) * kp..];
                        for parity in 0..2 {
                            let p = split(col[2 * pair + parity], s);
                            for (v, x) in vals.iter_mut().zip(p) {
                                v[j16 * 2 + parity] = x;
                            }
                        }
                    }
                    for (part, v) in dst.iter_mut().zip(&vals) {
                        part[at..at + 32].copy_from_slice(v);
                    }
                }
            }
        },
    );
    parts
}

/// What the kernels' tests share: uniform values in ±1 and the levels this CPU runs.
#[cfg(test)]
pub(crate) mod test_support {
    use super::Level;
    use smallcap_util::rng::SplitMix64;

    /// Uniform in `[-1, 1)`.
    pub(crate) fn uniform(rng: &mut SplitMix64) -> f32 {
        rng.next_f32() * 2.0 - 1.0
    }

    /// The largest `|got − want|`.
    pub(crate) fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(g, w)| (*g as f64 - w).abs())
            .fold(0.0, f64::max)
    }

    /// The levels this CPU runs (each one it lacks is named on stderr: it is not tested here).
    pub(crate) fn levels() -> Vec<Level> {
        let all = [Level::Amx, Level::Avx512, Level::Portable];
        for l in all.iter().filter(|l| !l.runs_here()) {
            eprintln!("note: this CPU cannot run the {l:?} bf16 kernel; it is not tested here");
        }
        all.into_iter().filter(|l| l.runs_here()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{levels, max_abs_diff, uniform};
    use super::*;
    use smallcap_util::rng::SplitMix64;

    /// A `m × k` times `k × n` product through [`block`] with A rows split into parts and
    /// padded to 32 columns per step; returns C (`m × n`).
    fn gemm(
        level: Level,
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        s: Split,
    ) -> Vec<f32> {
        let k_steps = k.div_ceil(32);
        let kp = k_steps * 32;
        let mp = m.div_ceil(32) * 32;
        let mut a_pad = vec![0f32; mp * kp];
        for i in 0..m {
            a_pad[i * kp..i * kp + k].copy_from_slice(&a[i * k..(i + 1) * k]);
        }
        let mut a_parts = vec![vec![0u16; mp * kp]; s.parts()];
        {
            let mut views: Vec<&mut [u16]> = a_parts.iter_mut().map(|v| v.as_mut_slice()).collect();
            split_rows(&a_pad, 32, a_pad.len() / 32, &mut views);
        }
        let b_parts = pack_b(k, n, s, |j, col| {
            for (kk, c) in col.iter_mut().enumerate() {
                *c = b[kk * n + j];
            }
        });
        let mut c = vec![0f32; m * n];
        let lda = kp * 2;
        for mb in 0..mp / 32 {
            for nb in 0..n.div_ceil(32) {
                let mut steps = Vec::new();
                for &(pa, pb) in s.products() {
                    for ks in 0..k_steps {
                        let a0 = a_parts[pa][mb * 32 * kp + ks * 32..].as_ptr();
                        let a1 = a_parts[pa][(mb * 32 + 16) * kp + ks * 32..].as_ptr();
                        let bp = b_parts[pb][(nb * k_steps + ks) * 1024..].as_ptr();
                        steps.push(Step { a0, a1, b: bp });
                    }
                }
                let mut blk = [0f32; 1024];
                // SAFETY: the level runs here (checked by the caller); every A row pointer is
                // within `a_parts` (rows < mp, 32 values from ks·32 < kp) and each B piece is
                // 1024 values of `b_parts`.
                unsafe { block(level, &steps, lda, &mut blk) };
                for r in 0..32 {
                    for j in 0..32 {
                        let (i, jj) = (mb * 32 + r, nb * 32 + j);
                        if i < m && jj < n {
                            c[i * n + jj] = blk[r * 32 + j];
                        }
                    }
                }
            }
        }
        c
    }

    fn reference(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|kk| a[i * k + kk] * b[kk * n + j]).sum();
            }
        }
        c
    }

    /// bf16 products of bf16-rounded operands, summed in f32, equal the exact (f64) products of
    /// the rounded operands to f32 accumulation error; odd shapes exercise every padding.
    #[test]
    fn bf16_blocks_equal_exact_products_of_rounded_operands() {
        let mut seed = SplitMix64(7);
        for (m, k, n) in [
            (32, 32, 32),
            (1, 1, 1),
            (45, 70, 33),
            (17, 200, 65),
            (64, 27, 100),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| uniform(&mut seed)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| uniform(&mut seed)).collect();
            let r = |x: &f32| bf16_to_f32(bf16_round(*x)) as f64;
            let want = reference(
                &a.iter().map(r).collect::<Vec<_>>(),
                &b.iter().map(r).collect::<Vec<_>>(),
                m,
                k,
                n,
            );
            for level in levels() {
                let got = gemm(level, &a, &b, m, k, n, Split::One);
                let err = max_abs_diff(&got, &want);
                // f32 accumulation of k terms of magnitude ≤ 1.
                assert!(err <= k as f64 * 1.2e-7, "{level:?} {m}x{k}x{n}: {err}");
            }
        }
    }

    /// Split products against the exact (f64) product of the f32 operands: two parts within
    /// about 2^-16 relative per product, three parts at f32's level.
    #[test]
    fn split_products_reach_their_stated_precision() {
        let mut seed = SplitMix64(11);
        let (m, k, n) = (40, 300, 50);
        let a: Vec<f32> = (0..m * k).map(|_| uniform(&mut seed)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| uniform(&mut seed)).collect();
        let want = reference(
            &a.iter().map(|x| *x as f64).collect::<Vec<_>>(),
            &b.iter().map(|x| *x as f64).collect::<Vec<_>>(),
            m,
            k,
            n,
        );
        // Σ|a||b| bounds each sum's magnitude; ~k/4 here (uniform in ±1).
        let scale = k as f64 / 4.0;
        for level in levels() {
            for (s, bound) in [(Split::One, 3e-3), (Split::Two, 2e-5), (Split::Three, 3e-7)] {
                let got = gemm(level, &a, &b, m, k, n, s);
                let err = max_abs_diff(&got, &want);
                assert!(
                    err / scale <= bound,
                    "{level:?} {s:?}: relative {}",
                    err / scale
                );
            }
        }
    }

    /// The parts sum back to the value (exactly for three parts of a normal f32) and never
    /// overflow.
    #[test]
    fn split_parts_sum_to_the_value() {
        let mut seed = SplitMix64(3);
        for _ in 0..10_000 {
            let x = uniform(&mut seed) * 10f32.powi((uniform(&mut seed) * 30.0) as i32);
            let p = split(x, Split::Three);
            let sum =
                bf16_to_f32(p[0]) as f64 + bf16_to_f32(p[1]) as f64 + bf16_to_f32(p[2]) as f64;
            assert_eq!(sum, x as f64, "{x}");
            let q = split(x, Split::Two);
            let sum2 = bf16_to_f32(q[0]) as f64 + bf16_to_f32(q[1]) as f64;
            assert!(
                (sum2 - x as f64).abs() <= (x as f64).abs() * 2f64.powi(-16),
                "{x}"
            );
        }
        let p = split(f32::MAX, Split::Two);
        assert!(bf16_to_f32(p[0]).is_finite() && bf16_to_f32(p[1]).is_finite());
        assert_eq!(bf16_round(1.0 + 2f32.powi(-8)), 0x3f80, "ties to even");
        assert_eq!(
            bf16_round(1.0 + 3.0 * 2f32.powi(-8)),
            0x3f82,
            "ties to even (odd)"
        );
        // Infinities stay, the largest finite value rounds up to infinity, NaNs stay NaN
        // (quietened) whatever their sign and payload, all without overflow.
        assert_eq!(bf16_round(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_round(f32::NEG_INFINITY), 0xff80);
        assert_eq!(bf16_round(f32::MAX), 0x7f80);
        assert_eq!(bf16_round(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(bf16_round(f32::from_bits(0xffff_ffff)), 0xffff);
    }

    /// The AVX-512 split equals the scalar one on every value.
    #[test]
    fn vector_split_equals_scalar_split() {
        let mut seed = SplitMix64(5);
        let src: Vec<f32> = (0..1024).map(|_| uniform(&mut seed) * 1e3).collect();
        for s in [Split::One, Split::Two, Split::Three] {
            let mut parts = vec![vec![0u16; src.len()]; s.parts()];
            let mut views: Vec<&mut [u16]> = parts.iter_mut().map(|v| v.as_mut_slice()).collect();
            split_rows(&src, 32, 32, &mut views);
            for (i, x) in src.iter().enumerate() {
                let want = split(*x, s);
                for p in 0..s.parts() {
                    assert_eq!(parts[p][i], want[p], "{s:?} part {p} of {x}");
                }
            }
        }
    }
}
