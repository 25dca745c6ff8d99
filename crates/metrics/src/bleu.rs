//! BLEU-1..4 as pycocoevalcap's `Bleu(4)` computes it: corpus-level modified n-gram precision
//! with the "closest" effective reference length (ties to the shorter reference), the smoothing
//! constants `tiny = 1e-15` and `small = 1e-9`, and per-image scores computed the same way.

use crate::ngrams::{check_inputs, FxHashMap, Interner, MAX_N};
use crate::EvalError;

const TINY: f64 = 1e-15;
const SMALL: f64 = 1e-9;

/// Corpus and per-image BLEU-1..4.
#[derive(Clone, Debug, PartialEq)]
pub struct BleuScores {
    /// `[Bleu_1, Bleu_2, Bleu_3, Bleu_4]` over the corpus.
    pub corpus: [f64; MAX_N],
    /// The same four scores for each image, in input order.
    pub per_image: Vec<[f64; MAX_N]>,
}

/// The sufficient statistics of one image (`cook_test`).
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    testlen: usize,
    reflen: usize,
    guess: [usize; MAX_N],
    correct: [usize; MAX_N],
}

fn score(
    correct: &[usize; MAX_N],
    guess: &[usize; MAX_N],
    testlen: f64,
    reflen: f64,
) -> [f64; MAX_N] {
    let mut out = [0.0; MAX_N];
    let mut bleu = 1.0f64;
    for k in 0..MAX_N {
        bleu *= (correct[k] as f64 + TINY) / (guess[k] as f64 + SMALL);
        out[k] = bleu.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (testlen + TINY) / (reflen + SMALL);
    if ratio < 1.0 {
        let bp = (1.0 - 1.0 / ratio).exp();
        for v in &mut out {
            *v *= bp;
        }
    }
    out
}

/// BLEU-1..4 of `hyps[i]` against `refs[i]` (tokenised, space-separated captions).
pub fn compute(refs: &[Vec<String>], hyps: &[String]) -> Result<BleuScores, EvalError> {
    check_inputs(refs, hyps)?;
    let mut interner = Interner::default();
    let mut per_image = Vec::with_capacity(hyps.len());
    let mut total = Stats::default();
    let mut maxcounts: FxHashMap<u32, u32> = FxHashMap::default();
    for (image_refs, hyp) in refs.iter().zip(hyps) {
        maxcounts.clear();
        let mut reflens = Vec::with_capacity(image_refs.len());
        for r in image_refs {
            let cooked = interner.cook(r);
            reflens.push(cooked.words);
            for g in cooked.ngrams {
                let slot = maxcounts.entry(g.id).or_insert(0);
                *slot = (*slot).max(g.count);
            }
        }
        let test = interner.cook(hyp);
        let testlen = test.words;
        let reflen = reflens
            .iter()
            .copied()
            .min_by_key(|&l| (l.abs_diff(testlen), l))
            .unwrap_or(0);
        let mut s = Stats {
            testlen,
            reflen,
            ..Stats::default()
        };
        for k in 0..MAX_N {
            s.guess[k] = testlen.saturating_sub(k);
        }
        for g in &test.ngrams {
            let m = maxcounts.get(&g.id).copied().unwrap_or(0);
            s.correct[usize::from(g.order)] += m.min(g.count) as usize;
        }
        per_image.push(score(&s.correct, &s.guess, testlen as f64, reflen as f64));
        total.testlen += s.testlen;
        total.reflen += s.reflen;
        for k in 0..MAX_N {
            total.guess[k] += s.guess[k];
            total.correct[k] += s.correct[k];
        }
    }
    let corpus = score(
        &total.correct,
        &total.guess,
        total.testlen as f64,
        total.reflen as f64,
    );
    Ok(BleuScores { corpus, per_image })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_inputs_are_errors() {
        assert!(compute(&[vec!["a".into()]], &[]).is_err());
        assert!(compute(&[vec![]], &["a".into()]).is_err());
    }
}
