//! Search of an IVF-flat index with `nprobe`, as FAISS `IndexIVFFlat::search` computes it: the
//! coarse quantizer picks the `nprobe` closest centroids (largest inner product, or smallest L2
//! distance for an L2 quantizer), the probed lists are scanned in that order, each list in its
//! stored order, and the `k` entries with the largest inner product are kept. Both selections use
//! FAISS's heap ([`crate::search`] module note), so ties come out as FAISS's do. Batches of
//! queries read each probed list once and score it against all its queries with one GEMM.
//! [`build`] trains and writes such an index ([`crate::kmeans`] for the quantizer).

use crate::error::{Error, Result};
use crate::faiss::{write_ivf_flat, IvfFlatIndex, Metric};
use crate::kmeans::{nearest_centroids, KMeansParams};
use crate::search::{block_scores, check_queries, dot_le, FaissHeap, Hit, VectorSet};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Searches `index` for each query (row-major, `query_dim` each) and returns the best `k` hits per
/// query, best first. `nprobe` larger than `nlist` is clamped to `nlist`, as FAISS does. When the
/// probed lists hold fewer than `k` entries the result is shorter (FAISS pads with id -1).
///
/// Errors: dimension mismatch, `k == 0` or `k` larger than the index, `nprobe == 0`, an index
/// whose metric is not inner product.
pub fn search(
    index: &IvfFlatIndex,
    queries: &[f32],
    query_dim: usize,
    k: usize,
    nprobe: usize,
) -> Result<Vec<Vec<Hit>>> {
    let d = index.dim();
    let nq = check_queries(queries, query_dim, d)?;
    if index.metric() != Metric::InnerProduct {
        return Err(Error::format(
            index.path(),
            "IVF index metric is L2, not inner product; only inner-product IVF is searched",
        ));
    }
    if k == 0 {
        return Err(Error::Invalid("k must be at least 1".into()));
    }
    if k > index.len() {
        return Err(Error::KTooLarge {
            k,
            ntotal: index.len(),
        });
    }
    if nprobe == 0 {
        return Err(Error::Invalid("nprobe must be at least 1".into()));
    }
    let nprobe = nprobe.min(index.nlist());
    let centroids = index.centroids();
    let cent_bytes = centroids.raw_rows(0, centroids.len());
    let qmetric = index.quantizer_metric();
    let row = d * 4;
    // The probed lists of each query, in probe order.
    let probes: Vec<Vec<usize>> = (0..nq)
        .into_par_iter()
        .map(|qi| {
            let q = &queries[qi * d..(qi + 1) * d];
            let mut probe = FaissHeap::new(nprobe, qmetric == Metric::InnerProduct);
            for (c, cb) in cent_bytes.chunks_exact(row).enumerate() {
                let key = match qmetric {
                    Metric::InnerProduct => dot_le(q, cb),
                    Metric::L2 => l2sqr_le(q, cb),
                };
                probe.push((c as i64, key));
            }
            probe
                .into_sorted()
                .into_iter()
                .map(|(c, _)| c as usize)
                .collect()
        })
        .collect();
    if nq <= FEW_QUERIES {
        return Ok(probes
            .iter()
            .enumerate()
            .map(|(qi, lists)| scan_one(index, &queries[qi * d..(qi + 1) * d], lists, k))
            .collect());
    }
    Ok(search_by_list(index, queries, &probes, k))
}

/// Up to this many queries, each query scans its lists alone; beyond, lists are scanned once for
/// all the queries that probe them.
const FEW_QUERIES: usize = 2;

/// One query: the probed lists are scored in parallel, then offered to the heap one by one in
/// FAISS's scan order (lists in probe order, each in stored order).
fn scan_one(index: &IvfFlatIndex, q: &[f32], lists: &[usize], k: usize) -> Vec<Hit> {
    let bytes = index.bytes();
    let row = index.dim() * 4;
    let sizes: Vec<usize> = lists.iter().map(|&l| index.lists()[l].n).collect();
    let mut scores = vec![0f32; sizes.iter().sum()];
    let mut parts: Vec<(usize, &mut [f32])> = Vec::with_capacity(lists.len());
    let mut rest = scores.as_mut_slice();
    for (&list, &n) in lists.iter().zip(&sizes) {
        let (part, tail) = rest.split_at_mut(n);
        parts.push((list, part));
        rest = tail;
    }
    parts.into_par_iter().for_each(|(list, out)| {
        let l = index.lists()[list];
        for (j, o) in out.iter_mut().enumerate() {
            *o = dot_le(q, &bytes[l.codes + j * row..l.codes + (j + 1) * row]);
        }
    });
    let mut top = FaissHeap::new(k, true);
    let mut at = 0;
    for &list in lists {
        let l = index.lists()[list];
        for j in 0..l.n {
            top.push((list_id(bytes, l.ids, j), scores[at + j]));
        }
        at += l.n;
    }
    top.into_sorted()
}

fn list_id(bytes: &[u8], ids: usize, j: usize) -> i64 {
    i64::from_le_bytes(
        bytes[ids + j * 8..ids + j * 8 + 8]
            .try_into()
            .expect("8 bytes"),
    )
}

/// Batched search: each probed list is read once and scored against all the queries that probe
/// it with one GEMM; then each query offers its hits to its heap in FAISS's scan order (its
/// lists in probe order, each in stored order), so the result is the per-query scan's.
fn search_by_list(
    index: &IvfFlatIndex,
    queries: &[f32],
    probes: &[Vec<usize>],
    k: usize,
) -> Vec<Vec<Hit>> {
    let d = index.dim();
    let bytes = index.bytes();
    let mut askers: Vec<Vec<usize>> = vec![Vec::new(); index.nlist()];
    for (qi, lists) in probes.iter().enumerate() {
        for &list in lists {
            askers[list].push(qi);
        }
    }
    // Per probed list: its queries' scores, row-major `[queries of the list][entries]`.
    let scored: Vec<(usize, Vec<f32>)> = askers
        .par_iter()
        .enumerate()
        .filter(|(list, qs)| !qs.is_empty() && index.lists()[*list].n > 0)
        .map(|(list, qs)| {
            let l = index.lists()[list];
            let codes: Vec<f32> = bytes[l.codes..l.codes + l.n * d * 4]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            let q: Vec<f32> = qs
                .iter()
                .flat_map(|&qi| &queries[qi * d..(qi + 1) * d])
                .copied()
                .collect();
            let mut out = vec![0f32; qs.len() * l.n];
            block_scores(&q, qs.len(), &codes, l.n, d, &mut out);
            (list, out)
        })
        .collect();
    let mut scores_of: Vec<Option<&Vec<f32>>> = vec![None; index.nlist()];
    for (list, scores) in &scored {
        scores_of[*list] = Some(scores);
    }
    probes
        .par_iter()
        .enumerate()
        .map(|(qi, lists)| {
            let mut top = FaissHeap::new(k, true);
            for &list in lists {
                let (Some(scores), l) = (scores_of[list], index.lists()[list]) else {
                    continue;
                };
                let slot = askers[list].partition_point(|&other| other < qi);
                let row = &scores[slot * l.n..(slot + 1) * l.n];
                for (j, &score) in row.iter().enumerate() {
                    top.push((list_id(bytes, l.ids, j), score));
                }
            }
            top.into_sorted()
        })
        .collect()
}

/// The number of vectors in each inverted list.
pub fn list_sizes(index: &IvfFlatIndex) -> Vec<usize> {
    index.lists().iter().map(|l| l.n).collect()
}

/// Squared L2 distance between an f32 vector and a little-endian f32 row of any alignment.
fn l2sqr_le(a: &[f32], b: &[u8]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let mut ac = a.chunks_exact(L);
    let mut bc = b.chunks_exact(4 * L);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for i in 0..L {
            let v = f32::from_le_bytes([y[4 * i], y[4 * i + 1], y[4 * i + 2], y[4 * i + 3]]);
            let t = x[i] - v;
            acc[i] += t * t;
        }
    }
    let mut s = 0.0f32;
    for (x, y) in ac.remainder().iter().zip(bc.remainder().chunks_exact(4)) {
        let t = x - f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        s += t * t;
    }
    acc.iter().sum::<f32>() + s
}

/// Assigns each vector to its closest centroid by inner product (ties: lower list), as FAISS's
/// `add` does with an inner-product quantizer (one GEMM per block of vectors, multi-threaded).
/// Used to build IVF files with [`crate::faiss::write_ivf_flat`].
pub fn assign_lists(centroids: &VectorSet<'_>, vectors: &VectorSet<'_>) -> Result<Vec<usize>> {
    if centroids.dim() != vectors.dim() {
        return Err(Error::DimensionMismatch {
            what: "IVF centroids".into(),
            expected: vectors.dim(),
            found: centroids.dim(),
        });
    }
    let mut cent = Vec::with_capacity(centroids.len() * centroids.dim());
    centroids.for_each_chunk(|_, rows| {
        cent.extend_from_slice(rows);
        Ok(())
    })?;
    Ok(nearest_centroids(&cent, vectors)?
        .into_iter()
        .map(|(l, _)| l as usize)
        .collect())
}

/// How to build an IVF-flat index ([`build`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IvfParams {
    /// Number of inverted lists (k-means centroids).
    pub nlist: usize,
    /// The `nprobe` recorded in the file: the default number of lists a search probes.
    pub nprobe: usize,
    /// k-means iterations.
    pub niter: usize,
    /// k-means training sample cap per list (FAISS's 256).
    pub max_points_per_centroid: usize,
    /// Seed of the k-means random choices.
    pub seed: u64,
}

impl IvfParams {
    /// Defaults for a store of `n` vectors: `nlist` = round(4·√n) (FAISS's guideline, at most
    /// `n`), `nprobe` = max(1, nlist / 16) (measured to reach recall@4 ≥ 0.99 on clustered data;
    /// see the crate README's benchmark), and FAISS's k-means defaults (25 iterations, 256
    /// training points per list, seed 1234).
    pub fn for_len(n: usize) -> Self {
        let nlist = ((4.0 * (n as f64).sqrt()).round() as usize).clamp(1, n.max(1));
        let km = KMeansParams::new(nlist);
        IvfParams {
            nlist,
            nprobe: (nlist / 16).max(1),
            niter: km.niter,
            max_points_per_centroid: km.max_points_per_centroid,
            seed: km.seed,
        }
    }
}

/// Trains an inner-product IVF-flat index on `vectors` ([`crate::kmeans`]: spherical k-means,
/// the quantizer FAISS's `IndexIVFFlat(IndexFlatIP(d), d, nlist, METRIC_INNER_PRODUCT)` trains),
/// assigns every vector to its list (vector `i` gets id `i`) and writes the FAISS file at `path`
/// atomically. Returns the opened index.
///
/// Errors: `nlist` not in `1..=vectors.len()`, `nprobe == 0`, write errors.
pub fn build(path: &Path, vectors: &VectorSet<'_>, params: &IvfParams) -> Result<IvfFlatIndex> {
    if params.nprobe == 0 {
        return Err(Error::Invalid("nprobe must be at least 1".into()));
    }
    let km = crate::kmeans::train(
        vectors,
        &KMeansParams {
            k: params.nlist,
            niter: params.niter,
            max_points_per_centroid: params.max_points_per_centroid,
            seed: params.seed,
        },
    )?;
    let assign: Vec<usize> = nearest_centroids(&km.centroids, vectors)?
        .into_iter()
        .map(|(l, _)| l as usize)
        .collect();
    let cent = VectorSet::from_f32(&km.centroids, km.dim)?;
    write_ivf_flat(
        path,
        &cent,
        Metric::InnerProduct,
        vectors,
        &assign,
        params.nprobe,
    )?;
    IvfFlatIndex::open(path)
}
