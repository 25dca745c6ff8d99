//! Exact inner-product top-k over a row-major matrix of vectors, as FAISS `IndexFlatIP` computes
//! it: batched (one GEMM of the queries against a chunk of rows at a time, so memory stays bounded
//! by the chunk size), multi-threaded over chunks (rayon).
//!
//! Ties follow FAISS (checked against faiss-cpu 1.15): FAISS scans the rows in id order into a
//! k-element min-heap that admits a row only when its score is strictly larger than the heap's
//! minimum and evicts the minimum by (score, then lower id); the result is sorted by score, equal
//! scores **higher id first**. [`FaissHeap`] is that heap. The parallel search keeps, per chunk,
//! the best `2k` rows by (score, lower id) — a superset of every row that can influence FAISS's
//! heap — then replays FAISS's heap over those candidates in id order, which gives FAISS's result
//! exactly, ties included.
//!
//! The vectors are viewed through [`VectorSet`], a borrowed little-endian f32 or f16 matrix of any
//! alignment (a FAISS file maps its floats at byte offset 45, unaligned): aligned f32 rows are used
//! in place, other rows are converted one chunk at a time into an aligned buffer.

use crate::error::{Error, Result};
use half::f16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Element type of stored vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE binary32, little-endian.
    F32,
    /// IEEE binary16, little-endian.
    F16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }
}

/// A borrowed row-major matrix of `len` vectors of dimension `dim`, stored as little-endian
/// `dtype` bytes with no alignment requirement.
#[derive(Clone, Copy, Debug)]
pub struct VectorSet<'a> {
    bytes: &'a [u8],
    dim: usize,
    len: usize,
    dtype: Dtype,
}

/// Rows per GEMM block: bounded memory (a converted chunk is at most 4 MiB at d = 1024).
fn chunk_rows(dim: usize) -> usize {
    ((1usize << 20) / dim.max(1)).clamp(64, 8192)
}

impl<'a> VectorSet<'a> {
    /// Views an f32 slice (`data.len() == len * dim`) as a vector set.
    pub fn from_f32(data: &'a [f32], dim: usize) -> Result<Self> {
        // SAFETY: any initialised f32 memory is valid as bytes; the crate only builds for
        // little-endian targets (see lib.rs), so these are the little-endian bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, data.len() * 4) };
        Self::from_le_bytes(bytes, dim, Dtype::F32)
    }

    /// Views little-endian bytes of any alignment as a vector set.
    pub fn from_le_bytes(bytes: &'a [u8], dim: usize, dtype: Dtype) -> Result<Self> {
        if dim == 0 {
            return Err(Error::Invalid("vector dimension must be > 0".into()));
        }
        let row = dim * dtype.size();
        if !bytes.len().is_multiple_of(row) {
            return Err(Error::Invalid(format!(
                "{} bytes is not a whole number of {dim}-dimensional {dtype:?} rows",
                bytes.len()
            )));
        }
        Ok(VectorSet {
            bytes,
            dim,
            len: bytes.len() / row,
            dtype,
        })
    }

    /// Dimension of each vector.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when there are no vectors.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// The raw little-endian bytes of rows `start..end`.
    pub fn raw_rows(&self, start: usize, end: usize) -> &'a [u8] {
        let row = self.dim * self.dtype.size();
        &self.bytes[start * row..end * row]
    }

    /// Row `i` converted to f32.
    pub fn row(&self, i: usize) -> Vec<f32> {
        let mut buf = Vec::new();
        self.with_rows(i, i + 1, &mut buf, |r| r.to_vec())
    }

    /// Calls `f` with rows `start..end` as an aligned f32 slice: in place when the data are
    /// aligned f32, otherwise converted into `buf` (reused between calls).
    pub fn with_rows<R>(
        &self,
        start: usize,
        end: usize,
        buf: &mut Vec<f32>,
        f: impl FnOnce(&[f32]) -> R,
    ) -> R {
        let raw = self.raw_rows(start, end);
        let n = (end - start) * self.dim;
        match self.dtype {
            Dtype::F32 => {
                // SAFETY: every bit pattern is a valid f32; `align_to` only yields the aligned
                // middle part, which we use only when it covers the whole range.
                let (pre, mid, post) = unsafe { raw.align_to::<f32>() };
                if pre.is_empty() && post.is_empty() {
                    return f(mid);
                }
                buf.clear();
                buf.extend(
                    raw.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
                f(&buf[..n])
            }
            Dtype::F16 => {
                buf.clear();
                buf.resize(n, 0.0);
                // SAFETY: f16 is a transparent u16; every bit pattern is valid.
                let (pre, mid, post) = unsafe { raw.align_to::<f16>() };
                if pre.is_empty() && post.is_empty() {
                    half::slice::HalfFloatSliceExt::convert_to_f32_slice(mid, &mut buf[..]);
                } else {
                    for (o, b) in buf.iter_mut().zip(raw.chunks_exact(2)) {
                        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }
                f(&buf[..n])
            }
        }
    }

    /// Iterates over the rows in chunks of f32 (converted as needed), in order.
    pub fn for_each_chunk(&self, mut f: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let step = chunk_rows(self.dim);
        let mut buf = Vec::new();
        let mut start = 0;
        while start < self.len {
            let end = (start + step).min(self.len);
            self.with_rows(start, end, &mut buf, |rows| f(start, rows))?;
            start = end;
        }
        Ok(())
    }
}

/// Up to this many queries, f32 rows are scored by direct dot products instead of a GEMM. The
/// GEMM packs every block of rows it reads, a fixed cost of about 0.9 s over 565,497 × 1024 rows
/// (AMD EPYC Zen 4, 2 threads): 8 queries took 0.92 s by GEMM against 0.20 s by dot products,
/// 32 queries 1.04 against 0.57 s, 64 queries 1.20 against 1.06 s (BENCHMARKS.md, "AMD EPYC").
const FEW_QUERIES: usize = 32;

/// One search hit: `(id, score)`.
pub type Hit = (i64, f32);

/// True when hit `a` ranks before hit `b`: larger score first, then lower id (the candidate order
/// of the parallel phase). NaN scores never rank before anything.
#[inline]
pub(crate) fn ranks_before(a: Hit, b: Hit) -> bool {
    a.1 > b.1 || (a.1 == b.1 && a.0 < b.0)
}

/// The best `k` hits seen so far, sorted best first.
#[derive(Clone, Debug)]
pub(crate) struct TopK {
    k: usize,
    items: Vec<Hit>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            items: Vec::with_capacity(k + 1),
        }
    }

    /// Offers a hit; keeps it if it is among the best `k`.
    #[inline]
    pub(crate) fn push(&mut self, hit: Hit) {
        if self.items.len() == self.k {
            let worst = self.items[self.k - 1];
            if !ranks_before(hit, worst) {
                return;
            }
            self.items.pop();
        } else if hit.1.is_nan() {
            return;
        }
        let pos = self.items.partition_point(|&x| ranks_before(x, hit));
        self.items.insert(pos, hit);
    }

    /// Merges another partial result into this one.
    pub(crate) fn merge(&mut self, other: &TopK) {
        for &h in &other.items {
            self.push(h);
        }
    }

    pub(crate) fn into_vec(self) -> Vec<Hit> {
        self.items
    }
}

/// FAISS's per-query result heap (`HeapBlockResultHandler` / `minheap_replace_top`): at most `k`
/// hits; a new hit enters only if it is strictly better than the current worst, which is the
/// worst score and, among equal scores, the lower id for inner product (the higher id for L2).
#[derive(Clone, Debug)]
pub(crate) struct FaissHeap {
    k: usize,
    larger_is_better: bool,
    items: Vec<Hit>,
    worst: usize,
}

impl FaissHeap {
    /// A heap for inner product (`larger_is_better`) or L2 distances.
    pub(crate) fn new(k: usize, larger_is_better: bool) -> Self {
        FaissHeap {
            k,
            larger_is_better,
            items: Vec::with_capacity(k),
            worst: 0,
        }
    }

    /// FAISS's heap order: true when `a` is worse than `b` (`C::cmp2` of the heap's comparator).
    #[inline]
    fn worse(&self, a: Hit, b: Hit) -> bool {
        if self.larger_is_better {
            a.1 < b.1 || (a.1 == b.1 && a.0 < b.0)
        } else {
            a.1 > b.1 || (a.1 == b.1 && a.0 > b.0)
        }
    }

    fn find_worst(&mut self) {
        let mut w = 0;
        for i in 1..self.items.len() {
            if self.worse(self.items[i], self.items[w]) {
                w = i;
            }
        }
        self.worst = w;
    }

    /// Offers a hit, in FAISS's scan order.
    #[inline]
    pub(crate) fn push(&mut self, hit: Hit) {
        if hit.1.is_nan() {
            return;
        }
        if self.items.len() < self.k {
            self.items.push(hit);
            if self.items.len() == self.k {
                self.find_worst();
            }
            return;
        }
        let t = self.items[self.worst].1;
        let better = if self.larger_is_better {
            hit.1 > t
        } else {
            hit.1 < t
        };
        if better {
            self.items[self.worst] = hit;
            self.find_worst();
        }
    }

    /// The hits best first, as FAISS's `heap_reorder` leaves them.
    pub(crate) fn into_sorted(self) -> Vec<Hit> {
        let mut v = self.items;
        if self.larger_is_better {
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
        } else {
            v.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        }
        v
    }
}

/// FAISS's result from candidates that include every hit able to influence its heap: replay the
/// heap over them in id order.
pub(crate) fn faiss_result(mut candidates: Vec<Hit>, k: usize) -> Vec<Hit> {
    candidates.sort_by_key(|h| h.0);
    let mut heap = FaissHeap::new(k, true);
    for h in candidates {
        heap.push(h);
    }
    heap.into_sorted()
}

/// Checks the query matrix against the store and returns the number of queries.
pub(crate) fn check_queries(queries: &[f32], query_dim: usize, store_dim: usize) -> Result<usize> {
    if query_dim != store_dim {
        return Err(Error::DimensionMismatch {
            what: "query".into(),
            expected: store_dim,
            found: query_dim,
        });
    }
    if queries.is_empty() || !queries.len().is_multiple_of(query_dim) {
        return Err(Error::Invalid(format!(
            "queries have {} values, not a non-zero multiple of the dimension {query_dim}",
            queries.len()
        )));
    }
    Ok(queries.len() / query_dim)
}

/// `scores[q * n + j] = <query q, row j>` for `nq` queries and `n` rows (both row-major, `dim`).
pub(crate) fn block_scores(
    queries: &[f32],
    nq: usize,
    rows: &[f32],
    n: usize,
    dim: usize,
    out: &mut [f32],
) {
    // Checked in release builds too (three comparisons per GEMM): the `unsafe` call relies on it.
    assert!(
        queries.len() == nq * dim && rows.len() == n * dim && out.len() == nq * n,
        "block_scores: slice lengths do not match the dimensions"
    );
    // SAFETY: by the assertion above all pointers cover the extents described by the
    // dimensions and strides below: dst is nq×n row-major (`out`, written only, by this thread),
    // lhs is nq×dim row-major (`queries`), rhs is rows^T (dim×n, column stride dim, `rows`); the
    // output does not overlap the inputs (`&mut` against `&` borrows).
    unsafe {
        gemm::gemm(
            nq,
            n,
            dim,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            queries.as_ptr(),
            1,
            dim as isize,
            rows.as_ptr(),
            dim as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Exact inner-product search: for each of the `queries.len() / query_dim` queries (row-major),
/// the `k` stored vectors with the largest inner product, best first — the ids FAISS
/// `IndexFlatIP::search` returns, ties included (see the module note). Scores are f32 (accumulated by a GEMM, so they may differ
/// from FAISS's in the last bits).
///
/// Errors: `query_dim` differs from the store's dimension; `k == 0`; `k` larger than the store.
pub fn top_k(
    store: &VectorSet<'_>,
    queries: &[f32],
    query_dim: usize,
    k: usize,
) -> Result<Vec<Vec<Hit>>> {
    let nq = check_queries(queries, query_dim, store.dim())?;
    if k == 0 {
        return Err(Error::Invalid("k must be at least 1".into()));
    }
    if k > store.len() {
        return Err(Error::KTooLarge {
            k,
            ntotal: store.len(),
        });
    }
    let dim = store.dim();
    let step = chunk_rows(dim);
    let nchunks = store.len().div_ceil(step);
    let result = (0..nchunks)
        .into_par_iter()
        .fold(
            || {
                (
                    vec![TopK::new(2 * k); nq],
                    Vec::<f32>::new(),
                    Vec::<f32>::new(),
                )
            },
            |(mut tops, mut buf, mut scores), c| {
                let start = c * step;
                let end = (start + step).min(store.len());
                let n = end - start;
                scores.resize(nq * n, 0.0);
                if nq <= FEW_QUERIES && store.dtype() == Dtype::F32 {
                    // a matrix-vector product is memory-bound: read the rows in place (any
                    // alignment) instead of copying them for the GEMM
                    let raw = store.raw_rows(start, end);
                    for (j, row) in raw.chunks_exact(dim * 4).enumerate() {
                        for q in 0..nq {
                            scores[q * n + j] = dot_le(&queries[q * dim..(q + 1) * dim], row);
                        }
                    }
                } else {
                    store.with_rows(start, end, &mut buf, |rows| {
                        block_scores(queries, nq, rows, n, dim, &mut scores)
                    });
                }
                for (q, top) in tops.iter_mut().enumerate() {
                    for (j, &s) in scores[q * n..(q + 1) * n].iter().enumerate() {
                        top.push(((start + j) as i64, s));
                    }
                }
                (tops, buf, scores)
            },
        )
        .map(|(tops, _, _)| tops)
        .reduce(
            || vec![TopK::new(2 * k); nq],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    x.merge(y);
                }
                a
            },
        );
    Ok(result
        .into_iter()
        .map(|t| faiss_result(t.into_vec(), k))
        .collect())
}

/// Recall of approximate results against exact ones: the mean over queries of
/// |approx top-k ∩ exact top-k| / k (the "k-recall@k" of ANN benchmarks; recall@4 for `k = 4`).
/// Only the first `k` ids of each list count; a shorter approximate list counts its missing
/// entries as misses.
///
/// Errors: `k == 0`, different numbers of queries, an exact list shorter than `k`.
pub fn recall_at_k(exact: &[Vec<Hit>], approx: &[Vec<Hit>], k: usize) -> Result<f64> {
    if k == 0 || exact.is_empty() || exact.len() != approx.len() {
        return Err(Error::Invalid(format!(
            "recall@{k} needs k ≥ 1 and equal, non-zero numbers of exact ({}) and approximate ({}) result lists",
            exact.len(),
            approx.len()
        )));
    }
    let mut found = 0usize;
    for (q, (e, a)) in exact.iter().zip(approx).enumerate() {
        if e.len() < k {
            return Err(Error::Invalid(format!(
                "exact result {q} has {} hits, fewer than k = {k}",
                e.len()
            )));
        }
        let truth: Vec<i64> = e[..k].iter().map(|h| h.0).collect();
        found += a.iter().take(k).filter(|h| truth.contains(&h.0)).count();
    }
    Ok(found as f64 / (k * exact.len()) as f64)
}

/// Inner product of an f32 vector with a little-endian f32 row of any alignment: AVX-512 where
/// the CPU has it, otherwise a loop with several independent accumulators so that it vectorises.
#[inline]
pub(crate) fn dot_le(a: &[f32], b: &[u8]) -> f32 {
    assert_eq!(a.len() * 4, b.len(), "dot_le: row length");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present and `b` holds `4·a.len()` bytes (checked above).
        return unsafe { dot_le_avx512(a, b) };
    }
    dot_le_portable(a, b)
}

fn dot_le_portable(a: &[f32], b: &[u8]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let full = a.len() / L;
    for c in 0..full {
        // SAFETY: `b` holds 4·a.len() bytes, so bytes 64c..64c+64 are in bounds; an unaligned
        // read of [f32; 16] from them is valid for any bit pattern, and on the little-endian
        // targets this crate builds for (lib.rs) it yields the little-endian floats.
        let y: [f32; L] =
            unsafe { std::ptr::read_unaligned(b.as_ptr().add(c * 4 * L) as *const [f32; L]) };
        let x = &a[c * L..(c + 1) * L];
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = 0.0f32;
    for (x, y) in a[full * L..].iter().zip(b[full * 4 * L..].chunks_exact(4)) {
        s += x * f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
    }
    acc.iter().sum::<f32>() + s
}

/// # Safety
/// AVX-512F must be available and `b` must hold `4·a.len()` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_le_avx512(a: &[f32], b: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    const L: usize = 16;
    let full = a.len() / L;
    let (pa, pb) = (a.as_ptr(), b.as_ptr() as *const f32);
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut c = 0;
    while c + 1 < full {
        acc0 = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(c * L)),
            _mm512_loadu_ps(pb.add(c * L)),
            acc0,
        );
        acc1 = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add((c + 1) * L)),
            _mm512_loadu_ps(pb.add((c + 1) * L)),
            acc1,
        );
        c += 2;
    }
    if c < full {
        acc0 = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(c * L)),
            _mm512_loadu_ps(pb.add(c * L)),
            acc0,
        );
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (x, y) in a[full * L..].iter().zip(b[full * 4 * L..].chunks_exact(4)) {
        s += x * f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_orders_by_score_then_lower_id() {
        let mut t = TopK::new(3);
        for h in [
            (5, 0.5),
            (2, 0.9),
            (7, 0.5),
            (1, 0.5),
            (3, f32::NAN),
            (0, 0.1),
        ] {
            t.push(h);
        }
        assert_eq!(t.into_vec(), vec![(2, 0.9), (1, 0.5), (5, 0.5)]);
    }

    #[test]
    fn faiss_heap_tie_rules() {
        // k = 2, rows 0, 1 score 1 and row 2 scores 2: row 2 evicts the lower id (0) of the tie
        let hits = vec![(0, 1.0), (1, 1.0), (2, 2.0), (3, 1.0)];
        assert_eq!(faiss_result(hits.clone(), 2), vec![(2, 2.0), (1, 1.0)]);
        // k = 3, three equal scores: all kept, higher id first
        assert_eq!(
            faiss_result(vec![(5, 0.5), (9, 0.5), (7, 0.5)], 3),
            vec![(9, 0.5), (7, 0.5), (5, 0.5)]
        );
        // k = 2 at the boundary: the first-scanned (lower ids) of the tie enter
        assert_eq!(
            faiss_result(vec![(4, 0.5), (3, 0.5), (8, 0.5)], 2),
            vec![(4, 0.5), (3, 0.5)]
        );
        // L2: smaller first, equal distances lower id first, evicting the higher id
        let mut h = FaissHeap::new(2, false);
        for x in [(0, 1.0), (1, 1.0), (2, 0.5), (3, 1.0)] {
            h.push(x);
        }
        assert_eq!(h.into_sorted(), vec![(2, 0.5), (0, 1.0)]);
    }

    #[test]
    fn recall_by_hand() {
        let e = vec![vec![(1, 0.9), (2, 0.8)], vec![(3, 0.9), (4, 0.8)]];
        let a = vec![vec![(2, 0.8), (7, 0.7)], vec![(4, 0.8), (3, 0.9)]];
        // query 0 finds 1 of 2, query 1 finds 2 of 2: 3 / 4
        assert_eq!(recall_at_k(&e, &a, 2).unwrap(), 0.75);
        // an empty approximate list counts as misses: 1 / 4
        let short = vec![a[0].clone(), vec![]];
        assert_eq!(recall_at_k(&e, &short, 2).unwrap(), 0.25);
        assert!(recall_at_k(&e, &a, 3).is_err());
        assert!(recall_at_k(&e, &a[..1], 2).is_err());
    }

    #[test]
    fn dot_le_matches_arithmetic() {
        // Both kernels, on rows long enough for the vector loop and with a tail.
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let raw: Vec<u8> = std::iter::once(0u8)
            .chain((0..37).flat_map(|i| (i as f32 * 0.25 + 1.0).to_le_bytes()))
            .collect();
        let want: f32 = (0..37)
            .map(|i| (i as f32 * 0.5 - 3.0) * (i as f32 * 0.25 + 1.0))
            .sum();
        for got in [dot_le(&a, &raw[1..]), dot_le_portable(&a, &raw[1..])] {
            assert!((got - want).abs() <= 1e-4 * want.abs(), "{got} vs {want}");
        }
        // 1*1 + 2*2 + ... + 37*37 = 37*38*75/6 = 17575
        let a: Vec<f32> = (1..=37).map(|x| x as f32).collect();
        let mut b = vec![0u8; 1];
        for x in &a {
            b.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(dot_le(&a, &b[1..]), 17575.0);
    }

    #[test]
    fn small_exact_search_by_hand() {
        // rows: e0, e1, (e0+e1)/sqrt2, -e0 ; query e0 → scores 1, 0, 0.7071, -1
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let rows = [1.0, 0.0, 0.0, 1.0, s, s, -1.0, 0.0];
        let set = VectorSet::from_f32(&rows, 2).unwrap();
        let r = top_k(&set, &[1.0, 0.0], 2, 3).unwrap();
        assert_eq!(r[0].iter().map(|h| h.0).collect::<Vec<_>>(), vec![0, 2, 1]);
        assert!(matches!(
            top_k(&set, &[1.0, 0.0], 2, 5),
            Err(Error::KTooLarge { k: 5, ntotal: 4 })
        ));
        assert!(matches!(
            top_k(&set, &[1.0, 0.0, 0.0], 3, 1),
            Err(Error::DimensionMismatch {
                expected: 2,
                found: 3,
                ..
            })
        ));
    }
}
