//! Convolutions on NHWC activations as implicit GEMMs over the bf16 blocks of
//! [`super::bf16_gemm`] (the matrix-unit path of CLIP's ResNet towers).
//!
//! A convolution is `C[pixels × c_out] = A[pixels × (taps · c_in)] · B[(taps · c_in) × c_out]`.
//! With activations stored NHWC and channels padded to 32, the A rows of one tap are pixels of
//! the input itself (a 3 × 3 stride-1 convolution reads a zero-bordered input at 9 offsets), so
//! no im2col matrix is built; other shapes (the stride-2 stem convolution) go through an
//! explicit im2col into a 1 × 1 convolution. Rows are taken 16 pixels at a time along an
//! output row; a tile that runs past the row's end reads pixels whose results are dropped.
//! The epilogue adds the bias, an optional residual, applies ReLU and writes f32 NHWC with the
//! border the next convolution needs.
//!
//! The bf16 parts a convolution reads ([`InputParts`]) are laid out in blocks of 32 channels
//! (`[c / 32][pixel][32]`), so that a tile's 16 rows are 1 KiB of consecutive memory whatever
//! the channel count (NHWC rows 4 KiB apart would all fall into one L1 set). Buffers are reused
//! through a small per-thread pool instead of fresh zeroed pages for every layer.

use std::cell::RefCell;

use rayon::prelude::*;

use super::bf16_gemm::{self, Level, Split, Step};

/// Pixels of zeros after every activation buffer: a 16-row tile starting at the last pixel of
/// a row reads up to 15 pixels (and, for a 3 × 3 tap, 2 more) past it.
const SLACK_PIXELS: usize = 18;

/// The bytes of A rows (and of B columns) a group of blocks reads ([`ConvWeights::forward`]):
/// both together stay well inside a core's L2 (2 MiB on Sapphire Rapids).
const GROUP_BYTES: usize = 512 * 1024;

/// Buffers kept per thread for reuse, at most this many of each type.
const POOL_SIZE: usize = 8;

thread_local! {
    static F32_POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    static U16_POOL: RefCell<Vec<Vec<u16>>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed buffer of `len`, from the pool when one is large enough.
fn take<T: Copy + Default>(
    pool: &'static std::thread::LocalKey<RefCell<Vec<Vec<T>>>>,
    len: usize,
) -> Vec<T> {
    let mut v = take_stale(pool, len);
    v.clear();
    v.resize(len, T::default());
    v
}

/// A buffer of at most `len` values whose contents are stale (empty when none is pooled), with
/// capacity for `len`.
fn take_stale<T: Copy + Default>(
    pool: &'static std::thread::LocalKey<RefCell<Vec<Vec<T>>>>,
    len: usize,
) -> Vec<T> {
    let mut v = pool
        .with(|p| {
            let mut p = p.borrow_mut();
            let i = p.iter().position(|v| v.capacity() >= len)?;
            Some(p.swap_remove(i))
        })
        .unwrap_or_default();
    v.truncate(len);
    v.reserve(len - v.len());
    v
}

/// Returns a buffer to the pool (the smallest is dropped when it is full).
fn give<T>(pool: &'static std::thread::LocalKey<RefCell<Vec<Vec<T>>>>, v: Vec<T>) {
    if v.capacity() == 0 {
        return;
    }
    pool.with(|p| {
        let mut p = p.borrow_mut();
        p.push(v);
        if p.len() > POOL_SIZE {
            let smallest = (0..p.len()).min_by_key(|&i| p[i].capacity()).unwrap_or(0);
            p.swap_remove(smallest);
        }
    });
}

/// An f32 activation in NHWC order with `c` channels (a multiple of 32; channels past the
/// layer's own are zero) and a zero border of `pad` pixels.
#[derive(Debug)]
pub struct Nhwc {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub pad: usize,
    pub data: Vec<f32>,
}

impl Drop for Nhwc {
    fn drop(&mut self) {
        give(&F32_POOL, std::mem::take(&mut self.data));
    }
}

/// The bf16 parts of an activation as the blocks read them: part `p`, channel block `cb`,
/// pixel `i` (of the bordered plane) at `data[p][(cb * plane + i) * 32..][..32]`.
#[derive(Debug)]
pub struct InputParts {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub pad: usize,
    plane: usize,
    data: Vec<Vec<u16>>,
}

impl InputParts {
    /// Parts whose interior the caller writes; the border and slack pixels of every channel
    /// block's plane are zeroed.
    fn for_output(h: usize, w: usize, c: usize, pad: usize, parts: usize) -> Self {
        let plane = (h + 2 * pad) * (w + 2 * pad) + SLACK_PIXELS;
        let data = (0..parts)
            .map(|_| {
                let mut v = take_stale(&U16_POOL, c / 32 * plane * 32);
                v.resize(c / 32 * plane * 32, 0);
                for block in v.chunks_mut(plane * 32) {
                    zero_border(block, h, w, 32, pad);
                }
                v
            })
            .collect();
        Self {
            h,
            w,
            c,
            pad,
            plane,
            data,
        }
    }
}

/// Zeroes the border pixels and the slack of one `(h + 2·pad) × (w + 2·pad)` plane of `c`
/// values per pixel.
fn zero_border<T: Copy + Default>(data: &mut [T], h: usize, w: usize, c: usize, pad: usize) {
    let row = (w + 2 * pad) * c;
    if pad > 0 {
        data[..pad * row].fill(T::default());
        let bottom = (h + pad) * row;
        data[bottom..bottom + pad * row].fill(T::default());
        for y in pad..h + pad {
            data[y * row..y * row + pad * c].fill(T::default());
            data[y * row + (w + pad) * c..(y + 1) * row].fill(T::default());
        }
    }
    data[(h + 2 * pad) * row..].fill(T::default());
}

/// A convolution's output: f32 (for a residual, a pooling or the head), or straight away the
/// bf16 parts the next convolution reads.
#[derive(Debug)]
pub enum Activation {
    F32(Nhwc),
    Parts(InputParts),
}

impl Activation {
    /// The f32 activation (panics on parts: the caller asked for f32).
    pub fn into_f32(self) -> Nhwc {
        match self {
            Self::F32(x) => x,
            Self::Parts(_) => unreachable!("asked for f32 output"),
        }
    }

    /// The parts (panics on f32: the caller asked for parts).
    pub fn into_parts(self) -> InputParts {
        match self {
            Self::Parts(x) => x,
            Self::F32(_) => unreachable!("asked for parts output"),
        }
    }
}

impl Drop for InputParts {
    fn drop(&mut self) {
        for v in self.data.drain(..) {
            give(&U16_POOL, v);
        }
    }
}

/// Whether a `k × k` convolution of this stride runs directly on a bordered input (1 × 1 and
/// 3 × 3, stride 1); any other runs as a 1 × 1 convolution over its [`Nhwc::im2col`] patches.
pub fn runs_directly(k: usize, stride: usize) -> bool {
    stride == 1 && (k == 1 || k == 3)
}

/// `c` rounded up to the block width.
pub fn padded_channels(c: usize) -> usize {
    c.div_ceil(32) * 32
}

impl Nhwc {
    /// Zeros of this shape.
    pub fn zeros(h: usize, w: usize, c: usize, pad: usize) -> Self {
        debug_assert_eq!(c % 32, 0);
        let len = ((h + 2 * pad) * (w + 2 * pad) + SLACK_PIXELS) * c;
        Self {
            h,
            w,
            c,
            pad,
            data: take(&F32_POOL, len),
        }
    }

    /// An activation whose every interior value the caller writes: only the border and the
    /// slack are zeroed (a reused buffer keeps stale values inside).
    fn for_output(h: usize, w: usize, c: usize, pad: usize) -> Self {
        let len = ((h + 2 * pad) * (w + 2 * pad) + SLACK_PIXELS) * c;
        // Stale values are kept; only growth is zero-filled.
        let mut data = take_stale(&F32_POOL, len);
        data.resize(len, 0.0);
        zero_border(&mut data, h, w, c, pad);
        Self { h, w, c, pad, data }
    }

    /// Pixels of the bordered plane, slack included.
    fn plane(&self) -> usize {
        self.data.len() / self.c
    }

    /// The offset of pixel `(y, x)` (unpadded coordinates).
    #[inline]
    pub fn at(&self, y: usize, x: usize) -> usize {
        ((y + self.pad) * (self.w + 2 * self.pad) + x + self.pad) * self.c
    }

    /// From one NCHW image (`c_real` channels).
    pub fn from_nchw(x: &[f32], c_real: usize, h: usize, w: usize, pad: usize) -> Self {
        let mut out = Self::zeros(h, w, padded_channels(c_real), pad);
        for ch in 0..c_real {
            for y in 0..h {
                for xx in 0..w {
                    let o = out.at(y, xx) + ch;
                    out.data[o] = x[(ch * h + y) * w + xx];
                }
            }
        }
        out
    }

    /// The pixels as rows of their first `c_real` channels: `[h·w, c_real]`.
    pub fn tokens(&self, c_real: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.h * self.w * c_real);
        for y in 0..self.h {
            for x in 0..self.w {
                let o = self.at(y, x);
                out.extend_from_slice(&self.data[o..o + c_real]);
            }
        }
        out
    }

    /// `AvgPool2d(s)` (floor of the size, as torch), written with a border of `pad`.
    pub fn avg_pool(&self, s: usize, pad: usize) -> Nhwc {
        let (oh, ow) = (self.h / s, self.w / s);
        let mut out = Nhwc::zeros(oh, ow, self.c, pad);
        let inv = 1.0 / (s * s) as f32;
        let c = self.c;
        for y in 0..oh {
            for x in 0..ow {
                let o = out.at(y, x);
                let dst = &mut out.data[o..o + c];
                for dy in 0..s {
                    for dx in 0..s {
                        let i = self.at(y * s + dy, x * s + dx);
                        for (d, v) in dst.iter_mut().zip(&self.data[i..i + c]) {
                            *d += v;
                        }
                    }
                }
                for d in dst.iter_mut() {
                    *d *= inv;
                }
            }
        }
        out
    }

    /// The same values with a border of `pad`.
    pub fn with_pad(&self, pad: usize) -> Nhwc {
        let mut out = Nhwc::zeros(self.h, self.w, self.c, pad);
        for y in 0..self.h {
            let (i, o) = (self.at(y, 0), out.at(y, 0));
            let n = self.w * self.c;
            out.data[o..o + n].copy_from_slice(&self.data[i..i + n]);
        }
        out
    }

    /// `im2col` for a `k × k` convolution with this stride and padding (of an unpadded
    /// activation): an activation of the output size whose channels are the patches in the
    /// weight's `(c, kh, kw)` order, so that the convolution becomes a 1 × 1 one.
    pub fn im2col(&self, c_real: usize, k: usize, stride: usize, pad: usize) -> Nhwc {
        let oh = (self.h + 2 * pad - k) / stride + 1;
        let ow = (self.w + 2 * pad - k) / stride + 1;
        let mut out = Nhwc::zeros(oh, ow, padded_channels(c_real * k * k), 0);
        for y in 0..oh {
            for x in 0..ow {
                let o = out.at(y, x);
                for ch in 0..c_real {
                    for kh in 0..k {
                        let iy = (y * stride + kh) as isize - pad as isize;
                        if iy < 0 || iy >= self.h as isize {
                            continue;
                        }
                        for kw in 0..k {
                            let ix = (x * stride + kw) as isize - pad as isize;
                            if ix < 0 || ix >= self.w as isize {
                                continue;
                            }
                            out.data[o + (ch * k + kh) * k + kw] =
                                self.data[self.at(iy as usize, ix as usize) + ch];
                        }
                    }
                }
            }
        }
        out
    }
}

/// What the epilogue applies to `acc + bias [+ residual]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Nothing.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// CLIP's QuickGELU, `x · sigmoid(1.702 x)` (the vectorised `exp` of
    /// [`super::vector_math`]).
    QuickGelu,
}

impl Act {
    /// The activation of one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::Identity => x,
            Self::Relu => x.max(0.0),
            Self::QuickGelu => x * (1.0 / (1.0 + super::vector_math::exp(-1.702 * x))),
        }
    }
}

/// An f32 buffer of `len` values (stale contents, for the caller to overwrite), from this
/// thread's pool of the buffers the blocks work in.
pub fn scratch(len: usize) -> Vec<f32> {
    let mut v = take_stale(&F32_POOL, len);
    v.resize(len, 0.0);
    v
}

/// Gives a buffer (one of [`ConvWeights::forward_rows`]' results, or any other) back to this
/// thread's pool: reusing buffers spares the page faults of fresh memory.
pub fn recycle(v: Vec<f32>) {
    give(&F32_POOL, v);
}

/// A convolution's weights packed for the blocks: `k × k` taps (1 or 3, stride 1, padding
/// `k / 2`), `c_in` and `c_out` padded to 32, split into the parts of `split`.
#[derive(Debug, Clone)]
pub struct ConvWeights {
    k: usize,
    c_in: usize,
    c_out: usize,
    /// `c_in` before padding.
    in_features: usize,
    /// `c_out` before padding.
    out_features: usize,
    split: Split,
    parts: Vec<Vec<u16>>,
    bias: Vec<f32>,
}

impl ConvWeights {
    /// From torch's `[c_out, c_in, k, k]` weight and a bias of `c_out`.
    pub fn new(
        weight: &[f32],
        bias: &[f32],
        c_out: usize,
        c_in: usize,
        k: usize,
        split: Split,
    ) -> Self {
        assert_eq!(weight.len(), c_out * c_in * k * k);
        assert_eq!(bias.len(), c_out);
        let (cin_p, cout_p) = (padded_channels(c_in), padded_channels(c_out));
        // B[(tap, ci)][co], taps outermost so that one K step is 32 channels of one tap; the
        // padded channels are zero.
        let rows = k * k * cin_p;
        let taps = k * k;
        let parts = bf16_gemm::pack_b(rows, cout_p, split, |co, col| {
            if co < c_out {
                let w = &weight[co * c_in * taps..(co + 1) * c_in * taps];
                if taps == 1 {
                    col[..c_in].copy_from_slice(w);
                    return;
                }
                for (ci, per_tap) in w.chunks(taps).enumerate() {
                    for (tap, v) in per_tap.iter().enumerate() {
                        col[tap * cin_p + ci] = *v;
                    }
                }
            }
        });
        let mut bias_p = vec![0f32; cout_p];
        bias_p[..c_out].copy_from_slice(bias);
        Self {
            k,
            c_in: cin_p,
            c_out: cout_p,
            in_features: c_in,
            out_features: c_out,
            split,
            parts,
            bias: bias_p,
        }
    }

    /// The bf16 parts of an input for this convolution (its whole buffer, border included),
    /// in blocks of 32 channels.
    pub fn input_parts(&self, x: &Nhwc) -> InputParts {
        let plane = x.plane();
        InputParts {
            h: x.h,
            w: x.w,
            c: x.c,
            pad: x.pad,
            plane,
            data: self.split_pixels(&x.data, x.c, plane, plane),
        }
    }

    /// The parts of `pixels` pixels of `c` channels (`c` a multiple of 32) at `src[i · c..]`,
    /// for a plane of `plane` pixels; the pixels after `pixels` are zero.
    fn split_pixels(&self, src: &[f32], c: usize, pixels: usize, plane: usize) -> Vec<Vec<u16>> {
        assert!(src.len() >= pixels * c && pixels <= plane && c.is_multiple_of(32));
        let blocks = c / 32;
        // Every value is written below, so a reused buffer is not cleared first.
        let mut data: Vec<Vec<u16>> = (0..self.split.parts())
            .map(|_| {
                let mut v = take_stale(&U16_POOL, blocks * plane * 32);
                v.resize(blocks * plane * 32, 0);
                for block in v.chunks_mut(plane * 32) {
                    block[pixels * 32..].fill(0);
                }
                v
            })
            .collect();
        // One task per (channel block, run of pixels): each writes its own range of every part.
        const RUN: usize = 1024;
        let runs = pixels.div_ceil(RUN);
        let ptrs: Vec<SendPtr<u16>> = data.iter_mut().map(|d| SendPtr(d.as_mut_ptr())).collect();
        (0..blocks * runs).into_par_iter().for_each(|t| {
            let (cb, run) = (t / runs, t % runs);
            let (p0, p1) = (run * RUN, ((run + 1) * RUN).min(pixels));
            let mut dst: Vec<&mut [u16]> = ptrs
                .iter()
                .map(|p| {
                    // SAFETY: `(cb · plane + p0 .. cb · plane + p1) · 32` lies inside each part
                    // (`blocks · plane · 32` long) and no other task covers it.
                    unsafe {
                        std::slice::from_raw_parts_mut(
                            p.get().add((cb * plane + p0) * 32),
                            (p1 - p0) * 32,
                        )
                    }
                })
                .collect();
            bf16_gemm::split_rows(&src[p0 * c + cb * 32..], c, p1 - p0, &mut dst);
        });
        data
    }

    /// The parts of `rows` (`n × in`, row-major) as the `1 × n` input of a 1 × 1 convolution.
    fn row_parts(&self, rows: &[f32]) -> InputParts {
        assert_eq!(self.k, 1, "rows are the input of a 1 × 1 convolution");
        let in_features = self.in_features;
        assert_eq!(rows.len() % in_features, 0, "rows of {in_features} values");
        let n = rows.len() / in_features;
        if in_features != self.c_in {
            let mut x = Nhwc::zeros(1, n, self.c_in, 0);
            for (i, r) in rows.chunks(in_features).enumerate() {
                let o = x.at(0, i);
                x.data[o..o + in_features].copy_from_slice(r);
            }
            return self.input_parts(&x);
        }
        // The rows are the pixels as they are: split straight from them.
        let plane = n + SLACK_PIXELS;
        InputParts {
            h: 1,
            w: n,
            c: self.c_in,
            pad: 0,
            plane,
            data: self.split_pixels(rows, self.c_in, n, plane),
        }
    }

    /// The rows of a `1 × n` f32 output (its first `n` pixels), without the padded channels.
    fn output_rows(&self, mut y: Nhwc) -> Vec<f32> {
        let n = y.w;
        if self.out_features == self.c_out {
            // The first `n` pixels are the rows: the buffer is the result.
            let mut out = std::mem::take(&mut y.data);
            out.truncate(n * self.c_out);
            out
        } else {
            y.tokens(self.out_features)
        }
    }

    /// Input channels (before padding).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output channels (before padding).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// A 1 × 1 convolution as a linear layer over rows: `rows` (`n × in`, row-major) → `n ×
    /// out` (`y = x · Wᵀ + b` of `nn.Linear`).
    pub fn forward_rows(&self, level: Level, rows: &[f32]) -> Vec<f32> {
        self.forward_rows_act(level, rows, Act::Identity)
    }

    /// [`Self::forward_rows`] with `act` applied to each result (`act(x · Wᵀ + b)`).
    pub fn forward_rows_act(&self, level: Level, rows: &[f32], act: Act) -> Vec<f32> {
        let parts = self.row_parts(rows);
        self.output_rows(self.forward(level, &parts, act, None, 0, false).into_f32())
    }

    /// Two linear layers over rows, `next(act(rows · Wᵀ + b))` (an MLP), the intermediate
    /// handed over as `next`'s bf16 parts instead of f32. `next` must split as this one and
    /// take this one's outputs.
    pub fn forward_rows_then(
        &self,
        level: Level,
        rows: &[f32],
        act: Act,
        next: &ConvWeights,
    ) -> Vec<f32> {
        assert!(next.k == 1 && next.c_in == self.c_out && next.split == self.split);
        let parts = self.row_parts(rows);
        let mid = self.forward(level, &parts, act, None, 0, true).into_parts();
        drop(parts);
        next.output_rows(
            next.forward(level, &mid, Act::Identity, None, 0, false)
                .into_f32(),
        )
    }

    /// `act(conv(x) + bias [+ residual])` of the input's parts ([`Self::input_parts`]),
    /// written with a border of `out_pad`, as f32 or (`out_parts`) as the parts of the next
    /// convolution, which must split as this one.
    pub fn forward(
        &self,
        level: Level,
        x_parts: &InputParts,
        act: Act,
        residual: Option<&Nhwc>,
        out_pad: usize,
        out_parts: bool,
    ) -> Activation {
        let x = x_parts;
        assert_eq!(x.c, self.c_in, "convolution input channels");
        assert_eq!(
            x.pad,
            self.k / 2,
            "a {0}×{0} convolution reads a border of {1}",
            self.k,
            self.k / 2
        );
        assert!(level.runs_here());
        let (h, w) = (x.h, x.w);
        let mut out = match out_parts {
            false => Activation::F32(Nhwc::for_output(h, w, self.c_out, out_pad)),
            true => Activation::Parts(InputParts::for_output(
                h,
                w,
                self.c_out,
                out_pad,
                self.split.parts(),
            )),
        };
        if let Some(r) = residual {
            assert_eq!((r.h, r.w, r.c), (h, w, self.c_out), "residual shape");
        }
        // Tiles: (first output pixel p = y·w + x, pixel count, input pixel of tap 0); taps as
        // pixel offsets.
        let mut tiles = Vec::new();
        if self.k == 1 {
            for p0 in (0..h * w).step_by(16) {
                tiles.push((p0, 16.min(h * w - p0), p0));
            }
        } else {
            for y in 0..h {
                for x0 in (0..w).step_by(16) {
                    tiles.push((y * w + x0, 16.min(w - x0), y * (w + 2) + x0));
                }
            }
        }
        let taps: Vec<usize> = (0..self.k * self.k)
            .map(|t| (t / self.k) * (w + 2 * x.pad) + t % self.k)
            .collect();
        // Every A read (16 rows from a tile's offset plus the largest tap) stays inside.
        let plane = x.plane;
        let last = tiles.last().map_or(0, |t| t.2) + taps.last().copied().unwrap_or(0) + 16;
        assert!(last <= plane && plane >= (h + 2 * x.pad) * (w + 2 * x.pad));
        assert!(x_parts.data.iter().all(|p| p.len() == plane * x.c));
        let m_blocks = tiles.len().div_ceil(2);
        let n_blocks = self.c_out / 32;
        let k_steps = self.k * self.k * self.c_in / 32;
        let cb = self.c_in / 32;
        let weights_major = self.c_out > tiles.len() * 16;
        let dst = match &mut out {
            Activation::F32(o) => Dst::F32 {
                ptr: SendPtr(o.data.as_mut_ptr()),
                row: o.w + 2 * o.pad,
                c: o.c,
            },
            Activation::Parts(o) => Dst::Parts {
                ptrs: [0, 1, 2].map(|i| {
                    SendPtr(
                        o.data
                            .get_mut(i)
                            .map_or(std::ptr::null_mut(), |d| d.as_mut_ptr()),
                    )
                }),
                row: o.w + 2 * o.pad,
                plane: o.plane,
                split: self.split,
            },
        };
        let geom = BlockGeometry {
            w,
            out_pad,
            act,
            avx512: avx512_available(),
        };
        let products = self.split.products();
        // Blocks are taken in groups of `group × group` (of M and N blocks) whose A rows and
        // B columns fit in L2 together, so that each is read from memory once per group
        // instead of once per block of the other operand.
        let bytes_per_block = 32 * 32 * k_steps * 2 * self.split.parts();
        let group = (GROUP_BYTES / bytes_per_block).clamp(1, 16);
        let (groups_m, groups_n) = (m_blocks.div_ceil(group), n_blocks.div_ceil(group));
        let run_block = |steps: &mut Vec<Step>, blk: &mut [f32; 1024], mb: usize, nb: usize| {
            let t0 = tiles[2 * mb];
            let t1 = tiles.get(2 * mb + 1).copied().unwrap_or((t0.0, 0, t0.2));
            steps.clear();
            for &(pa, pb) in products {
                let a = &x_parts.data[pa];
                let b = &self.parts[pb];
                for (tap, off) in taps.iter().enumerate() {
                    for j in 0..cb {
                        let ks = tap * cb + j;
                        let block = j * plane;
                        steps.push(Step {
                            a0: a[(block + t0.2 + off) * 32..].as_ptr(),
                            a1: a[(block + t1.2 + off) * 32..].as_ptr(),
                            b: b[(nb * k_steps + ks) * 1024..].as_ptr(),
                        });
                    }
                }
            }
            // SAFETY: `level.runs_here()` was asserted; each A pointer starts inside its
            // channel block's plane and its 16 rows of 32 stay inside it (`last` above
            // bounds the farthest pixel); each B piece is 1024 values inside the packed
            // part (nb < n_blocks, ks < k_steps).
            unsafe { bf16_gemm::block(level, steps, 64, blk) };
            let bias: &[f32; 32] = self.bias[nb * 32..nb * 32 + 32].try_into().expect("32");
            // SAFETY: pixels t0.0..t0.0+t0.1 and t1.0..t1.0+t1.1 (all < h·w) and channel
            // block nb (< the output's c / 32) lie inside the output, and are written by
            // this block alone: each pixel belongs to one tile, each tile to one M block.
            unsafe { write_block(&dst, &geom, nb, [t0, t1], blk, bias, residual) };
        };
        (0..groups_m * groups_n).into_par_iter().for_each_init(
            || (Vec::with_capacity(products.len() * k_steps), [0f32; 1024]),
            |(steps, blk), g| {
                // The larger operand is read once: weights-major when they outweigh the
                // activation.
                let (gm, gn) = if weights_major {
                    (g % groups_m, g / groups_m)
                } else {
                    (g / groups_n, g % groups_n)
                };
                for mb in gm * group..((gm + 1) * group).min(m_blocks) {
                    for nb in gn * group..((gn + 1) * group).min(n_blocks) {
                        run_block(steps, blk, mb, nb);
                    }
                }
            },
        );
        out
    }
}

/// Where a block's results go.
enum Dst {
    /// f32 NHWC: pixel `i` of the bordered plane at `ptr + i·c`.
    F32 {
        ptr: SendPtr<f32>,
        row: usize,
        c: usize,
    },
    /// bf16 parts: part `p`, channel block `cb`, pixel `i` at `ptrs[p] + (cb·plane + i)·32`.
    Parts {
        ptrs: [SendPtr<u16>; 3],
        row: usize,
        plane: usize,
        split: Split,
    },
}

/// What the epilogue needs of the layer.
struct BlockGeometry {
    w: usize,
    out_pad: usize,
    act: Act,
    /// Whether the epilogue may take its AVX-512 build (checked once per convolution).
    avx512: bool,
}

fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The epilogue of one block: rows of `tiles` (first pixel, count) through [`epilogue`] into
/// `dst` at channel block `nb`.
///
/// # Safety
/// Every pixel of the tiles and channel block `nb` must lie inside `dst` and be written by no
/// other thread meanwhile.
unsafe fn write_block(
    dst: &Dst,
    g: &BlockGeometry,
    nb: usize,
    tiles: [(usize, usize, usize); 2],
    blk: &[f32; 1024],
    bias: &[f32; 32],
    residual: Option<&Nhwc>,
) {
    #[cfg(target_arch = "x86_64")]
    if g.avx512 {
        // SAFETY: the CPU has the features (`avx512_available`); the rest is forwarded from
        // the caller.
        unsafe { write_block_avx512(dst, g, nb, tiles, blk, bias, residual) };
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { write_block_plain(dst, g, nb, tiles, blk, bias, residual) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn write_block_avx512(
    dst: &Dst,
    g: &BlockGeometry,
    nb: usize,
    tiles: [(usize, usize, usize); 2],
    blk: &[f32; 1024],
    bias: &[f32; 32],
    residual: Option<&Nhwc>,
) {
    // SAFETY: forwarded from the caller (the same code, compiled for AVX-512).
    unsafe { write_block_plain(dst, g, nb, tiles, blk, bias, residual) };
}

#[inline(always)]
unsafe fn write_block_plain(
    dst: &Dst,
    g: &BlockGeometry,
    nb: usize,
    tiles: [(usize, usize, usize); 2],
    blk: &[f32; 1024],
    bias: &[f32; 32],
    residual: Option<&Nhwc>,
) {
    for (half, t) in tiles.into_iter().enumerate() {
        for row in 0..t.1 {
            let p = t.0 + row;
            let (y, x) = (p / g.w, p % g.w);
            let r0 = (half * 16 + row) * 32;
            let acc: &[f32; 32] = blk[r0..r0 + 32].try_into().expect("32");
            let res = residual.map(|r| {
                let ro = r.at(y, x) + nb * 32;
                <&[f32; 32]>::try_from(&r.data[ro..ro + 32]).expect("32")
            });
            let v = epilogue(acc, bias, res, g.act);
            match dst {
                Dst::F32 { ptr, row, c } => {
                    let o = ((y + g.out_pad) * row + x + g.out_pad) * c + nb * 32;
                    // SAFETY: the caller guarantees the pixel's channel block is ours.
                    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), ptr.get().add(o), 32) };
                }
                Dst::Parts {
                    ptrs,
                    row,
                    plane,
                    split,
                } => {
                    let o = (nb * plane + (y + g.out_pad) * row + x + g.out_pad) * 32;
                    let parts = bf16_gemm::split_row(&v, *split);
                    for (ptr, part) in ptrs.iter().zip(&parts).take(split.parts()) {
                        // SAFETY: as above, in each of the split's parts.
                        unsafe {
                            std::ptr::copy_nonoverlapping(part.as_ptr(), ptr.get().add(o), 32)
                        };
                    }
                }
            }
        }
    }
}

/// `act(acc + bias [+ residual])` for 32 channels.
#[inline(always)]
fn epilogue(
    acc: &[f32; 32],
    bias: &[f32; 32],
    residual: Option<&[f32; 32]>,
    act: Act,
) -> [f32; 32] {
    let mut v = [0f32; 32];
    for j in 0..32 {
        v[j] = acc[j] + bias[j];
    }
    if let Some(r) = residual {
        for j in 0..32 {
            v[j] += r[j];
        }
    }
    // One loop per activation (a `match` per value keeps the compiler from vectorising).
    match act {
        Act::Identity => {}
        Act::Relu => v.iter_mut().for_each(|x| *x = Act::Relu.apply(*x)),
        Act::QuickGelu => v.iter_mut().for_each(|x| *x = Act::QuickGelu.apply(*x)),
    }
    v
}

/// A raw pointer that rayon tasks may share: each writes a disjoint part of the buffer.
struct SendPtr<T>(*mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: the tasks sharing it write disjoint elements (see the write's SAFETY comment) and the
// buffer outlives them (the parallel loop ends before `out` is returned).
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bf16_gemm::test_support::{levels, max_abs_diff, uniform};
    use crate::kernels::bf16_gemm::{bf16_round, bf16_to_f32};
    use smallcap_util::rng::SplitMix64;

    /// A direct convolution in f64 of NCHW `x` (`ci × h × w`) with `[co, ci, k, k]` weights.
    #[allow(clippy::too_many_arguments)]
    fn direct(
        x: &[f64],
        wt: &[f64],
        b: &[f32],
        ci: usize,
        co: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
    ) -> (Vec<f64>, usize, usize) {
        let pad = k / 2;
        let oh = (h + 2 * pad - k) / stride + 1;
        let ow = (w + 2 * pad - k) / stride + 1;
        let mut out = vec![0f64; co * oh * ow];
        for o in 0..co {
            for y in 0..oh {
                for xx in 0..ow {
                    let mut acc = b[o] as f64;
                    for c in 0..ci {
                        for kh in 0..k {
                            for kw in 0..k {
                                let iy = (y * stride + kh) as isize - pad as isize;
                                let ix = (xx * stride + kw) as isize - pad as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    acc += x[(c * h + iy as usize) * w + ix as usize]
                                        * wt[((o * ci + c) * k + kh) * k + kw];
                                }
                            }
                        }
                    }
                    out[(o * oh + y) * ow + xx] = acc;
                }
            }
        }
        (out, oh, ow)
    }

    /// Runs one convolution the way the ResNet does (bordered input for 3 × 3, im2col for other
    /// shapes), with ReLU and a residual, and returns the f32 NCHW result.
    #[allow(clippy::too_many_arguments)]
    fn run(
        level: Level,
        x: &[f32],
        wt: &[f32],
        b: &[f32],
        res: &[f32],
        ci: usize,
        co: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        s: Split,
    ) -> Vec<f32> {
        let direct_shape = runs_directly(k, stride);
        let weights = if direct_shape {
            ConvWeights::new(wt, b, co, ci, k, s)
        } else {
            ConvWeights::new(wt, b, co, ci * k * k, 1, s)
        };
        let input = Nhwc::from_nchw(x, ci, h, w, if direct_shape { k / 2 } else { 0 });
        let input = if direct_shape {
            input
        } else {
            input.im2col(ci, k, stride, k / 2)
        };
        let (oh, ow) = (input.h, input.w);
        let residual = Nhwc::from_nchw(res, co, oh, ow, 0);
        let parts = weights.input_parts(&input);
        let out = weights
            .forward(level, &parts, Act::Relu, Some(&residual), 1, false)
            .into_f32();
        let mut nchw = vec![0f32; co * oh * ow];
        for o in 0..co {
            for y in 0..oh {
                for xx in 0..ow {
                    nchw[(o * oh + y) * ow + xx] = out.data[out.at(y, xx) + o];
                }
            }
        }
        // The border written around the output is zero.
        assert!((0..out.w + 2).all(|i| out.data[i * out.c..(i + 1) * out.c]
            .iter()
            .all(|v| *v == 0.0)));
        nchw
    }

    /// Each convolution shape the ResNet uses (1 × 1, 3 × 3 stride 1, the stride-2 stem through
    /// im2col), with channel counts and widths that are not multiples of 32 or 16, against a
    /// direct f64 convolution: bf16 products of the rounded operands within f32 summation
    /// error, and three-part split products of the f32 operands at f32's level.
    #[test]
    fn convolutions_equal_a_direct_convolution() {
        let mut seed = SplitMix64(17);
        for (ci, co, h, w, k, stride) in [
            (3, 8, 9, 11, 3, 2),
            (40, 70, 5, 17, 3, 1),
            (64, 33, 14, 14, 1, 1),
            (8, 40, 1, 1, 3, 1),
            (33, 32, 3, 40, 1, 1),
        ] {
            let x: Vec<f32> = (0..ci * h * w).map(|_| uniform(&mut seed)).collect();
            let wt: Vec<f32> = (0..co * ci * k * k).map(|_| uniform(&mut seed)).collect();
            let b: Vec<f32> = (0..co).map(|_| uniform(&mut seed)).collect();
            let round = |v: &[f32]| {
                v.iter()
                    .map(|x| bf16_to_f32(bf16_round(*x)) as f64)
                    .collect::<Vec<_>>()
            };
            let exact = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<_>>();
            for (s, xs, ws, tol) in [
                (Split::One, round(&x), round(&wt), 2e-6),
                (Split::Three, exact(&x), exact(&wt), 2e-6),
            ] {
                let (want, oh, ow) = direct(&xs, &ws, &b, ci, co, h, w, k, stride);
                let res: Vec<f32> = (0..co * oh * ow).map(|_| uniform(&mut seed)).collect();
                let want: Vec<f64> = want
                    .iter()
                    .zip(&res)
                    .map(|(v, r)| (v + *r as f64).max(0.0))
                    .collect();
                let scale = (ci * k * k) as f64;
                for level in levels() {
                    let got = run(level, &x, &wt, &b, &res, ci, co, h, w, k, stride, s);
                    let err = max_abs_diff(&got, &want);
                    assert!(
                        err <= tol * scale,
                        "{level:?} {s:?} ci={ci} co={co} {h}x{w} k={k}/{stride}: {err}"
                    );
                }
            }
        }
    }

    /// Rows through a linear layer with the QuickGELU epilogue equal `x · Wᵀ + b` and
    /// `v · sigmoid(1.702 v)` computed in f64 (operands that bf16 holds exactly, so only the
    /// f32 sums and the vectorised `exp` differ); widths that are not multiples of 32.
    #[test]
    fn rows_with_quick_gelu_equal_the_definition() {
        let mut seed = SplitMix64(41);
        let (n, i, o) = (37, 45, 40);
        let mut exact = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| bf16_to_f32(bf16_round(uniform(&mut seed) * 3.0)))
                .collect()
        };
        let (x, wt, b) = (exact(n * i), exact(o * i), exact(o));
        let want: Vec<f64> = (0..n * o)
            .map(|k| {
                let (r, c) = (k / o, k % o);
                let v = b[c] as f64
                    + (0..i)
                        .map(|j| x[r * i + j] as f64 * wt[c * i + j] as f64)
                        .sum::<f64>();
                v / (1.0 + (-1.702 * v).exp())
            })
            .collect();
        let weights = ConvWeights::new(&wt, &b, o, i, 1, Split::One);
        for level in levels() {
            let got = weights.forward_rows_act(level, &x, Act::QuickGelu);
            let err = max_abs_diff(&got, &want);
            assert!(err < 1e-5, "{level:?}: {err}");
            recycle(got);
        }
        // Without the activation the same rows give the plain product.
        let plain = weights.forward_rows(levels()[0], &x);
        assert!(plain
            .iter()
            .zip(&want)
            .any(|(p, w)| (*p as f64 - w).abs() > 0.1));
    }

    /// Two layers with the intermediate handed over in bf16 parts equal the two layers one
    /// after the other through f32 (both split the same values), for every split and level.
    #[test]
    fn an_mlp_through_parts_equals_two_layers_through_f32() {
        let mut seed = SplitMix64(43);
        let (n, i, m, o) = (29, 64, 96, 45);
        let x: Vec<f32> = (0..n * i).map(|_| uniform(&mut seed)).collect();
        let w1: Vec<f32> = (0..m * i).map(|_| uniform(&mut seed)).collect();
        let w2: Vec<f32> = (0..o * m).map(|_| uniform(&mut seed)).collect();
        let (b1, b2) = (vec![0.3f32; m], vec![-0.1f32; o]);
        for s in [Split::One, Split::Two, Split::Three] {
            let (l1, l2) = (
                ConvWeights::new(&w1, &b1, m, i, 1, s),
                ConvWeights::new(&w2, &b2, o, m, 1, s),
            );
            for level in levels() {
                let mid = l1.forward_rows_act(level, &x, Act::QuickGelu);
                let want = l2.forward_rows(level, &mid);
                let got = l1.forward_rows_then(level, &x, Act::QuickGelu, &l2);
                assert_eq!(got, want, "{level:?} {s:?}");
            }
        }
    }

    /// A convolution handing its result to the next one as bf16 parts gives what the next one
    /// computes from the f32 result split afterwards: both paths split the same values.
    #[test]
    fn parts_output_equals_splitting_the_f32_output() {
        let mut seed = SplitMix64(23);
        let (ci, cm, co, h, w) = (20, 50, 12, 7, 19);
        let x: Vec<f32> = (0..ci * h * w).map(|_| uniform(&mut seed)).collect();
        let w1: Vec<f32> = (0..cm * ci).map(|_| uniform(&mut seed)).collect();
        let w2: Vec<f32> = (0..co * cm * 9).map(|_| uniform(&mut seed)).collect();
        let (b1, b2) = (vec![0.1f32; cm], vec![-0.2f32; co]);
        for s in [Split::One, Split::Two, Split::Three] {
            let c1 = ConvWeights::new(&w1, &b1, cm, ci, 1, s);
            let c2 = ConvWeights::new(&w2, &b2, co, cm, 3, s);
            let input = Nhwc::from_nchw(&x, ci, h, w, 0);
            for level in levels() {
                let p = c1.input_parts(&input);
                let via_parts = c1.forward(level, &p, Act::Relu, None, 1, true).into_parts();
                let y1 = c2
                    .forward(level, &via_parts, Act::Identity, None, 0, false)
                    .into_f32();
                let f32_mid = c1.forward(level, &p, Act::Relu, None, 1, false).into_f32();
                let y2 = c2
                    .forward(
                        level,
                        &c2.input_parts(&f32_mid),
                        Act::Identity,
                        None,
                        0,
                        false,
                    )
                    .into_f32();
                assert_eq!(y1.data, y2.data, "{level:?} {s:?}");
            }
        }
    }

    /// Average pooling and re-bordering keep every value and zero every border.
    #[test]
    fn pooling_and_borders() {
        let x: Vec<f32> = (0..2 * 5 * 6).map(|i| i as f32).collect();
        let a = Nhwc::from_nchw(&x, 2, 5, 6, 1);
        let p = a.avg_pool(2, 0);
        assert_eq!((p.h, p.w), (2, 3), "floor of 5/2 and 6/2 as torch");
        // Channel 1, pixel (1, 2): mean of rows 2-3, columns 4-5 of plane 1.
        let want = [(2, 4), (2, 5), (3, 4), (3, 5)]
            .iter()
            .map(|(y, xx)| x[30 + y * 6 + xx])
            .sum::<f32>()
            / 4.0;
        assert_eq!(p.data[p.at(1, 2) + 1], want);
        let b = p.with_pad(2);
        assert_eq!(b.data[b.at(1, 2) + 1], want);
        assert!(b.data[..2 * (3 + 4) * 32].iter().all(|v| *v == 0.0));
    }
}
