//! CIDEr-D as pycocoevalcap's `Cider` computes it: tf-idf vectors of 1- to 4-grams with document
//! frequencies taken from the evaluated images' references (`log(max(1, df))`, and
//! `log(number of images)` as the reference length), clipped cosine similarity
//! `min(hyp, ref) * ref`, a Gaussian length penalty with σ = 6 on the difference of the two
//! sentences' *bigram* counts (the toolkit's `length`), the mean over n, divided by the number of
//! references and multiplied by 10. Sums follow the toolkit's order (and NumPy's pairwise
//! summation for means), so results agree to the last bit or nearly.

use crate::ngrams::{check_inputs, Cooked, Interner, MAX_N};
use crate::pycompat::{np_mean, np_sum};
use crate::EvalError;

const SIGMA: f64 = 6.0;

/// Corpus and per-image CIDEr-D.
#[derive(Clone, Debug, PartialEq)]
pub struct CiderScores {
    /// The corpus score: the mean of the per-image scores.
    pub corpus: f64,
    /// Each image's CIDEr-D (×10, as the toolkit scales it), in input order.
    pub per_image: Vec<f64>,
}

/// A sentence's tf-idf vector (`counts2vec`): per n-gram (in dict order) its order and weight.
struct TfIdf {
    entries: Vec<(u32, u8, f64)>,
    norm: [f64; MAX_N],
    length: f64,
}

fn counts2vec(c: &Cooked, df: &[f64], ref_len: f64) -> TfIdf {
    let mut norm = [0.0f64; MAX_N];
    let mut length: i64 = 0;
    let mut entries = Vec::with_capacity(c.ngrams.len());
    for g in &c.ngrams {
        let d = df[g.id as usize].max(1.0).ln();
        let n = usize::from(g.order);
        let v = f64::from(g.count) * (ref_len - d);
        norm[n] += v.powi(2);
        if n == 1 {
            length += i64::from(g.count);
        }
        entries.push((g.id, g.order, v));
    }
    for x in &mut norm {
        *x = x.sqrt();
    }
    TfIdf {
        entries,
        norm,
        length: length as f64,
    }
}

/// CIDEr-D of `hyps[i]` against `refs[i]`.
pub fn compute(refs: &[Vec<String>], hyps: &[String]) -> Result<CiderScores, EvalError> {
    check_inputs(refs, hyps)?;
    let mut interner = Interner::default();
    let cooked_refs: Vec<Vec<Cooked>> = refs
        .iter()
        .map(|rs| rs.iter().map(|r| interner.cook(r)).collect())
        .collect();
    let cooked_hyps: Vec<Cooked> = hyps.iter().map(|h| interner.cook(h)).collect();

    // Document frequency: in how many images' reference sets each n-gram occurs.
    let mut df = vec![0.0f64; interner.ngram_count()];
    let mut last_image = vec![usize::MAX; interner.ngram_count()];
    for (i, rs) in cooked_refs.iter().enumerate() {
        for r in rs {
            for g in &r.ngrams {
                let id = g.id as usize;
                if last_image[id] != i {
                    last_image[id] = i;
                    df[id] += 1.0;
                }
            }
        }
    }
    let ref_len = (refs.len() as f64).ln();
    let penalty_scale = 2.0 * SIGMA.powi(2);

    // Scratch: for the current hypothesis, the reference weight of each of its n-grams.
    let mut slot_of = vec![u32::MAX; interner.ngram_count()];
    let mut ref_weight: Vec<f64> = Vec::new();
    let mut per_image = Vec::with_capacity(hyps.len());
    for (rs, hyp) in cooked_refs.iter().zip(&cooked_hyps) {
        let vh = counts2vec(hyp, &df, ref_len);
        for (slot, &(id, _, _)) in vh.entries.iter().enumerate() {
            slot_of[id as usize] = slot as u32;
        }
        let mut score = [0.0f64; MAX_N];
        for r in rs {
            let vr = counts2vec(r, &df, ref_len);
            ref_weight.clear();
            ref_weight.resize(vh.entries.len(), 0.0);
            for &(id, _, w) in &vr.entries {
                let slot = slot_of[id as usize];
                if slot != u32::MAX {
                    ref_weight[slot as usize] = w;
                }
            }
            let delta = vh.length - vr.length;
            let mut val = [0.0f64; MAX_N];
            for (slot, &(_, order, w)) in vh.entries.iter().enumerate() {
                let rw = ref_weight[slot];
                val[usize::from(order)] += w.min(rw) * rw;
            }
            for n in 0..MAX_N {
                if vh.norm[n] != 0.0 && vr.norm[n] != 0.0 {
                    val[n] /= vh.norm[n] * vr.norm[n];
                }
                val[n] *= std::f64::consts::E.powf(-(delta.powi(2)) / penalty_scale);
                score[n] += val[n];
            }
        }
        for &(id, _, _) in &vh.entries {
            slot_of[id as usize] = u32::MAX;
        }
        let mut avg = np_sum(&score) / MAX_N as f64;
        avg /= rs.len() as f64;
        avg *= 10.0;
        per_image.push(avg);
    }
    Ok(CiderScores {
        corpus: np_mean(&per_image),
        per_image,
    })
}
