//! Linear layers on the matrix units, for `train --precision bf16`: every product of a linear
//! layer's training step (`x · W` forward, `grad · Wᵀ` for the input's gradient and, for a
//! trainable weight, `xᵀ · grad` for its own) with operands rounded to bf16 and sums in f32 —
//! what torch's bf16 autocast does to a linear layer, except that the result stays f32 — on
//! the bf16 blocks of [`super::bf16_gemm`] (AMX where the CPU has it, else AVX-512 BF16, else
//! plain loops).
//!
//! A frozen weight ([`FrozenBf16`]) is packed once per direction; a trainable one
//! ([`linear_bf16`]) at every product, since each update changes it (its f32 values are the
//! master weights the optimiser updates). Activations, gradients and every other operation
//! stay f32.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::bf16_gemm::{Level, Split};
use super::conv_bf16::ConvWeights;

/// `A · B` for `A` `m × k` (row-major) and `B` given as `Bᵀ` (`n × k`, row-major), in bf16
/// with f32 sums: `m × n`, row-major.
fn product(level: Level, a: &[f32], m: usize, k: usize, bt: &[f32], n: usize) -> Vec<f32> {
    if m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    ConvWeights::new(bt, &vec![0.0; n], n, k, 1, Split::One).forward_rows(level, &a[..m * k])
}

/// A 2-D operand's values in row-major order (borrowed when already so), with its shape.
fn row_major<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> Result<(Cow<'a, [f32]>, usize, usize)> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expected f32 values");
    };
    let (r, c) = l.shape().dims2()?;
    if let Some((start, end)) = l.contiguous_offsets() {
        return Ok((Cow::Borrowed(&v[start..end]), r, c));
    }
    let (s0, s1) = (l.stride()[0], l.stride()[1]);
    let o = l.start_offset();
    let mut out = Vec::with_capacity(r * c);
    for i in 0..r {
        out.extend((0..c).map(|j| v[o + i * s0 + j * s1]));
    }
    Ok((Cow::Owned(out), r, c))
}

/// The transpose of a row-major `r × c` matrix.
fn transposed(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; r * c];
    for (i, row) in v.chunks(c).enumerate() {
        for (j, &x) in row.iter().enumerate() {
            out[j * r + i] = x;
        }
    }
    out
}

/// `f` over `x`'s rows (`[.., d_in]` flattened to `[N, d_in]`), its `[N, d_out]` result shaped
/// as `x` with `d_out` last.
fn over_rows(
    x: &Tensor,
    d_out: usize,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    match dims.len() {
        0 => candle_core::bail!("bf16 linear: a scalar input"),
        2 => f(x),
        n => {
            let y = f(&x.flatten_to(n - 2)?)?;
            let mut out = dims;
            out[n - 1] = d_out;
            y.reshape(out)
        }
    }
}

/// A frozen `y = x · W + b` (`W` `[in, out]`) with both of its products in bf16.
#[derive(Debug)]
pub struct FrozenBf16 {
    /// `W` as `nn.Linear` holds it (`[out, in]`), with the bias.
    forward: ConvWeights,
    /// `Wᵀ` (`[in, out]` read as `[out', in']`), no bias: `grad · Wᵀ`.
    backward: ConvWeights,
    level: Level,
}

impl FrozenBf16 {
    /// From a weight `[in, out]` (any layout) and an optional bias `[out]`, for the products of
    /// `level` (see [`Level::detect`]).
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, level: Level) -> Result<Self> {
        let (d_in, d_out) = weight.dims2()?;
        let in_out = weight.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let out_in = weight.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let bias = match bias {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; d_out],
        };
        if bias.len() != d_out {
            candle_core::bail!("bf16 linear: bias of {} for {d_out} outputs", bias.len());
        }
        Ok(Self {
            forward: ConvWeights::new(&out_in, &bias, d_out, d_in, 1, Split::One),
            backward: ConvWeights::new(&in_out, &vec![0.0; d_in], d_in, d_out, 1, Split::One),
            level,
        })
    }

    /// `x · W + b` for `x` `[.., in]` (f32, CPU); its backward pass gives `x` the gradient
    /// `grad · Wᵀ`, computed the same way.
    pub fn forward(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        over_rows(x, self.forward.out_features(), |rows| {
            rows.apply_op1(FrozenProduct {
                layer: self.clone(),
                transposed: false,
            })
        })
    }
}

/// One of a frozen layer's two products as a candle operation.
struct FrozenProduct {
    layer: Arc<FrozenBf16>,
    /// `grad · Wᵀ` instead of `x · W + b`.
    transposed: bool,
}

impl CustomOp1 for FrozenProduct {
    fn name(&self) -> &'static str {
        "frozen-bf16-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = match self.transposed {
            false => &self.layer.forward,
            true => &self.layer.backward,
        };
        let (x, rows, d_in) = row_major(s, l, self.name())?;
        if d_in != w.in_features() {
            candle_core::bail!(
                "bf16 linear: rows of {d_in} values for {} inputs",
                w.in_features()
            );
        }
        let d_out = w.out_features();
        let y = if rows == 0 {
            Vec::new()
        } else {
            w.forward_rows(self.layer.level, &x)
        };
        Ok((CpuStorage::F32(y), Shape::from((rows, d_out))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if self.transposed {
            candle_core::bail!("bf16 linear: no second derivative");
        }
        Ok(Some(grad.apply_op1_no_bwd(&FrozenProduct {
            layer: self.layer.clone(),
            transposed: true,
        })?))
    }
}

/// `x · w (+ b)` for a trainable `w` `[in, out]` (and `b` `[out]`), `x` `[.., in]`, all f32 on
/// the CPU: the product and both of its gradients (`grad · wᵀ`, `xᵀ · grad`) in bf16 with f32
/// sums; the bias is added in f32.
pub fn linear_bf16(x: &Tensor, w: &Tensor, b: Option<&Tensor>, level: Level) -> Result<Tensor> {
    let y = over_rows(x, w.dim(1)?, |rows| {
        rows.apply_op2(w, TrainableProduct::Forward(level))
    })?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// The three products of a trainable layer.
enum TrainableProduct {
    /// `(x, w) → x · w`.
    Forward(Level),
    /// `(grad, w) → grad · wᵀ`.
    InputGradient(Level),
    /// `(x, grad) → xᵀ · grad`.
    WeightGradient(Level),
}

impl CustomOp2 for TrainableProduct {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, r1, c1) = row_major(s1, l1, self.name())?;
        let (b, r2, c2) = row_major(s2, l2, self.name())?;
        let (y, shape) = match *self {
            TrainableProduct::Forward(level) => {
                if c1 != r2 {
                    candle_core::bail!("bf16 linear: rows of {c1} values for {r2} inputs");
                }
                let wt = transposed(&b, r2, c2);
                (product(level, &a, r1, c1, &wt, c2), (r1, c2))
            }
            TrainableProduct::InputGradient(level) => {
                if c1 != c2 {
                    candle_core::bail!("bf16 linear: gradient of {c1} outputs for {c2}");
                }
                (product(level, &a, r1, c1, &b, r2), (r1, r2))
            }
            TrainableProduct::WeightGradient(level) => {
                if r1 != r2 {
                    candle_core::bail!("bf16 linear: {r1} inputs for {r2} gradient rows");
                }
                let (xt, gt) = (transposed(&a, r1, c1), transposed(&b, r2, c2));
                (product(level, &xt, c1, r1, &gt, c2), (c1, c2))
            }
        };
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let TrainableProduct::Forward(level) = *self else {
            candle_core::bail!("bf16 linear: no second derivative");
        };
        let dx = grad.apply_op2_no_bwd(w, &TrainableProduct::InputGradient(level))?;
        let dw = x.apply_op2_no_bwd(grad, &TrainableProduct::WeightGradient(level))?;
        Ok((Some(dx), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bf16_gemm::test_support::{levels, uniform};
    use crate::kernels::bf16_gemm::{bf16_round, bf16_to_f32};
    use candle_core::{Device, Var};
    use smallcap_util::rng::SplitMix64;

    fn bf16(x: f32) -> f64 {
        bf16_to_f32(bf16_round(x)) as f64
    }

    fn random(n: usize, rng: &mut SplitMix64) -> Vec<f32> {
        (0..n).map(|_| uniform(rng)).collect()
    }

    /// `Σ_t a(t) · b(t)` over bf16-rounded operands in f64, with `Σ |a(t) · b(t)|`.
    fn dot(terms: usize, a: impl Fn(usize) -> f32, b: impl Fn(usize) -> f32) -> (f64, f64) {
        (0..terms)
            .map(|t| bf16(a(t)) * bf16(b(t)))
            .fold((0.0, 0.0), |(s, m), p| (s + p, m + p.abs()))
    }

    /// Products of bf16 values are exact in f32, and an f32 sum of `m` terms is within
    /// `m · 2^-24 · Σ|terms|` of the exact sum, in any order.
    fn assert_close(what: &str, got: &Tensor, want: &[(f64, f64)], m: usize) {
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, (w, abs)) in got.iter().zip(want) {
            let bound = m as f64 * 2f64.powi(-24) * abs;
            assert!(
                (*g as f64 - w).abs() <= bound,
                "{what}: {g} vs {w} (bound {bound:e})"
            );
        }
    }

    const SHAPES: [(usize, usize, usize); 4] =
        [(1, 5, 3), (19, 37, 45), (40, 64, 96), (33, 70, 31)];

    /// `x`, `w`, `b` and a probe `p` (`loss = Σ y ⊙ p`) of one shape, with the definitions in
    /// f64 over the bf16-rounded operands: `y = x · w + b`, `dx = p · wᵀ`, `dw = xᵀ · p`.
    struct Case {
        n: usize,
        d_in: usize,
        d_out: usize,
        x: Vec<f32>,
        w: Vec<f32>,
        b: Vec<f32>,
        p: Vec<f32>,
    }

    impl Case {
        fn new((n, d_in, d_out): (usize, usize, usize), rng: &mut SplitMix64) -> Self {
            Self {
                n,
                d_in,
                d_out,
                w: random(d_in * d_out, rng),
                b: random(d_out, rng),
                x: random(n * d_in, rng),
                p: random(n * d_out, rng),
            }
        }

        fn want_y(&self) -> Vec<(f64, f64)> {
            let (d_in, d_out) = (self.d_in, self.d_out);
            let mut out = Vec::new();
            for r in 0..self.n {
                for o in 0..d_out {
                    let (s, a) = dot(d_in, |i| self.x[r * d_in + i], |i| self.w[i * d_out + o]);
                    let b = self.b[o] as f64;
                    out.push((s + b, a + b.abs()));
                }
            }
            out
        }

        fn want_dx(&self) -> Vec<(f64, f64)> {
            let (d_in, d_out) = (self.d_in, self.d_out);
            let mut out = Vec::new();
            for r in 0..self.n {
                for i in 0..d_in {
                    out.push(dot(
                        d_out,
                        |o| self.p[r * d_out + o],
                        |o| self.w[i * d_out + o],
                    ));
                }
            }
            out
        }

        fn want_dw(&self) -> Vec<(f64, f64)> {
            let (n, d_in, d_out) = (self.n, self.d_in, self.d_out);
            let mut out = Vec::new();
            for i in 0..d_in {
                for o in 0..d_out {
                    out.push(dot(n, |r| self.x[r * d_in + i], |r| self.p[r * d_out + o]));
                }
            }
            out
        }
    }

    /// A frozen layer's value and its input's gradient equal the definitions, at every level
    /// and odd sizes (padding inside the blocks); the weight gets no gradient.
    #[test]
    fn a_frozen_layer_equals_the_bf16_definition_at_every_level() {
        let mut rng = SplitMix64(7);
        let dev = Device::Cpu;
        for shape in SHAPES {
            let c = Case::new(shape, &mut rng);
            let wt = Tensor::from_vec(c.w.clone(), (c.d_in, c.d_out), &dev).unwrap();
            let bt = Tensor::from_vec(c.b.clone(), c.d_out, &dev).unwrap();
            let probe = Tensor::from_vec(c.p.clone(), (c.n, c.d_out), &dev).unwrap();
            for level in levels() {
                let layer = Arc::new(FrozenBf16::new(&wt, Some(&bt), level).unwrap());
                let xv = Var::from_vec(c.x.clone(), (c.n, c.d_in), &dev).unwrap();
                let y = layer.forward(xv.as_tensor()).unwrap();
                let grads = (&y * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                assert!(grads.get(&wt).is_none() && grads.get(&bt).is_none());
                let what = format!("frozen {level:?} {shape:?}");
                assert_close(&format!("{what} y"), &y, &c.want_y(), c.d_in + 1);
                let dx = grads.get(xv.as_tensor()).unwrap();
                assert_close(&format!("{what} dx"), dx, &c.want_dx(), c.d_out);
            }
        }
    }

    /// A trainable layer's value and all three gradients equal the definitions, at every level
    /// and odd sizes, with the weight held as `nn.Linear` holds it (a transposed view) and a
    /// 3-D input.
    #[test]
    fn a_trainable_layer_and_its_gradients_equal_the_bf16_definition_at_every_level() {
        let mut rng = SplitMix64(11);
        let dev = Device::Cpu;
        for shape in SHAPES {
            let c = Case::new(shape, &mut rng);
            let w_out_in = transposed(&c.w, c.d_in, c.d_out);
            let probe = Tensor::from_vec(c.p.clone(), (1, c.n, c.d_out), &dev).unwrap();
            for level in levels() {
                let wv = Var::from_vec(w_out_in.clone(), (c.d_out, c.d_in), &dev).unwrap();
                let bv = Var::from_vec(c.b.clone(), c.d_out, &dev).unwrap();
                let xv = Var::from_vec(c.x.clone(), (1, c.n, c.d_in), &dev).unwrap();
                let w = wv.as_tensor().t().unwrap();
                let y = linear_bf16(xv.as_tensor(), &w, Some(bv.as_tensor()), level).unwrap();
                assert_eq!(y.dims(), [1, c.n, c.d_out]);
                let grads = (&y * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let what = format!("trainable {level:?} {shape:?}");
                assert_close(&format!("{what} y"), &y, &c.want_y(), c.d_in + 1);
                let dx = grads.get(xv.as_tensor()).unwrap();
                assert_close(&format!("{what} dx"), dx, &c.want_dx(), c.d_out);
                // The weight's gradient, held `[out, in]` as the weight is.
                let dw = grads.get(wv.as_tensor()).unwrap().t().unwrap();
                assert_close(&format!("{what} dw"), &dw, &c.want_dw(), c.n);
                // The bias's gradient: the probe's column sums (f32 additions of f32 values).
                let db: Vec<f32> = grads.get(bv.as_tensor()).unwrap().to_vec1().unwrap();
                for (o, g) in db.iter().enumerate() {
                    let (s, a) = (0..c.n)
                        .map(|r| c.p[r * c.d_out + o] as f64)
                        .fold((0.0, 0.0), |(s, a), v| (s + v, a + v.abs()));
                    assert!((*g as f64 - s).abs() <= c.n as f64 * 2f64.powi(-24) * a);
                }
            }
        }
    }

    #[test]
    fn a_row_of_the_wrong_width_is_refused() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((4, 3), candle_core::DType::F32, &dev).unwrap();
        let layer = Arc::new(FrozenBf16::new(&w, None, Level::Portable).unwrap());
        let x = Tensor::zeros((2, 5), candle_core::DType::F32, &dev).unwrap();
        let err = layer.forward(&x).unwrap_err().to_string();
        assert!(err.contains("rows of 5 values for 4 inputs"), "{err}");
        let err = linear_bf16(&x, &w, None, Level::Portable)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rows of 5 values for 4 inputs"), "{err}");
    }
}
