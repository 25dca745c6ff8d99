//! ROUGE-L as pycocoevalcap's `Rouge` computes it: for each image, the longest common
//! subsequence between the hypothesis and each reference (tokens from `split(" ")`), the maximum
//! precision and maximum recall over references, and their F-measure with β = 1.2; the corpus
//! score is `numpy.mean` of the per-image scores.

use crate::ngrams::{check_inputs, FxHashMap};
use crate::pycompat::np_mean;
use crate::EvalError;

const BETA: f64 = 1.2;

/// Corpus and per-image ROUGE-L.
#[derive(Clone, Debug, PartialEq)]
pub struct RougeScores {
    /// The corpus score: the mean of the per-image scores.
    pub corpus: f64,
    /// Each image's ROUGE-L F-measure, in input order.
    pub per_image: Vec<f64>,
}

fn lcs(a: &[u32], b: &[u32], row: &mut Vec<u32>) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    row.clear();
    row.resize(short.len() + 1, 0);
    for &x in long {
        let mut diag = 0; // lengths[i-1][j-1]
        for j in 1..=short.len() {
            let up = row[j];
            row[j] = if x == short[j - 1] {
                diag + 1
            } else {
                row[j].max(row[j - 1])
            };
            diag = up;
        }
    }
    row[short.len()] as usize
}

/// `Rouge.calc_score` for one image.
fn image_score(hyp: &[u32], refs: &[Vec<u32>], row: &mut Vec<u32>) -> f64 {
    let mut prec_max = f64::NEG_INFINITY;
    let mut rec_max = f64::NEG_INFINITY;
    for r in refs {
        let l = lcs(r, hyp, row) as f64;
        prec_max = prec_max.max(l / hyp.len() as f64);
        rec_max = rec_max.max(l / r.len() as f64);
    }
    if prec_max != 0.0 && rec_max != 0.0 {
        let b2 = BETA * BETA;
        ((1.0 + b2) * prec_max * rec_max) / (rec_max + b2 * prec_max)
    } else {
        0.0
    }
}

/// ROUGE-L of `hyps[i]` against `refs[i]`.
pub fn compute(refs: &[Vec<String>], hyps: &[String]) -> Result<RougeScores, EvalError> {
    check_inputs(refs, hyps)?;
    let mut vocab: FxHashMap<&str, u32> = FxHashMap::default();
    let mut row = Vec::new();
    let mut per_image = Vec::with_capacity(hyps.len());
    for (image_refs, hyp) in refs.iter().zip(hyps) {
        let h = split_ids(hyp, &mut vocab);
        let rs: Vec<Vec<u32>> = image_refs
            .iter()
            .map(|r| split_ids(r, &mut vocab))
            .collect();
        per_image.push(image_score(&h, &rs, &mut row));
    }
    Ok(RougeScores {
        corpus: np_mean(&per_image),
        per_image,
    })
}

/// Token ids of `s.split(" ")` (consecutive spaces give empty tokens, as in Python).
fn split_ids<'a>(s: &'a str, vocab: &mut FxHashMap<&'a str, u32>) -> Vec<u32> {
    s.split(' ')
        .map(|w| {
            let next = vocab.len() as u32;
            *vocab.entry(w).or_insert(next)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_lengths() {
        let mut row = Vec::new();
        assert_eq!(lcs(&[1, 2, 3, 4], &[2, 4], &mut row), 2);
        assert_eq!(lcs(&[1, 2], &[3], &mut row), 0);
        assert_eq!(lcs(&[5, 1, 5], &[1, 5, 1, 5], &mut row), 3);
    }
}
