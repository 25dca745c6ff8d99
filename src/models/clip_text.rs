//! The CLIP text tower (OpenAI `CLIP.encode_text`, and HF `CLIPTextModel` +
//! `text_projection`, which compute the same): token + positional embedding, a causal
//! [`ClipTransformer`], `ln_final`, the features at the arg-max token id (the end-of-text token
//! of a `clip.tokenize` row), `text_projection`. Weights in OpenAI's names; a Hugging Face
//! checkpoint is renamed into them by `clip_layout`.
//!
//! The attention is causal, so what follows a row's end-of-text token never reaches its
//! features: each row runs only up to that token (a COCO caption is about 15 of the 77
//! positions). On the CPU the rows' tokens are packed into one matrix, so that the linear
//! layers run over all of them at once and attention stays within each row
//! ([`crate::kernels::packed_attention`]); tokens that begin several rows alike (the start
//! token in all, a shared opening such as "a man") have the same features in each, so they are
//! stored and computed once, as a prefix tree; a batch is sorted first and packed 256 rows at
//! a time, so that rows beginning alike share a tree. Elsewhere rows ending at the same
//! position run together.

use std::collections::HashMap;

use candle_core::{Device, Module, Tensor};
use candle_nn::LayerNorm;

use super::clip_transformer::{layer_norm, ClipTransformer};
use super::clip_weights::Weights;
use crate::error::{Error, Result};
use crate::precision::ConvKernel;

/// The text tower's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextDims {
    /// Token vocabulary size (49408).
    pub vocab_size: usize,
    /// Positions (77).
    pub context_length: usize,
    /// Width of the transformer.
    pub width: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of the joint embedding `text_projection` maps into.
    pub embed_dim: usize,
}

/// CLIP's text tower: `clip.tokenize` rows to text features.
#[derive(Debug, Clone)]
pub struct ClipText {
    token_embedding: Tensor,
    positional_embedding: Tensor,
    transformer: ClipTransformer,
    ln_final: LayerNorm,
    text_projection: Tensor,
}

impl ClipText {
    /// Loads `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.*`,
    /// `ln_final` and `text_projection` (`[width, embed_dim]`), each shape-checked.
    /// `kernel` chooses how the transformer's linear layers compute.
    pub(crate) fn load(w: &Weights, d: &TextDims, kernel: ConvKernel) -> Result<Self> {
        let tw = d.width;
        Ok(Self {
            token_embedding: w.get("token_embedding.weight", &[d.vocab_size, tw])?,
            positional_embedding: w.get("positional_embedding", &[d.context_length, tw])?,
            transformer: ClipTransformer::load(w, "transformer", tw, d.layers, d.heads, kernel)?,
            ln_final: layer_norm(w, "ln_final", tw)?,
            text_projection: w.get("text_projection", &[tw, d.embed_dim])?,
        })
    }

    /// Token ids (`clip.tokenize` rows, all of one length ≤ context) → text features `[B, E]`.
    pub(crate) fn forward(&self, rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let l = rows.first().map_or(0, Vec::len);
        let ctx = self.positional_embedding.dim(0)?;
        if l == 0 || l > ctx || rows.iter().any(|r| r.len() != l) {
            return Err(Error::Input(format!(
                "token rows must all have one length between 1 and the context {ctx}"
            )));
        }
        let vocab = self.token_embedding.dim(0)?;
        if let Some(bad) = rows.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        // `text.argmax(dim=-1)`: the first position of the largest id (the EOT token).
        let ends: Vec<usize> = rows
            .iter()
            .map(|r| {
                let mut best = 0;
                for (j, &t) in r.iter().enumerate() {
                    if t > r[best] {
                        best = j;
                    }
                }
                best
            })
            .collect();
        let pooled = match device {
            Device::Cpu => self.pooled_sorted(rows, &ends)?,
            _ => self.pooled_grouped(rows, &ends, device)?,
        };
        Ok(pooled.matmul(&self.text_projection)?)
    }

    /// The `ln_final` features at each row's end (`ends`) on the CPU: the rows sorted by their
    /// tokens (so that rows beginning alike fall together) and taken [`PACKED_ROWS`] at a time
    /// through [`Self::pooled_packed`].
    fn pooled_sorted(&self, rows: &[Vec<u32>], ends: &[usize]) -> Result<Tensor> {
        let seq = |i: usize| &rows[i][..=ends[i]];
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by(|&a, &b| seq(a).cmp(seq(b)));
        let groups = order
            .chunks(PACKED_ROWS)
            .map(|g| self.pooled_packed(g.iter().map(|&i| seq(i))))
            .collect::<Result<Vec<_>>>()?;
        let mut place = vec![0u32; rows.len()];
        for (k, &i) in order.iter().enumerate() {
            place[i] = k as u32;
        }
        let place = Tensor::from_vec(place, rows.len(), &Device::Cpu)?;
        Ok(Tensor::cat(&groups, 0)?.index_select(&place, 0)?)
    }

    /// The `ln_final` features at the end of each of `sequences` (token rows cut after their
    /// end token), all packed into one matrix on the CPU (the linear layers run over all of
    /// them at once), the tokens that begin several sequences alike once.
    fn pooled_packed<'a>(&self, sequences: impl Iterator<Item = &'a [u32]>) -> Result<Tensor> {
        let width = self.positional_embedding.dim(1)?;
        let tree = PrefixTree::of(sequences);
        let n = tree.ids.len();
        let ids = Tensor::from_vec(tree.ids, n, &Device::Cpu)?;
        let mut x = self
            .token_embedding
            .index_select(&ids, 0)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let pos = self.positional_embedding.flatten_all()?.to_vec1::<f32>()?;
        for (x, &p) in x.chunks_mut(width).zip(&tree.positions) {
            let p = &pos[p * width..(p + 1) * width];
            x.iter_mut().zip(p).for_each(|(x, p)| *x += p);
        }
        let last = self
            .transformer
            .forward_packed_last(&mut x, &tree.parents, &tree.ends)?;
        let last = Tensor::from_vec(last, (tree.ends.len(), width), &Device::Cpu)?;
        Ok(self.ln_final.forward(&last)?)
    }

    /// [`Self::pooled_sorted`] on other devices: rows ending at the same position run together.
    fn pooled_grouped(&self, rows: &[Vec<u32>], ends: &[usize], device: &Device) -> Result<Tensor> {
        let b = rows.len();
        let mut order: Vec<usize> = (0..b).collect();
        order.sort_by_key(|&i| ends[i]);
        let mut pooled: Vec<Option<Tensor>> = vec![None; b];
        for group in order.chunk_by(|&i, &j| ends[i] == ends[j]) {
            let len = ends[group[0]] + 1;
            let x = self.run(
                group.iter().map(|&i| &rows[i][..len]),
                group.len(),
                len,
                device,
            )?;
            // Only the end position's features are read: `ln_final` there alone.
            let last = self
                .ln_final
                .forward(&x.narrow(1, len - 1, 1)?.squeeze(1)?)?;
            for (k, &i) in group.iter().enumerate() {
                pooled[i] = Some(last.get(k)?);
            }
        }
        let pooled = pooled
            .into_iter()
            .map(|p| p.ok_or_else(|| Error::Input("a text row was not encoded".into())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&pooled, 0)?)
    }

    /// The transformer over `g` rows of `len` tokens: `[g, len, width]`.
    fn run<'a>(
        &self,
        rows: impl Iterator<Item = &'a [u32]>,
        g: usize,
        len: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let flat: Vec<u32> = rows.flatten().copied().collect();
        let ids = Tensor::from_vec(flat, g * len, device)?;
        let x = self
            .token_embedding
            .index_select(&ids, 0)?
            .reshape((g, len, ()))?;
        let x = x.broadcast_add(&self.positional_embedding.narrow(0, 0, len)?)?;
        let mask: Vec<f32> = (0..len)
            .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (len, len), device)?;
        Ok(self.transformer.forward(&x, Some(&mask))?)
    }
}

/// Rows packed together on the CPU: about 3,700 tokens of COCO captions, enough for the matrix
/// units, while a larger batch (sorted first) still finds more rows that begin alike.
const PACKED_ROWS: usize = 256;

/// Token sequences stored as a prefix tree: each distinct opening once, in first-seen order
/// (so a token's parent comes before it).
#[derive(Debug, PartialEq)]
struct PrefixTree {
    /// Each token's id.
    ids: Vec<u32>,
    /// Each token's position in its sequences.
    positions: Vec<usize>,
    /// The token before each one, `None` at position 0.
    parents: Vec<Option<usize>>,
    /// The last token of each sequence, in order.
    ends: Vec<usize>,
}

impl PrefixTree {
    fn of<'a>(sequences: impl Iterator<Item = &'a [u32]>) -> Self {
        let mut tree = PrefixTree {
            ids: Vec::new(),
            positions: Vec::new(),
            parents: Vec::new(),
            ends: Vec::new(),
        };
        let mut children: HashMap<(Option<usize>, u32), usize> = HashMap::new();
        for s in sequences {
            let mut at = None;
            for (p, &id) in s.iter().enumerate() {
                let next = *children.entry((at, id)).or_insert_with(|| {
                    tree.ids.push(id);
                    tree.positions.push(p);
                    tree.parents.push(at);
                    tree.ids.len() - 1
                });
                at = Some(next);
            }
            tree.ends.extend(at);
        }
        tree
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_tree_stores_each_opening_once() {
        // [1 2 3], [1 2 4], [1 2] (inside the first), [5], [1 2 3] again.
        let rows: [&[u32]; 5] = [&[1, 2, 3], &[1, 2, 4], &[1, 2], &[5], &[1, 2, 3]];
        let tree = PrefixTree::of(rows.into_iter());
        assert_eq!(
            tree,
            PrefixTree {
                ids: vec![1, 2, 3, 4, 5],
                positions: vec![0, 1, 2, 2, 0],
                parents: vec![None, Some(0), Some(1), Some(1), None],
                ends: vec![2, 3, 1, 4, 2],
            }
        );
    }
}
