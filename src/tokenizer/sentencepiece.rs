//! XGLM's tokenizer: a SentencePiece unigram model (`sentencepiece.bpe.model`, a protobuf),
//! built into a `tokenizers` pipeline exactly as transformers 4.21.1 converts it for
//! `XGLMTokenizerFast` (`XGLMConverter`), which is what the reference's `AutoTokenizer` gives:
//! - ids in fairseq's order: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, then the model's pieces
//!   from its fourth on (SentencePiece id `i` becomes `i + 1`), then `<madeupword0>` …
//!   `<madeupword6>`; all of them special tokens;
//! - the model's own normalisation (its precompiled character map, e.g. NFKC), then runs of
//!   spaces collapsed to one; spaces become `▁`, a `▁` is put before every piece of text, and
//!   a trailing space stays a `▁` token (the slow `XGLMTokenizer` would drop it);
//! - `</s>` before every text encoded with special tokens (the post-processor's `</s> $A`).
//!
//! The protobuf is read with `prost` from the fields of `sentencepiece_model.proto` that the
//! conversion uses; the rest of the file is skipped.

use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::unigram::Unigram;
use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::{NormalizerWrapper, Precompiled, Replace, Sequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::error::{Error, Result};

/// The file name of XGLM's SentencePiece model in its repositories.
pub const MODEL_FILE: &str = "sentencepiece.bpe.model";

/// The token XGLM's tokenizer puts before every text.
pub const PREFIX_TOKEN: &str = "</s>";

/// fairseq's special tokens, ids 0-3.
const FAIRSEQ_SPECIALS: [&str; 4] = ["<s>", "<pad>", "</s>", "<unk>"];

/// XGLM's tokens after the pieces (`XGLMTokenizer`'s `madeup_words`).
const MADEUP_WORDS: usize = 7;

/// The largest model file read (XGLM's is 4.9 MB).
const MAX_MODEL_BYTES: u64 = 256 << 20;

/// SentencePiece's `TrainerSpec.ModelType.UNIGRAM`, the default.
const UNIGRAM: i32 = 1;

/// `ModelProto` of `sentencepiece_model.proto`: the parts the conversion reads.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<SentencePiece>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}

/// `ModelProto.SentencePiece`.
#[derive(Clone, PartialEq, prost::Message)]
struct SentencePiece {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
}

/// `TrainerSpec`.
#[derive(Clone, PartialEq, prost::Message)]
struct TrainerSpec {
    #[prost(int32, optional, tag = "3")]
    model_type: Option<i32>,
}

/// `NormalizerSpec`.
#[derive(Clone, PartialEq, prost::Message)]
struct NormalizerSpec {
    #[prost(bytes = "vec", optional, tag = "2")]
    precompiled_charsmap: Option<Vec<u8>>,
}

/// Reads `path` and builds XGLM's tokenizer from it (see the module documentation).
pub fn xglm_tokenizer(path: &Path) -> Result<HfTokenizer> {
    let bad = |msg: String| Error::Tokenizer {
        path: path.to_path_buf(),
        msg,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > MAX_MODEL_BYTES {
        return Err(bad(format!(
            "{len} bytes: larger than any SentencePiece model ({MAX_MODEL_BYTES} at most)"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let proto: ModelProto = prost::Message::decode(bytes.as_slice())
        .map_err(|e| bad(format!("not a SentencePiece model: {e}")))?;
    build(&proto).map_err(bad)
}

/// `XGLMConverter(...).converted()` with the special tokens `XGLMTokenizerFast` registers.
fn build(proto: &ModelProto) -> std::result::Result<HfTokenizer, String> {
    let model_type = proto
        .trainer_spec
        .as_ref()
        .and_then(|t| t.model_type)
        .unwrap_or(UNIGRAM);
    if model_type != UNIGRAM {
        return Err(format!(
            "not a SentencePiece model of the unigram type (model_type {model_type}; XGLM's is unigram, 1)"
        ));
    }
    if proto.pieces.len() <= 3 {
        return Err(format!(
            "not a SentencePiece model: {} pieces, where XGLM's model has <unk>, <s>, </s> and then its vocabulary",
            proto.pieces.len()
        ));
    }
    let mut vocab: Vec<(String, f64)> = FAIRSEQ_SPECIALS
        .iter()
        .map(|t| (t.to_string(), 0.0))
        .collect();
    for (i, p) in proto.pieces.iter().enumerate().skip(3) {
        let piece = p
            .piece
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("not a SentencePiece model: piece {i} has no text"))?;
        vocab.push((piece, f64::from(p.score.unwrap_or(0.0))));
    }
    let madeup: Vec<String> = (0..MADEUP_WORDS)
        .map(|i| format!("<madeupword{i}>"))
        .collect();
    vocab.extend(madeup.iter().map(|m| (m.clone(), 0.0)));
    let unk = FAIRSEQ_SPECIALS.iter().position(|&t| t == "<unk>");
    let unigram = Unigram::from(vocab, unk, false).map_err(|e| e.to_string())?;
    let mut tokenizer = HfTokenizer::new(unigram);

    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    let charsmap = proto
        .normalizer_spec
        .as_ref()
        .and_then(|n| n.precompiled_charsmap.as_deref())
        .unwrap_or_default();
    if !charsmap.is_empty() {
        let precompiled = Precompiled::from(charsmap)
            .map_err(|e| format!("its normaliser's precompiled_charsmap is not valid: {e}"))?;
        normalizers.push(precompiled.into());
    }
    let spaces = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()),
        " ",
    )
    .map_err(|e| e.to_string())?;
    normalizers.push(spaces.into());
    tokenizer
        .with_normalizer(Some(Sequence::new(normalizers)))
        .map_err(|e| e.to_string())?;
    let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
    tokenizer.with_pre_tokenizer(Some(metaspace.clone()));
    tokenizer.with_decoder(Some(DecoderWrapper::Metaspace(metaspace)));

    let specials: Vec<AddedToken> = FAIRSEQ_SPECIALS
        .iter()
        .map(|t| t.to_string())
        .chain(madeup)
        .map(|t| AddedToken::from(t, true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| e.to_string())?;
    Ok(tokenizer)
}

/// Whether a `tokenizer.json` holds a unigram model (XGLM's, saved by `XGLMTokenizerFast`).
pub fn is_unigram(tokenizer: &HfTokenizer) -> bool {
    matches!(tokenizer.get_model(), ModelWrapper::Unigram(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(pieces: &[&str], model_type: Option<i32>) -> ModelProto {
        ModelProto {
            pieces: pieces
                .iter()
                .enumerate()
                .map(|(i, p)| SentencePiece {
                    piece: Some(p.to_string()),
                    score: Some(-(i as f32)),
                })
                .collect(),
            trainer_spec: Some(TrainerSpec { model_type }),
            normalizer_spec: None,
        }
    }

    #[test]
    fn ids_follow_fairseq_with_the_madeup_words_last() {
        let proto = model(&["<unk>", "<s>", "</s>", "▁a", "b", "▁"], None);
        let bytes = prost::Message::encode_to_vec(&proto);
        let decoded: ModelProto = prost::Message::decode(bytes.as_slice()).unwrap();
        let t = build(&decoded).unwrap();
        // 4 specials + 3 pieces after the first three + 7 madeup words.
        assert_eq!(t.get_vocab_size(true), 4 + 3 + 7);
        assert_eq!(t.token_to_id("▁a"), Some(4));
        assert_eq!(t.token_to_id("<madeupword6>"), Some(13));
        let ids = t.encode("a  b ", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![4, 6, 5, 6]);
    }

    #[test]
    fn models_that_are_not_unigram_or_too_small_are_refused() {
        let e = build(&model(&["<unk>", "<s>", "</s>", "a"], Some(2))).unwrap_err();
        assert!(e.contains("unigram"), "{e}");
        let e = build(&model(&["<unk>", "<s>", "</s>"], None)).unwrap_err();
        assert!(e.contains("3 pieces"), "{e}");
    }
}
