//! Frozen linear layers packed for decoding: `y = x · W + b` for the few rows of a decoding step,
//! streamed at memory bandwidth, with the weights in f32 or, as an option, f16, bf16 or int8.
//!
//! Each decoding step multiplies a handful of rows (the beams of the images in flight) by every
//! weight of GPT-2: the step is bound by reading about 0.5 GB of f32 weights, and a general GEMM
//! reaches about half of this machine's bandwidth at three rows. Here `W` `[k, n]` is cut into
//! column panels of [`PANEL`] columns, each stored contiguously (`k × PANEL`, zero-padded on the
//! right), so a panel is one sequential stream; each task multiplies up to [`TILE_ROWS`] rows by one
//! panel with the accumulators in registers, starting from the bias. Rows beyond a tile reuse the
//! panel from cache, so a long prompt costs one pass over the weights too.
//!
//! Every output is the bias plus the products in increasing `k` order, accumulated in f32 whatever
//! the storage type. With AVX-512 the panels are read with vector loads (and converted from
//! f16/bf16/int8 on the fly) into fused multiply-adds; elsewhere a portable loop computes the same
//! sums with separate multiplies and adds, which the compiler vectorises for the target.
//!
//! Int8 weights are symmetric per output column (`W[k, c] ≈ scale[c] · q[k, c]`, `q` in
//! `-127..=127`, `scale[c] = max_k |W[k, c]| / 127`, rounded half to even as `torch.round`): the
//! sums `Σ x · q` are formed in f32 and the output is `bias + scale · sum`. Activations stay f32
//! (weight-only quantisation): a decoding step is bound by reading the weights, and int8 storage
//! reads a quarter of f32's bytes without adding activation rounding.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

/// Columns per panel: four AVX-512 registers of f32.
pub const PANEL: usize = 64;
/// Rows multiplied together per pass over a panel (accumulators: `TILE_ROWS × 4` registers).
pub const TILE_ROWS: usize = 6;

/// How packed weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightType {
    /// The checkpoint's values: results equal the reference's within 1e-4.
    #[default]
    F32,
    /// IEEE half precision (round to nearest even): half the bytes per step.
    F16,
    /// bfloat16 (round to nearest even): half the bytes, f32's range, fewer mantissa bits.
    Bf16,
    /// Symmetric int8 per output column with an f32 scale: a quarter of the bytes.
    Int8,
}

impl std::str::FromStr for WeightType {
    type Err = String;
    /// Parses `f32`, `f16`, `bf16` or `int8`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            "int8" => Ok(Self::Int8),
            _ => Err(format!(
                "`{s}` is not a weight type: use f32, f16, bf16 or int8"
            )),
        }
    }
}

impl WeightType {
    /// The name `--decoder-weights` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }
}

#[derive(Debug, Clone)]
enum Panels {
    F32(Vec<f32>),
    F16(Vec<F16Bits>),
    Bf16(Vec<Bf16Bits>),
    /// `q` values and one scale per column (`n` rounded up to whole panels, zero-padded).
    Int8(Vec<I8>, Vec<f32>),
}

/// A frozen `[k, n]` weight and its bias, packed in column panels.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    k: usize,
    n: usize,
    panels: Panels,
    /// `n` rounded up to whole panels, zero-padded.
    bias: Vec<f32>,
}

impl PackedLinear {
    /// Packs `weight` `[k, n]` (`x · weight`) and an optional `bias` `[n]`.
    pub fn pack(
        weight: &Tensor,
        bias: Option<&Tensor>,
        ty: WeightType,
    ) -> candle_core::Result<Self> {
        let (k, n) = weight.dims2()?;
        let weight = weight.to_dtype(DType::F32)?;
        // The values in the order they are stored: `[k, n]`, or `[n, k]` seen transposed (an
        // `nn.Linear` weight), read without a strided copy.
        let transposed = !weight.is_contiguous() && weight.t()?.is_contiguous();
        let w = if transposed {
            weight.t()?.flatten_all()?.to_vec1::<f32>()?
        } else {
            weight.flatten_all()?.to_vec1::<f32>()?
        };
        let n_panels = n.div_ceil(PANEL);
        let mut packed = vec![0f32; n_panels * k * PANEL];
        packed
            .par_chunks_mut((k * PANEL).max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                let c0 = p * PANEL;
                let width = PANEL.min(n - c0);
                if transposed {
                    for j in 0..width {
                        let column = &w[(c0 + j) * k..(c0 + j + 1) * k];
                        for (kk, &v) in column.iter().enumerate() {
                            panel[kk * PANEL + j] = v;
                        }
                    }
                } else {
                    for (kk, dst) in panel.chunks_exact_mut(PANEL).enumerate() {
                        dst[..width].copy_from_slice(&w[kk * n + c0..kk * n + c0 + width]);
                    }
                }
            });
        let mut padded_bias = vec![0f32; n_panels * PANEL];
        if let Some(b) = bias {
            let b = b.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            if b.len() != n {
                candle_core::bail!("bias of {} values for {n} outputs", b.len());
            }
            padded_bias[..n].copy_from_slice(&b);
        }
        let panels = match ty {
            WeightType::F32 => Panels::F32(packed),
            WeightType::F16 => Panels::F16(
                packed
                    .par_iter()
                    .map(|&v| F16Bits(half::f16::from_f32(v).to_bits()))
                    .collect(),
            ),
            WeightType::Bf16 => Panels::Bf16(
                packed
                    .par_iter()
                    .map(|&v| Bf16Bits(half::bf16::from_f32(v).to_bits()))
                    .collect(),
            ),
            WeightType::Int8 => {
                let (q, scale) = quantize_panels(&packed, k);
                Panels::Int8(q, scale)
            }
        };
        Ok(Self {
            k,
            n,
            panels,
            bias: padded_bias,
        })
    }

    /// `x` `[m, k]` → `x · W + b` `[m, n]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!(
                "packed linear: input of {k} features for a [{}, {}] weight",
                self.k,
                self.n
            );
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let out = self.multiply(&xs, m, simd_available());
        Tensor::from_vec(out, (m, self.n), &Device::Cpu)?.to_device(x.device())
    }

    /// `xs` `[m, k]` row-major → `[m, n]` row-major; `simd` selects the AVX-512 kernel.
    fn multiply(&self, xs: &[f32], m: usize, simd: bool) -> Vec<f32> {
        match &self.panels {
            Panels::F32(w) => self.multiply_with(w, &[], xs, m, simd),
            Panels::F16(w) => self.multiply_with(w, &[], xs, m, simd),
            Panels::Bf16(w) => self.multiply_with(w, &[], xs, m, simd),
            Panels::Int8(w, scale) => self.multiply_with(w, scale, xs, m, simd),
        }
    }

    /// `scale`: one per padded column for scaled elements ([`Element::SCALED`]), else empty.
    fn multiply_with<E: Element>(
        &self,
        w: &[E],
        scale: &[f32],
        xs: &[f32],
        m: usize,
        simd: bool,
    ) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let n_panels = n.div_ceil(PANEL);
        // Panel-major results (`[panel][m][PANEL]`), so that each task owns one slice.
        let mut by_panel = vec![0f32; n_panels * m * PANEL];
        let tasks = rayon::current_num_threads() * 4;
        let per_task = n_panels.div_ceil(tasks).max(1);
        by_panel
            .par_chunks_mut(per_task * m * PANEL)
            .enumerate()
            .for_each(|(t, out)| {
                for (i, out) in out.chunks_exact_mut(m * PANEL).enumerate() {
                    let p = t * per_task + i;
                    let panel = &w[p * k * PANEL..(p + 1) * k * PANEL];
                    let bias = &self.bias[p * PANEL..(p + 1) * PANEL];
                    let scale = if E::SCALED {
                        &scale[p * PANEL..(p + 1) * PANEL]
                    } else {
                        &[]
                    };
                    panel_product(xs, m, k, Columns { panel, bias, scale }, out, simd);
                }
            });
        let mut out = vec![0f32; m * n];
        for p in 0..n_panels {
            let c0 = p * PANEL;
            let width = PANEL.min(n - c0);
            for r in 0..m {
                let src = &by_panel[(p * m + r) * PANEL..][..width];
                out[r * n + c0..r * n + c0 + width].copy_from_slice(src);
            }
        }
        out
    }
}

/// Whether the AVX-512 kernel can run here. Without it, f32 weights are better left to the
/// general GEMM (which has kernels for every x86 and ARM vector extension); half-precision
/// weights are still packed (the portable loop), for their memory.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f16 bits (the storage of [`WeightType::F16`]).
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
struct F16Bits(u16);

/// bf16 bits (the storage of [`WeightType::Bf16`]).
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
struct Bf16Bits(u16);

/// An int8 weight (the storage of [`WeightType::Int8`]), scaled per column.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
struct I8(i8);

/// Quantises f32 panels `[n_panels][k][PANEL]` to symmetric int8 per column: returns the `q`
/// panels (same layout) and one scale per padded column (`max |w| / 127`; 0 for a zero column).
/// Panels in parallel.
fn quantize_panels(packed: &[f32], k: usize) -> (Vec<I8>, Vec<f32>) {
    let n_panels = packed.len() / (k * PANEL).max(1);
    let mut scale = vec![0f32; n_panels * PANEL];
    let mut q = vec![I8(0); packed.len()];
    q.par_chunks_mut((k * PANEL).max(1))
        .zip(scale.par_chunks_mut(PANEL))
        .zip(packed.par_chunks((k * PANEL).max(1)))
        .for_each(|((q, scale), panel)| {
            for row in panel.chunks_exact(PANEL) {
                for (s, &v) in scale.iter_mut().zip(row) {
                    *s = s.max(v.abs());
                }
            }
            for s in scale.iter_mut() {
                *s /= 127.0;
            }
            for (q, row) in q.chunks_exact_mut(PANEL).zip(panel.chunks_exact(PANEL)) {
                for ((q, &v), &s) in q.iter_mut().zip(row).zip(scale.iter()) {
                    let r = if s > 0.0 { round_half_even(v / s) } else { 0.0 };
                    *q = I8(r.clamp(-127.0, 127.0) as i8);
                }
            }
        });
    (q, scale)
}

/// `x` rounded to the nearest integer, ties to even, for `|x| < 2^22` (here at most 127): adding
/// 1.5 · 2^23 leaves no fraction bits, so the hardware's round-to-nearest-even does the
/// rounding (without SSE4.1, `f32::round_ties_even` is a call into the C library).
fn round_half_even(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2^23
    (x + SHIFT) - SHIFT
}

/// A stored weight value.
trait Element: Copy + Send + Sync {
    /// Whether the stored values are multiplied by a per-column scale after the sum.
    const SCALED: bool = false;
    fn to_f32(self) -> f32;
    /// Sixteen consecutive values as f32.
    ///
    /// # Safety
    /// `ptr` must point at 16 readable values and the CPU must support AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512;
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(ptr)
    }
}

impl Element for F16Bits {
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self.0).to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(ptr as *const __m256i))
    }
}

impl Element for Bf16Bits {
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(ptr as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide))
    }
}

impl Element for I8 {
    const SCALED: bool = true;
    fn to_f32(self) -> f32 {
        self.0 as f32
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(ptr as *const __m128i)))
    }
}

/// One panel's columns: the stored values `[k][PANEL]`, their `bias` and, for scaled elements,
/// their `scale` (`PANEL` values each; `scale` is empty otherwise).
#[derive(Clone, Copy)]
struct Columns<'a, E> {
    panel: &'a [E],
    bias: &'a [f32],
    scale: &'a [f32],
}

/// `out` `[m][PANEL]` = `xs` `[m, k]` · the panel (scaled) + bias, in tiles of rows.
fn panel_product<E: Element>(
    xs: &[f32],
    m: usize,
    k: usize,
    cols: Columns<'_, E>,
    out: &mut [f32],
    simd: bool,
) {
    debug_assert_eq!(cols.panel.len(), k * PANEL);
    debug_assert_eq!(cols.bias.len(), PANEL);
    debug_assert_eq!(cols.scale.len(), if E::SCALED { PANEL } else { 0 });
    let mut r0 = 0;
    while r0 < m {
        let rows = TILE_ROWS.min(m - r0);
        let x = &xs[r0 * k..(r0 + rows) * k];
        let o = &mut out[r0 * PANEL..(r0 + rows) * PANEL];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd` is true only where `simd_available()` detected AVX-512F (`forward`
            // passes its result; the tests check it before passing `true`). The slices have
            // what `tile_avx512::<E, R>` reads and writes: `x` is `rows × k` and `o` is
            // `rows × PANEL` (cut just above), the panel is `k × PANEL`, `bias` `PANEL` values
            // and `scale` `PANEL` values for a scaled `E` (cut so by `multiply_with`, checked
            // above in debug builds), and `R == rows` (`rows <= TILE_ROWS == 6`).
            unsafe {
                match rows {
                    1 => tile_avx512::<E, 1>(x, k, cols, o),
                    2 => tile_avx512::<E, 2>(x, k, cols, o),
                    3 => tile_avx512::<E, 3>(x, k, cols, o),
                    4 => tile_avx512::<E, 4>(x, k, cols, o),
                    5 => tile_avx512::<E, 5>(x, k, cols, o),
                    _ => tile_avx512::<E, 6>(x, k, cols, o),
                }
            }
            r0 += rows;
            continue;
        }
        let _ = simd;
        tile_portable(x, rows, k, cols, o);
        r0 += rows;
    }
}

/// The portable kernel: the same sums in the same order as the AVX-512 one, unfused.
fn tile_portable<E: Element>(
    x: &[f32],
    rows: usize,
    k: usize,
    cols: Columns<'_, E>,
    out: &mut [f32],
) {
    for r in 0..rows {
        let acc = &mut out[r * PANEL..(r + 1) * PANEL];
        if E::SCALED {
            acc.fill(0.0);
        } else {
            acc.copy_from_slice(cols.bias);
        }
        let xr = &x[r * k..(r + 1) * k];
        for (kk, &a) in xr.iter().enumerate() {
            let w = &cols.panel[kk * PANEL..(kk + 1) * PANEL];
            for (o, &wv) in acc.iter_mut().zip(w) {
                *o += a * wv.to_f32();
            }
        }
        if E::SCALED {
            for ((o, &s), &b) in acc.iter_mut().zip(cols.scale).zip(cols.bias) {
                *o = b + s * *o;
            }
        }
    }
}

/// `R` rows by one panel with `R × 4` accumulators in AVX-512 registers.
///
/// # Safety
/// AVX-512F must be available; `x` holds `R × k` values, the panel `k × PANEL`, `bias` `PANEL`
/// (and `scale` `PANEL` for a scaled `E`), `out` `R × PANEL` (every access below is an
/// unaligned load or store within those extents).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<E: Element, const R: usize>(
    x: &[f32],
    k: usize,
    cols: Columns<'_, E>,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let b = cols.bias.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    if !E::SCALED {
        for row in acc.iter_mut() {
            for (j, a) in row.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(b.add(16 * j));
            }
        }
    }
    let w = cols.panel.as_ptr();
    let xp = x.as_ptr();
    for kk in 0..k {
        let wk = w.add(kk * PANEL);
        let wv = [
            E::load16(wk),
            E::load16(wk.add(16)),
            E::load16(wk.add(32)),
            E::load16(wk.add(48)),
        ];
        for (r, row) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*xp.add(r * k + kk));
            for j in 0..4 {
                row[j] = _mm512_fmadd_ps(a, wv[j], row[j]);
            }
        }
    }
    if E::SCALED {
        let s = cols.scale.as_ptr();
        for row in acc.iter_mut() {
            for (j, a) in row.iter_mut().enumerate() {
                let (sj, bj) = (
                    _mm512_loadu_ps(s.add(16 * j)),
                    _mm512_loadu_ps(b.add(16 * j)),
                );
                *a = _mm512_fmadd_ps(*a, sj, bj);
            }
        }
    }
    let o = out.as_mut_ptr();
    for (r, row) in acc.iter().enumerate() {
        for (j, a) in row.iter().enumerate() {
            _mm512_storeu_ps(o.add(r * PANEL + 16 * j), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x · W + b` in f64 from the unpacked values, for comparison.
    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, b: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut s = b[c] as f64;
                for kk in 0..k {
                    s += x[r * k + kk] as f64 * w[kk * n + c] as f64;
                }
                out[r * n + c] = s as f32;
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        // A small deterministic generator: values in [-1, 1).
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn check(ty: WeightType, tolerance: f32) {
        // Odd sizes: a partial last panel and a partial last tile of rows.
        for &(m, k, n) in &[(1, 7, 5), (3, 33, 130), (7, 64, 64), (13, 20, 200)] {
            let x = values(m * k, 1);
            let w = values(k * n, 2);
            let b = values(n, 3);
            let rounded: Vec<f32> = w
                .iter()
                .map(|&v| match ty {
                    WeightType::F32 => v,
                    WeightType::F16 => half::f16::from_f32(v).to_f32(),
                    WeightType::Bf16 => half::bf16::from_f32(v).to_f32(),
                    WeightType::Int8 => v, // replaced below, per column
                })
                .collect();
            let rounded = if ty == WeightType::Int8 {
                dequantized_by_arithmetic(&w, k, n)
            } else {
                rounded
            };
            let expected = reference(&x, m, k, &rounded, n, &b);
            let wt = Tensor::from_vec(w.clone(), (k, n), &Device::Cpu).unwrap();
            let bt = Tensor::from_vec(b.clone(), n, &Device::Cpu).unwrap();
            let packed = PackedLinear::pack(&wt, Some(&bt), ty).unwrap();
            let portable = packed.multiply(&x, m, false);
            for (got, want) in portable.iter().zip(&expected) {
                assert!(
                    (got - want).abs() <= tolerance,
                    "{ty:?} {m}x{k}x{n}: {got} vs {want}"
                );
            }
            if simd_available() {
                let vector = packed.multiply(&x, m, true);
                for (got, want) in vector.iter().zip(&expected) {
                    assert!(
                        (got - want).abs() <= tolerance,
                        "{ty:?} {m}x{k}x{n}: {got} vs {want}"
                    );
                }
            } else {
                eprintln!("no AVX-512 here: only the portable kernel was checked");
            }
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let through_tensor = packed.forward(&xt).unwrap();
            assert_eq!(through_tensor.dims2().unwrap(), (m, n));
        }
    }

    #[test]
    fn f32_panels_match_the_product() {
        check(WeightType::F32, 1e-5);
    }

    #[test]
    fn half_panels_match_the_product_of_the_rounded_weights() {
        check(WeightType::F16, 1e-5);
        check(WeightType::Bf16, 1e-5);
    }

    /// Per-column symmetric int8, written from the definition: `scale = max |w| / 127`,
    /// `q = round_half_even(w / scale)`, dequantised `q · scale`.
    fn dequantized_by_arithmetic(w: &[f32], k: usize, n: usize) -> Vec<f32> {
        let mut out = w.to_vec();
        for c in 0..n {
            let amax = (0..k).map(|r| w[r * n + c].abs()).fold(0f32, f32::max);
            let scale = amax / 127.0;
            for r in 0..k {
                let q = if scale > 0.0 {
                    (w[r * n + c] / scale).round_ties_even()
                } else {
                    0.0
                };
                out[r * n + c] = q * scale;
            }
        }
        out
    }

    #[test]
    fn int8_panels_match_the_product_of_the_dequantized_weights() {
        check(WeightType::Int8, 1e-5);
    }

    #[test]
    fn int8_quantization_by_hand() {
        // One column [127, -50, 2.5, 0]: scale 1, q = [127, -50, 2 (2.5 → even), 0]; a zero
        // column stays zero; the bias is added after the scale.
        let w = Tensor::from_vec(
            vec![127.0f32, 0.0, -50.0, 0.0, 2.5, 0.0, 0.0, 0.0],
            (4, 2),
            &Device::Cpu,
        )
        .unwrap();
        let b = Tensor::from_vec(vec![10.0f32, -1.0], 2, &Device::Cpu).unwrap();
        let p = PackedLinear::pack(&w, Some(&b), WeightType::Int8).unwrap();
        let x = [1.0f32, 1.0, 100.0, 7.0];
        let want = [10.0 + 127.0 - 50.0 + 200.0, -1.0];
        for simd in [false, simd_available()] {
            let got = p.multiply(&x, 1, simd);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "simd {simd}: {got:?} vs {want:?}");
            }
        }
        assert_eq!("int8".parse::<WeightType>().unwrap(), WeightType::Int8);
        assert_eq!(WeightType::Int8.as_str(), "int8");
    }

    #[test]
    fn int8_rounding_is_half_to_even() {
        for x in [
            -127.0f32, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.49, 3.5, 126.5, 0.0, -0.0,
        ] {
            assert_eq!(round_half_even(x), x.round_ties_even(), "{x}");
        }
    }

    #[test]
    fn transposed_weights_pack_as_their_contiguous_copy() {
        // An nn.Linear weight `[n, k]` seen as `[k, n]`: packed straight from its storage.
        let (k, n) = (37, 70);
        let w = Tensor::from_vec(values(n * k, 4), (n, k), &Device::Cpu).unwrap();
        let x = values(2 * k, 5);
        for ty in [WeightType::F32, WeightType::Int8] {
            let view = PackedLinear::pack(&w.t().unwrap(), None, ty).unwrap();
            let copy = PackedLinear::pack(&w.t().unwrap().contiguous().unwrap(), None, ty).unwrap();
            assert_eq!(view.multiply(&x, 2, false), copy.multiply(&x, 2, false));
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values; the even one is 1.0.
        let w = Tensor::from_vec(vec![1.0f32 + 2f32.powi(-8)], (1, 1), &Device::Cpu).unwrap();
        let p = PackedLinear::pack(&w, None, WeightType::Bf16).unwrap();
        assert_eq!(p.multiply(&[1.0], 1, false), vec![1.0]);
    }

    #[test]
    fn a_wrong_input_width_is_an_error() {
        let w = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
        let p = PackedLinear::pack(&w, None, WeightType::F32).unwrap();
        let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(p
            .forward(&x)
            .unwrap_err()
            .to_string()
            .contains("5 features"));
    }
}
