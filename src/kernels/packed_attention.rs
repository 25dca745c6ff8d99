//! Causal self-attention over sequences packed end to end, as CLIP's text tower runs a batch of
//! captions: each caption keeps only its tokens up to its end-of-text token, the captions'
//! tokens are stacked into one `[tokens, 3 · width]` matrix of fused q, k, v projections (so
//! that the linear layers run over all of them at once), and each token attends to the tokens
//! of its own caption up to itself.
//!
//! Per head of `d` values: `softmax((q / √d) · kᵀ)` over the visible positions, then the
//! probabilities times `v`, as `F.multi_head_attention_forward` computes with the causal mask
//! (queries scaled first; the masked positions are left out instead of adding −∞, which gives
//! them probability 0 in both). Sequences run in parallel; the sums are f32.

use std::ops::Range;

use rayon::prelude::*;

use super::decode_attention::dot;

/// `qkv` (`[tokens, 3 · width]`: each token's q, then k, then v, `heads` heads of `width /
/// heads` each) → `out` `[tokens, width]` (every value overwritten): the attention of each
/// token over the tokens of its span up to itself. `spans` cover `0..tokens` in order, one per
/// sequence.
pub fn causal_self_attention(
    qkv: &[f32],
    spans: &[Range<usize>],
    heads: usize,
    width: usize,
    out: &mut [f32],
) {
    assert!(
        heads > 0 && width.is_multiple_of(heads),
        "{width} wide in {heads} heads"
    );
    assert_eq!(
        qkv.len() % (3 * width),
        0,
        "q, k and v of {width} per token"
    );
    let tokens = qkv.len() / (3 * width);
    let mut next = 0;
    for s in spans {
        assert!(
            s.start == next && s.end >= s.start,
            "spans cover the tokens in order"
        );
        next = s.end;
    }
    assert_eq!(next, tokens, "spans cover every token");
    assert_eq!(out.len(), tokens * width, "an output of {width} per token");
    let mut rest = out;
    let mut pieces = Vec::with_capacity(spans.len());
    for s in spans {
        let (here, after) = rest.split_at_mut(s.len() * width);
        pieces.push((s.clone(), here));
        rest = after;
    }
    pieces.into_par_iter().for_each(|(s, out)| {
        one_sequence(
            &qkv[s.start * 3 * width..s.end * 3 * width],
            out,
            heads,
            width,
        )
    });
}

/// One sequence: `qkv` `[l, 3 · width]` → `out` `[l, width]`.
fn one_sequence(qkv: &[f32], out: &mut [f32], heads: usize, width: usize) {
    let d = width / heads;
    let l = out.len() / width;
    let scale = 1.0 / (d as f32).sqrt();
    let mut q = vec![0f32; d];
    let mut p = vec![0f32; l];
    for h in 0..heads {
        let at = |row: usize, which: usize| &qkv[row * 3 * width + which * width + h * d..][..d];
        for i in 0..l {
            for (q, &v) in q.iter_mut().zip(at(i, 0)) {
                *q = v * scale;
            }
            let mut max = f32::NEG_INFINITY;
            for (j, p) in p[..=i].iter_mut().enumerate() {
                *p = dot(&q, at(j, 1));
                max = max.max(*p);
            }
            let mut sum = 0f32;
            for p in &mut p[..=i] {
                *p = (*p - max).exp();
                sum += *p;
            }
            let o = &mut out[i * width + h * d..][..d];
            o.fill(0.0);
            for (j, &pj) in p[..=i].iter().enumerate() {
                let pj = pj / sum;
                for (o, &v) in o.iter_mut().zip(at(j, 2)) {
                    *o += pj * v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention written out in f64 from its definition: scores with a −∞ mask, softmax, sum.
    fn plain(qkv: &[f32], spans: &[Range<usize>], heads: usize, width: usize) -> Vec<f64> {
        let d = width / heads;
        let tokens = qkv.len() / (3 * width);
        let mut out = vec![0f64; tokens * width];
        let x = |t: usize, c: usize| qkv[t * 3 * width + c] as f64;
        for s in spans {
            for h in 0..heads {
                for i in s.clone() {
                    let scores: Vec<f64> = s
                        .clone()
                        .map(|j| {
                            if j > i {
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
                        out[i * width + h * d + c] = s
                            .clone()
                            .zip(&e)
                            .map(|(j, e)| e / z * x(j, 2 * width + h * d + c))
                            .sum();
                    }
                }
            }
        }
        out
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
    fn matches_the_definition_on_uneven_spans_and_odd_head_widths() {
        // Head widths 5 (no full lane chunk), 16, and 40 (chunks plus a tail); a one-token span.
        for (heads, width) in [(3, 15), (2, 32), (2, 80)] {
            let spans = [0..1, 1..8, 8..10, 10..27];
            let qkv = values(27 * 3 * width, width as u32);
            let mut got = vec![f32::NAN; 27 * width];
            causal_self_attention(&qkv, &spans, heads, width, &mut got);
            let want = plain(&qkv, &spans, heads, width);
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{heads}×{width}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn a_token_sees_only_its_own_sequence_up_to_itself() {
        // The first token of every span attends to itself alone: its output is its own v.
        let (heads, width) = (2, 8);
        let spans = [0..3, 3..5];
        let qkv = values(5 * 3 * width, 9);
        let mut out = vec![f32::NAN; 5 * width];
        causal_self_attention(&qkv, &spans, heads, width, &mut out);
        for start in [0, 3] {
            assert_eq!(
                &out[start * width..(start + 1) * width],
                &qkv[start * 3 * width + 2 * width..(start + 1) * 3 * width]
            );
        }
    }

    #[test]
    #[should_panic(expected = "spans cover every token")]
    fn spans_must_cover_the_tokens() {
        // Two tokens, of which the spans cover one.
        causal_self_attention(&[0.0; 2 * 3 * 4], &[0..1, 1..1], 1, 4, &mut [0.0; 2 * 4]);
    }
}
