//! The self-attention of a decoding step in one operation, on the CPU in f32.
//!
//! A step's attention is small (a few rows, one new position each, over a cache of about a
//! hundred positions) but composed of candle operations it took a dozen of them per layer: split
//! the heads (three copies), `q · kᵀ` and `p · v` as batches of tiny GEMM calls, the scale, the
//! mask, the softmax, and a transpose back; each allocates, and all ran on one thread between
//! the parallel weight products. Here every (row, head) computes its scores, softmax and
//! weighted values in one pass, the pairs in parallel, reading the queries straight from the
//! fused `[q | k | v]` projection and writing the merged heads.
//!
//! For query position `i` of `t` new ones (the last `t` of `total` cached positions), the scores
//! are `s_j = (q · query_scale) · k_j · score_scale` for `j ≤ total − t + i` (the causal mask), and
//! the output is `Σ_j softmax(s)_j · v_j`, the softmax as candle's `softmax_last_dim` computes it
//! (`exp(s − max)` divided by its sum, in order). Only the order of the additions in the two
//! products differs from the composed operations (a sum over the head dimension in 16 lanes, then
//! the values accumulated position by position).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::contiguous_f32;

/// The shape of one attention: `rows × t` new positions, `n_head` heads of `head_dim`, and the
/// two scales (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub rows: usize,
    pub t: usize,
    pub n_head: usize,
    pub head_dim: usize,
    pub query_scale: f32,
    pub score_scale: f32,
}

/// Whether [`self_attention`] runs for these operands (CPU f32); other devices and dtypes use
/// the composed operations.
pub fn applies(qkv: &Tensor, k: &Tensor) -> bool {
    qkv.device().is_cpu() && qkv.dtype() == DType::F32 && k.dtype() == DType::F32
}

/// `qkv` `[rows·t, 3·e]` (row `r`'s new position `i` at `r·t + i`; `e = n_head · head_dim`) and
/// the cached keys and values `k`, `v` `[rows, n_head, total, head_dim]` (the new positions
/// last) → the merged heads `[rows·t, e]`.
pub fn self_attention(qkv: &Tensor, k: &Tensor, v: &Tensor, step: Step) -> Result<Tensor> {
    let e = step.n_head * step.head_dim;
    let (n, width) = qkv.dims2()?;
    let (rows, heads, total, dim) = k.dims4()?;
    if n != step.rows * step.t
        || width != 3 * e
        || (rows, heads, dim) != (step.rows, step.n_head, step.head_dim)
        || v.dims() != k.dims()
        || total < step.t
    {
        candle_core::bail!(
            "decode attention: qkv {:?}, keys {:?}, values {:?} for {step:?}",
            qkv.dims(),
            k.dims(),
            v.dims()
        );
    }
    qkv.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &Attention(step))
}

struct Attention(Step);

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "decode-self-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "decode attention";
        let (qkv, k, v) = (
            contiguous_f32(s1, l1, op)?,
            contiguous_f32(s2, l2, op)?,
            contiguous_f32(s3, l3, op)?,
        );
        let st = self.0;
        let (d, e) = (st.head_dim, st.n_head * st.head_dim);
        let total = l2.dims()[2];
        // One task per (row, head): its `t` outputs of `head_dim`, merged afterwards.
        let per_pair: Vec<Vec<f32>> = (0..st.rows * st.n_head)
            .into_par_iter()
            .map(|pair| {
                let (r, h) = (pair / st.n_head, pair % st.n_head);
                let keys = &k[pair * total * d..(pair + 1) * total * d];
                let values = &v[pair * total * d..(pair + 1) * total * d];
                let mut out = vec![0f32; st.t * d];
                let mut scores = vec![0f32; total];
                let mut q = vec![0f32; d];
                for (i, o) in out.chunks_exact_mut(d).enumerate() {
                    let at = (r * st.t + i) * 3 * e + h * d;
                    for (qd, &x) in q.iter_mut().zip(&qkv[at..at + d]) {
                        *qd = x * st.query_scale;
                    }
                    let seen = total - st.t + i + 1;
                    let s = &mut scores[..seen];
                    for (sj, kj) in s.iter_mut().zip(keys.chunks_exact(d)) {
                        *sj = dot(&q, kj) * st.score_scale;
                    }
                    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for sj in s.iter_mut() {
                        *sj = (*sj - max).exp();
                        sum += *sj;
                    }
                    for (&p, vj) in s.iter().zip(values.chunks_exact(d)) {
                        let p = p / sum;
                        for (od, &x) in o.iter_mut().zip(vj) {
                            *od += p * x;
                        }
                    }
                }
                out
            })
            .collect();
        let mut merged = vec![0f32; st.rows * st.t * e];
        for (pair, out) in per_pair.iter().enumerate() {
            let (r, h) = (pair / st.n_head, pair % st.n_head);
            for (i, o) in out.chunks_exact(d).enumerate() {
                let at = (r * st.t + i) * e + h * d;
                merged[at..at + d].copy_from_slice(o);
            }
        }
        Ok((CpuStorage::F32(merged), Shape::from((st.rows * st.t, e))))
    }
}

/// `a · b` summed in 16 lanes, then the lanes in order (the compiler vectorises the lanes).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The attention written out in f64 from the definition.
    fn by_definition(qkv: &[f32], k: &[f32], v: &[f32], st: Step, total: usize) -> Vec<f32> {
        let (d, e) = (st.head_dim, st.n_head * st.head_dim);
        let mut out = vec![0f32; st.rows * st.t * e];
        for r in 0..st.rows {
            for h in 0..st.n_head {
                let base = (r * st.n_head + h) * total * d;
                for i in 0..st.t {
                    let q = &qkv[(r * st.t + i) * 3 * e + h * d..][..d];
                    let seen = total - st.t + i + 1;
                    let s: Vec<f64> = (0..seen)
                        .map(|j| {
                            let kj = &k[base + j * d..][..d];
                            let dot: f64 = q
                                .iter()
                                .zip(kj)
                                .map(|(&a, &b)| a as f64 * st.query_scale as f64 * b as f64)
                                .sum();
                            dot * st.score_scale as f64
                        })
                        .collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let ex: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = ex.iter().sum();
                    for dd in 0..d {
                        let o: f64 = (0..seen)
                            .map(|j| ex[j] / sum * v[base + j * d + dd] as f64)
                            .sum();
                        out[(r * st.t + i) * e + h * d + dd] = o as f32;
                    }
                }
            }
        }
        out
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::Rng::new(seed);
        (0..len).map(|_| rng.uniform() as f32 * 4.0 - 2.0).collect()
    }

    #[test]
    fn matches_the_definition_for_steps_and_prompts() {
        // One new position over a cache (a decoding step), a prompt (every position new, causal),
        // and t new positions after a past; head sizes off the 16 lanes; both scales.
        for &(rows, t, total, n_head, head_dim, qs, ss) in &[
            (3, 1, 9, 2, 16, 1.0, 0.25),
            (1, 7, 7, 3, 20, 1.0, 0.2236),
            (2, 3, 8, 2, 5, 0.4472, 1.0),
        ] {
            let st = Step {
                rows,
                t,
                n_head,
                head_dim,
                query_scale: qs,
                score_scale: ss,
            };
            let e = n_head * head_dim;
            let qkv = values(rows * t * 3 * e, 1);
            let k = values(rows * n_head * total * head_dim, 2);
            let v = values(rows * n_head * total * head_dim, 3);
            let want = by_definition(&qkv, &k, &v, st, total);
            let dev = Device::Cpu;
            let kv_shape = (rows, n_head, total, head_dim);
            let got = self_attention(
                &Tensor::from_vec(qkv, (rows * t, 3 * e), &dev).unwrap(),
                &Tensor::from_vec(k, kv_shape, &dev).unwrap(),
                &Tensor::from_vec(v, kv_shape, &dev).unwrap(),
                st,
            )
            .unwrap();
            assert_eq!(got.dims2().unwrap(), (rows * t, e));
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{st:?}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = Device::Cpu;
        let st = Step {
            rows: 2,
            t: 1,
            n_head: 2,
            head_dim: 4,
            query_scale: 1.0,
            score_scale: 0.5,
        };
        let qkv = Tensor::zeros((2, 24), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((2, 2, 5, 4), DType::F32, &dev).unwrap();
        let short = Tensor::zeros((2, 2, 4, 4), DType::F32, &dev).unwrap();
        assert!(self_attention(&qkv, &k, &short, st).is_err());
        assert!(self_attention(&qkv.narrow(1, 0, 12).unwrap(), &k, &k, st).is_err());
        assert!(self_attention(&qkv, &k, &k, st).is_ok());
    }
}
