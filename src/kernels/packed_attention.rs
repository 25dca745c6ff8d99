//! Causal self-attention over sequences packed into a prefix tree, as CLIP's text tower runs a
//! batch of captions: each caption keeps only its tokens up to its end-of-text token, tokens
//! that begin several captions alike (the start token, a shared "a photo of") are stored once,
//! all of them stacked into one `[tokens, 3 · width]` matrix of fused q, k, v projections (so
//! that the linear layers run over all of them at once), and each token attends to the tokens
//! before it in its caption and to itself.
//!
//! Per head of `d` values: `softmax((q / √d) · kᵀ)` over the visible positions, then the
//! probabilities times `v`, as `F.multi_head_attention_forward` computes with the causal mask
//! (queries scaled first; the masked positions are left out instead of adding −∞, which gives
//! them probability 0 in both). Tokens run in parallel; the sums are f32, over the positions in
//! order from the first.

use rayon::prelude::*;

use super::decode_attention::dot;

/// Tokens per parallel task.
const CHUNK: usize = 16;

/// `qkv` (`[tokens, 3 · width]`: each token's q, then k, then v, `heads` heads of `width /
/// heads` each) → `out` `[tokens, width]` (every value overwritten): the attention of each
/// token over the tokens before it in its sequence and itself. `parents[t]` is the token
/// before `t` in its sequence (an earlier one), `None` where `t` begins a sequence.
pub fn causal_self_attention(
    qkv: &[f32],
    parents: &[Option<usize>],
    heads: usize,
    width: usize,
    out: &mut [f32],
) {
    assert!(
        heads > 0 && width.is_multiple_of(heads),
        "{width} wide in {heads} heads"
    );
    let tokens = parents.len();
    assert_eq!(
        qkv.len(),
        tokens * 3 * width,
        "q, k and v of {width} per token"
    );
    assert_eq!(out.len(), tokens * width, "an output of {width} per token");
    for (t, p) in parents.iter().enumerate() {
        assert!(
            p.is_none_or(|p| p < t),
            "token {t}'s parent comes before it"
        );
    }
    out.par_chunks_mut(CHUNK * width)
        .enumerate()
        .for_each(|(c, out)| {
            // Buffers reused by the chunk's tokens.
            let (mut chain, mut q, mut p) = (Vec::new(), vec![0f32; width / heads], Vec::new());
            for (k, out) in out.chunks_mut(width).enumerate() {
                let t = c * CHUNK + k;
                chain.clear();
                let mut at = Some(t);
                while let Some(a) = at {
                    chain.push(a);
                    at = parents[a];
                }
                chain.reverse();
                p.resize(chain.len(), 0.0);
                one_token(qkv, &chain, heads, width, &mut q, &mut p, out);
            }
        });
}

/// One token's output `[width]`, attending to `chain` (its sequence's tokens from the first up
/// to itself); `q` (one head's width) and `p` (one value per chain token) are scratch.
fn one_token(
    qkv: &[f32],
    chain: &[usize],
    heads: usize,
    width: usize,
    q: &mut [f32],
    p: &mut [f32],
    out: &mut [f32],
) {
    let d = width / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let i = *chain.last().expect("a chain ends at its token");
    for h in 0..heads {
        let at = |row: usize, which: usize| &qkv[row * 3 * width + which * width + h * d..][..d];
        for (q, &v) in q.iter_mut().zip(at(i, 0)) {
            *q = v * scale;
        }
        let mut max = f32::NEG_INFINITY;
        for (&j, p) in chain.iter().zip(p.iter_mut()) {
            *p = dot(q, at(j, 1));
            max = max.max(*p);
        }
        let mut sum = 0f32;
        for p in p.iter_mut() {
            *p = (*p - max).exp();
            sum += *p;
        }
        let o = &mut out[h * d..][..d];
        o.fill(0.0);
        for (&j, &pj) in chain.iter().zip(p.iter()) {
            let pj = pj / sum;
            for (o, &v) in o.iter_mut().zip(at(j, 2)) {
                *o += pj * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention written out in f64 from its definition, sequence by sequence (each a list of
    /// token rows from its first): scores with a −∞ mask, softmax, sum. A row shared by several
    /// sequences must come out the same from each.
    fn plain(qkv: &[f32], sequences: &[Vec<usize>], heads: usize, width: usize) -> Vec<f64> {
        let d = width / heads;
        let tokens = qkv.len() / (3 * width);
        let mut out = vec![f64::NAN; tokens * width];
        let x = |t: usize, c: usize| qkv[t * 3 * width + c] as f64;
        for s in sequences {
            for h in 0..heads {
                for (pos, &i) in s.iter().enumerate() {
                    let scores: Vec<f64> = s
                        .iter()
                        .enumerate()
                        .map(|(pj, &j)| {
                            if pj > pos {
                                f64::NEG_INFINITY
                            } else {
                                (0..d)
                                    .map(|c| x(i, h * d + c) * x(j, width + h * d + c))
                                    .sum::<f64>()
                                    / (d as f64).sqrt()
                            }
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        let v: f64 = s
                            .iter()
                            .zip(&e)
                            .map(|(&j, e)| e / z * x(j, 2 * width + h * d + c))
                            .sum();
                        let o = &mut out[i * width + h * d + c];
                        assert!(o.is_nan() || *o == v, "row {i} differs between sequences");
                        *o = v;
                    }
                }
            }
        }
        out
    }

    /// `parents` of sequences given as rows from their first.
    fn parents_of(sequences: &[Vec<usize>], tokens: usize) -> Vec<Option<usize>> {
        let mut parents = vec![None; tokens];
        for s in sequences {
            for w in s.windows(2) {
                parents[w[1]] = Some(w[0]);
            }
        }
        parents
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_on_uneven_and_shared_sequences_and_odd_head_widths() {
        // Head widths 5 (no full lane chunk), 16, and 40 (chunks plus a tail); one-token
        // sequences; sequences sharing their first tokens (0, 1 and 20, 21), one ending inside
        // another (0, 1, 2), and more tokens than one parallel task takes.
        let sequences = [
            vec![0, 1, 2],
            vec![0, 1, 2, 3, 4, 5, 6, 7],
            vec![0, 1, 8, 9],
            vec![10],
            vec![11, 12, 13, 14, 15, 16, 17, 18, 19],
            vec![0, 26],
            vec![20, 21, 22, 23, 24, 25],
            vec![20, 21],
            (20..22).chain(27..40).collect(),
        ];
        let tokens = 40;
        let parents = parents_of(&sequences, tokens);
        for (heads, width) in [(3, 15), (2, 32), (2, 80)] {
            let qkv = values(tokens * 3 * width, width as u32);
            let mut got = vec![f32::NAN; tokens * width];
            causal_self_attention(&qkv, &parents, heads, width, &mut got);
            let want = plain(&qkv, &sequences, heads, width);
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{heads}×{width}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn a_token_sees_only_its_own_sequence_up_to_itself() {
        // The first token of every sequence attends to itself alone: its output is its own v.
        let (heads, width) = (2, 8);
        let parents = [None, Some(0), Some(1), None, Some(3)];
        let qkv = values(5 * 3 * width, 9);
        let mut out = vec![f32::NAN; 5 * width];
        causal_self_attention(&qkv, &parents, heads, width, &mut out);
        for start in [0, 3] {
            assert_eq!(
                &out[start * width..(start + 1) * width],
                &qkv[start * 3 * width + 2 * width..(start + 1) * 3 * width]
            );
        }
    }

    #[test]
    #[should_panic(expected = "token 1's parent comes before it")]
    fn parents_must_come_first() {
        causal_self_attention(&[0.0; 2 * 3 * 4], &[None, Some(1)], 1, 4, &mut [0.0; 2 * 4]);
    }
}
