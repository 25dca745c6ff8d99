//! `exp` and `tanh` in f32 written so that the compiler vectorises them, for the elementwise
//! passes of [`super::fused`] (GPT-2's `gelu_new` forward and backward). The C library's scalar
//! `tanhf` took about a tenth of a training step and a twentieth of a decoding step.
//!
//! - `exp`: Cephes' `expf`: `x = n·ln 2 + r` (Cody–Waite split of ln 2), `e^r` by a degree-6
//!   polynomial, `2^n` through the exponent bits. Inputs above 88 count as 88, and results
//!   below e^−87 are 0, so no result is infinite or subnormal.
//! - `tanh(u) = sign(u)·(1 − 2/(e^{2|u|} + 1))`, and its odd Taylor polynomial to `u¹⁵` below
//!   |u| = 0.55, where the subtraction would cancel (the first omitted term is below 2.5e-8).
//!
//! Both stay within 2 units in the last place of the exact values (tested against f64).
//! PyTorch's CPU `tanh` (the reference's) is itself a vectorised approximation, so results
//! are as faithful to the reference as `tanhf`'s were. Slice functions pick an AVX-512 build of
//! the same code where the CPU has it.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n·LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x`; 0 below −87 (where `expf` would return subnormal numbers, which slow down every
/// product they enter), so `exp(−∞) = 0` as masked attention scores need.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let underflow = x < -87.0;
    // Comparisons, not `min`/`max`, so that NaN stays NaN.
    let x = if x > 88.0 {
        88.0
    } else if underflow {
        -87.0
    } else {
        x
    };
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let e_r = p * (r * r) + r + 1.0;
    // n ∈ [-126, 127], so n + 127 is the biased exponent of 2^n. Adding 2^23 puts that integer
    // in the low mantissa bits (a float-to-int conversion the compiler would not vectorise).
    let biased = (n + (127.0 + 8_388_608.0)).to_bits();
    let e = e_r * f32::from_bits(biased << 23);
    if underflow {
        0.0
    } else {
        e
    }
}

/// `tanh(u)`.
#[inline(always)]
pub fn tanh(u: f32) -> f32 {
    let a = u.abs();
    let t = if a < 0.55 {
        let a2 = a * a;
        let p = -929_569.0 / 638_512_875.0;
        let p = p * a2 + 21_844.0 / 6_081_075.0;
        let p = p * a2 - 1_382.0 / 155_925.0;
        let p = p * a2 + 62.0 / 2835.0;
        let p = p * a2 - 17.0 / 315.0;
        let p = p * a2 + 2.0 / 15.0;
        let p = p * a2 - 1.0 / 3.0;
        a + a * a2 * p
    } else {
        1.0 - 2.0 / (exp(2.0 * a) + 1.0)
    };
    t.copysign(u)
}

/// `out[i] = f(x[i])` for an elementwise `f` built from the functions above, vectorised with
/// AVX-512 where the CPU has it.
#[inline(always)]
pub fn map(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    #[inline(always)]
    fn body(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = f(v);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        /// `body` compiled for AVX-512.
        ///
        /// # Safety
        /// The CPU must have the features it is compiled for.
        #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
        unsafe fn wide(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
            body(x, out, f)
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the CPU has the features `wide` is compiled for: AVX-512F and DQ are
            // detected just above, and AVX2 and FMA come with every AVX-512F CPU (rustc's
            // `avx512f` feature implies them too). `wide` itself does only safe slice work.
            return unsafe { wide(x, out, f) };
        }
    }
    body(x, out, f)
}

/// `x[i] = f(x[i])`, as [`map`] in place.
#[inline(always)]
pub fn map_in_place(x: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    #[inline(always)]
    fn body(x: &mut [f32], f: impl Fn(f32) -> f32) {
        for v in x.iter_mut() {
            *v = f(*v);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        /// `body` compiled for AVX-512.
        ///
        /// # Safety
        /// The CPU must have the features it is compiled for.
        #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
        unsafe fn wide(x: &mut [f32], f: impl Fn(f32) -> f32) {
            body(x, f)
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: as in `map`: the features `wide` is compiled for are detected just above
            // (AVX2 and FMA come with AVX-512F); `wide` does only safe slice work.
            return unsafe { wide(x, f) };
        }
    }
    body(x, f)
}

/// `out[i] = f(x[i], y[i])`, as [`map`].
#[inline(always)]
pub fn map2(x: &[f32], y: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Copy) {
    #[inline(always)]
    fn body(x: &[f32], y: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
        for ((o, &a), &b) in out.iter_mut().zip(x).zip(y) {
            *o = f(a, b);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        /// `body` compiled for AVX-512.
        ///
        /// # Safety
        /// The CPU must have the features it is compiled for.
        #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
        unsafe fn wide(x: &[f32], y: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
            body(x, y, out, f)
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the CPU has the features `wide` is compiled for: AVX-512F and DQ are
            // detected just above, and AVX2 and FMA come with every AVX-512F CPU (rustc's
            // `avx512f` feature implies them too). `wide` itself does only safe slice work.
            return unsafe { wide(x, y, out, f) };
        }
    }
    body(x, y, out, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// |got − want| in units of the f32 spacing at `want`.
    fn ulps(got: f32, want: f64) -> f64 {
        let spacing = (want.abs() as f32).max(f32::MIN_POSITIVE);
        let spacing = (f32::from_bits(spacing.to_bits() + 1) - spacing) as f64;
        (got as f64 - want).abs() / spacing
    }

    fn sweep() -> impl Iterator<Item = f32> {
        (-400_000..=400_000).map(|i| i as f32 / 20_000.0)
    }

    #[test]
    fn exp_is_within_2_ulps() {
        for x in sweep().map(|x| x * 4.3) {
            let e = ulps(exp(x), (x as f64).exp());
            assert!(
                e <= 2.0,
                "exp({x}): {} vs {} ({e} ulps)",
                exp(x),
                (x as f64).exp()
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!((exp(-87.5), exp(f32::NEG_INFINITY)), (0.0, 0.0));
        assert!(exp(-87.0).is_normal() && exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_is_within_2_ulps() {
        let tiny = [1e-30f32, -3e-12, 1e-6, 0.549_999_95, 0.55, -0.55];
        for u in sweep().chain(tiny) {
            let e = ulps(tanh(u), (u as f64).tanh());
            assert!(
                e <= 2.0,
                "tanh({u}): {} vs {} ({e} ulps)",
                tanh(u),
                (u as f64).tanh()
            );
        }
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!((tanh(50.0), tanh(-50.0)), (1.0, -1.0));
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn the_wide_and_the_plain_build_agree() {
        let x: Vec<f32> = sweep().collect();
        let mut wide = vec![0f32; x.len()];
        map(&x, &mut wide, tanh);
        let plain: Vec<f32> = x.iter().map(|&v| tanh(v)).collect();
        // Rust never contracts `a·b + c` into an FMA, so both builds round alike.
        assert_eq!(wide, plain);
        let mut sums = vec![0f32; x.len()];
        map2(&x, &plain, &mut sums, |a, b| a + b);
        let mut in_place = x.clone();
        map_in_place(&mut in_place, tanh);
        assert_eq!(in_place, plain);
        assert!(sums
            .iter()
            .zip(&x)
            .zip(&plain)
            .all(|((&s, &a), &b)| s == a + b));
    }
}
