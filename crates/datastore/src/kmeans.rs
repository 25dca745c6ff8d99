//! Spherical k-means, the training of an IVF coarse quantizer as FAISS trains an `IndexIVFFlat`
//! whose quantizer is an `IndexFlatIP` (`faiss::Clustering` with `spherical = true`):
//!
//! * at most `max_points_per_centroid · k` training vectors (FAISS's default 256), a uniform
//!   random sample of the data when there are more;
//! * initial centroids: `k` distinct training vectors chosen at random;
//! * `niter` iterations (FAISS's default 25) of: assign every training vector to the centroid of
//!   largest inner product (ties: lower centroid), replace each centroid by the mean of its vectors
//!   (summed in vector order), re-seed empty clusters by splitting a large one (FAISS's
//!   `split_clusters`: copy its centroid and push the two copies apart by a factor 1 ± 1/1024,
//!   halving its count), and L2-normalise every centroid.
//!
//! The assignment is one GEMM per block of vectors against a block of centroids, multi-threaded
//! over vector blocks. A fixed seed gives the same centroids on every run (the sums are taken in a
//! fixed order whatever the number of threads). The random choices use [`SplitMix64`], not FAISS's
//! Mersenne twister, so the centroids are not FAISS's; they are an equally trained quantizer.

use crate::error::{Error, Result};
use crate::search::{block_scores, VectorSet};
use rayon::prelude::*;

/// The generator of the sampling, the initialisation and the splitting of empty clusters (shared
/// with the rest of the project; re-exported so that `kmeans::SplitMix64` keeps working).
pub use smallcap_util::rng::SplitMix64;

/// Parameters of [`train`].
#[derive(Clone, Debug, PartialEq)]
pub struct KMeansParams {
    /// Number of centroids.
    pub k: usize,
    /// Iterations (FAISS default 25).
    pub niter: usize,
    /// Training sample cap per centroid (FAISS default 256).
    pub max_points_per_centroid: usize,
    /// Seed of the sampling, the initialisation and the splitting of empty clusters.
    pub seed: u64,
}

impl KMeansParams {
    /// FAISS's defaults for `k` centroids (25 iterations, 256 points per centroid, seed 1234).
    pub fn new(k: usize) -> Self {
        KMeansParams {
            k,
            niter: 25,
            max_points_per_centroid: 256,
            seed: 1234,
        }
    }
}

/// Trained centroids.
#[derive(Clone, Debug)]
pub struct KMeans {
    /// `k × dim` L2-normalised centroids, row-major.
    pub centroids: Vec<f32>,
    /// Dimension.
    pub dim: usize,
    /// Number of training vectors used.
    pub train_size: usize,
    /// Per iteration: the mean inner product of the training vectors with their centroid (the
    /// objective spherical k-means maximises), measured at the assignment step.
    pub objective: Vec<f64>,
}

/// Relative perturbation of a split centroid (FAISS's `EPS`).
const SPLIT_EPS: f32 = 1.0 / 1024.0;
/// Vectors per assignment task.
const ASSIGN_ROWS: usize = 256;
/// Centroids per GEMM block of the assignment (bounds the score buffer).
const ASSIGN_CENTROIDS: usize = 4096;

/// For every vector of `vectors`, the centroid (row of `centroids`, `k × dim`) of largest inner
/// product and that inner product; ties and NaN scores go to the lower centroid. Multi-threaded
/// over blocks of vectors; one GEMM per block.
pub(crate) fn nearest_centroids(
    centroids: &[f32],
    vectors: &VectorSet<'_>,
) -> Result<Vec<(u32, f32)>> {
    let d = vectors.dim();
    if centroids.is_empty() || !centroids.len().is_multiple_of(d) {
        return Err(Error::Invalid(format!(
            "{} centroid values are not a non-zero number of {d}-dimensional rows",
            centroids.len()
        )));
    }
    let k = centroids.len() / d;
    if k > u32::MAX as usize {
        return Err(Error::Invalid(format!("{k} centroids is too many")));
    }
    let mut out = vec![(0u32, f32::NEG_INFINITY); vectors.len()];
    out.par_chunks_mut(ASSIGN_ROWS).enumerate().for_each_init(
        || (Vec::<f32>::new(), Vec::<f32>::new()),
        |(buf, scores), (c, best)| {
            let start = c * ASSIGN_ROWS;
            let m = best.len();
            vectors.with_rows(start, start + m, buf, |rows| {
                let mut c0 = 0;
                while c0 < k {
                    let kb = ASSIGN_CENTROIDS.min(k - c0);
                    scores.resize(m * kb, 0.0);
                    block_scores(rows, m, &centroids[c0 * d..(c0 + kb) * d], kb, d, scores);
                    for (b, s) in best.iter_mut().zip(scores.chunks_exact(kb)) {
                        for (j, &v) in s.iter().enumerate() {
                            if v > b.1 {
                                *b = ((c0 + j) as u32, v);
                            }
                        }
                    }
                    c0 += kb;
                }
            });
        },
    );
    Ok(out)
}

/// `count` distinct indices of `0..n` chosen uniformly at random (partial Fisher–Yates), sorted.
fn sample_indices(n: usize, count: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..count {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
    }
    idx.truncate(count);
    idx.sort_unstable();
    idx
}

fn normalize(row: &mut [f32]) {
    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        let inv = 1.0 / norm;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Trains `params.k` spherical k-means centroids on `vectors` (see the module note).
///
/// Errors: `k == 0`, `k` larger than the number of vectors, `niter == 0`,
/// `max_points_per_centroid == 0`.
pub fn train(vectors: &VectorSet<'_>, params: &KMeansParams) -> Result<KMeans> {
    let (n, d, k) = (vectors.len(), vectors.dim(), params.k);
    if k == 0 || k > n {
        return Err(Error::Invalid(format!(
            "k-means with {k} centroids needs 1 ≤ k ≤ the number of vectors ({n})"
        )));
    }
    if params.niter == 0 || params.max_points_per_centroid == 0 {
        return Err(Error::Invalid(
            "k-means needs niter ≥ 1 and max_points_per_centroid ≥ 1".into(),
        ));
    }
    let mut rng = SplitMix64(params.seed);
    let cap = k.saturating_mul(params.max_points_per_centroid);
    let train_size = n.min(cap);
    let mut x = Vec::with_capacity(train_size * d);
    if train_size == n {
        vectors.for_each_chunk(|_, rows| {
            x.extend_from_slice(rows);
            Ok(())
        })?;
    } else {
        let mut buf = Vec::new();
        for i in sample_indices(n, train_size, &mut rng) {
            vectors.with_rows(i, i + 1, &mut buf, |r| x.extend_from_slice(r));
        }
    }
    let xs = VectorSet::from_f32(&x, d)?;
    let mut centroids = Vec::with_capacity(k * d);
    for i in sample_indices(train_size, k, &mut rng) {
        centroids.extend_from_slice(&x[i * d..(i + 1) * d]);
    }
    let mut objective = Vec::with_capacity(params.niter);
    for _ in 0..params.niter {
        let assign = nearest_centroids(&centroids, &xs)?;
        objective.push(assign.iter().map(|a| a.1 as f64).sum::<f64>() / train_size as f64);
        // members of each cluster, in vector order (counting sort)
        let mut counts = vec![0usize; k + 1];
        for a in &assign {
            counts[a.0 as usize + 1] += 1;
        }
        for c in 0..k {
            counts[c + 1] += counts[c];
        }
        let mut members = vec![0usize; train_size];
        let mut next = counts.clone();
        for (i, a) in assign.iter().enumerate() {
            members[next[a.0 as usize]] = i;
            next[a.0 as usize] += 1;
        }
        let mut sizes: Vec<usize> = (0..k).map(|c| counts[c + 1] - counts[c]).collect();
        centroids
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(c, cent)| {
                let m = &members[counts[c]..counts[c + 1]];
                if m.is_empty() {
                    return;
                }
                cent.iter_mut().for_each(|v| *v = 0.0);
                for &i in m {
                    for (v, y) in cent.iter_mut().zip(&x[i * d..(i + 1) * d]) {
                        *v += y;
                    }
                }
                let inv = 1.0 / m.len() as f32;
                cent.iter_mut().for_each(|v| *v *= inv);
            });
        split_empty_clusters(&mut centroids, &mut sizes, d, &mut rng);
        centroids.par_chunks_mut(d).for_each(normalize);
    }
    Ok(KMeans {
        centroids,
        dim: d,
        train_size,
        objective,
    })
}

/// FAISS's `split_clusters`: each empty cluster takes a copy of a cluster chosen with probability
/// proportional to (size − 1), and the two copies are pushed apart.
fn split_empty_clusters(
    centroids: &mut [f32],
    sizes: &mut [usize],
    d: usize,
    rng: &mut SplitMix64,
) {
    for ci in 0..sizes.len() {
        if sizes[ci] != 0 {
            continue;
        }
        let weight: usize = sizes.iter().map(|&s| s.saturating_sub(1)).sum();
        if weight == 0 {
            return; // every cluster holds at most one vector: nothing to split
        }
        let mut r = rng.below(weight);
        let mut cj = 0;
        for (j, &s) in sizes.iter().enumerate() {
            let w = s.saturating_sub(1);
            if r < w {
                cj = j;
                break;
            }
            r -= w;
        }
        let src: Vec<f32> = centroids[cj * d..(cj + 1) * d].to_vec();
        for j in 0..d {
            let (a, b) = if j % 2 == 0 {
                (1.0 + SPLIT_EPS, 1.0 - SPLIT_EPS)
            } else {
                (1.0 - SPLIT_EPS, 1.0 + SPLIT_EPS)
            };
            centroids[ci * d + j] = src[j] * a;
            centroids[cj * d + j] = src[j] * b;
        }
        sizes[ci] = sizes[cj] / 2;
        sizes[cj] -= sizes[ci];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_centroid_by_hand_with_tie_to_lower() {
        // centroids e0, e1, e0 (a duplicate: ties go to the lower index)
        let c = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
        let v = [0.6, 0.8, 0.8, 0.6, -1.0, 0.0];
        let set = VectorSet::from_f32(&v, 2).unwrap();
        let got = nearest_centroids(&c, &set).unwrap();
        assert_eq!(got, vec![(1, 0.8), (0, 0.8), (1, 0.0)]);
    }

    #[test]
    fn recovers_well_separated_clusters() {
        // 4 clusters around ±e0, ±e1 in 8 dimensions: k-means with k = 4 must find them, each
        // centroid within 0.05 of its true direction, whatever the initialisation
        let d = 8;
        let mut rng = SplitMix64(7);
        let centres = [0usize, 1, 2, 3];
        let mut x = Vec::new();
        for i in 0..400 {
            let mut v = vec![0.0f32; d];
            let c = centres[i % 4];
            v[c / 2] = if c.is_multiple_of(2) { 1.0 } else { -1.0 };
            for e in v.iter_mut() {
                *e += 0.05 * rng.normal();
            }
            normalize(&mut v);
            x.extend(v);
        }
        let set = VectorSet::from_f32(&x, d).unwrap();
        let km = train(&set, &KMeansParams::new(4)).unwrap();
        assert_eq!(km.train_size, 400);
        for c in 0..4 {
            let mut want = vec![0.0f32; d];
            want[c / 2] = if c % 2 == 0 { 1.0 } else { -1.0 };
            let best = km
                .centroids
                .chunks_exact(d)
                .map(|r| r.iter().zip(&want).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::MIN, f32::max);
            assert!(best > 0.99, "cluster {c}: best centroid cosine {best}");
        }
        // the objective never decreases (Lloyd iterations on the sphere)
        for w in km.objective.windows(2) {
            assert!(w[1] >= w[0] - 1e-6, "{:?}", km.objective);
        }
        // deterministic
        let again = train(&set, &KMeansParams::new(4)).unwrap();
        assert_eq!(again.centroids, km.centroids);
    }

    #[test]
    fn sampling_caps_the_training_set_and_rejects_bad_k() {
        let x: Vec<f32> = (0..200).map(|i| (i as f32).sin()).collect();
        let set = VectorSet::from_f32(&x, 2).unwrap();
        let mut p = KMeansParams::new(5);
        p.max_points_per_centroid = 4;
        assert_eq!(train(&set, &p).unwrap().train_size, 20);
        assert!(matches!(
            train(&set, &KMeansParams::new(101)),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            train(&set, &KMeansParams::new(0)),
            Err(Error::Invalid(_))
        ));
        let s = sample_indices(1000, 10, &mut SplitMix64(1));
        assert_eq!(s.len(), 10);
        assert!(s.windows(2).all(|w| w[0] < w[1]) && s[9] < 1000);
    }
}
