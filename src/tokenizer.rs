//! The GPT-2 byte-level BPE tokenizer, as HF `GPT2TokenizerFast` encodes and decodes, built from
//! `vocab.json` + `merges.txt` (or a `tokenizer.json`).

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// GPT-2's only special token (also its bos/eos string).
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// GPT-2's byte-level BPE (see the module documentation).
#[derive(Clone)]
pub struct Gpt2Tokenizer {
    inner: Tokenizer,
}

impl Gpt2Tokenizer {
    /// Loads from a folder with `vocab.json` and `merges.txt`, or with `tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        if vocab.is_file() && merges.is_file() {
            return Self::from_files(&vocab, &merges);
        }
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let inner = Tokenizer::from_file(&json).map_err(|e| Error::Tokenizer {
                path: json.clone(),
                msg: e.to_string(),
            })?;
            return Ok(Self { inner });
        }
        Err(Error::Tokenizer {
            path: dir.to_path_buf(),
            msg: "needs vocab.json and merges.txt (or tokenizer.json)".into(),
        })
    }

    /// Builds the tokenizer from the two BPE files.
    pub fn from_files(vocab: &Path, merges: &Path) -> Result<Self> {
        let err = |path: &PathBuf, msg: String| Error::Tokenizer {
            path: path.clone(),
            msg,
        };
        for p in [vocab, merges] {
            std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        }
        let v = vocab.to_string_lossy().to_string();
        let m = merges.to_string_lossy().to_string();
        let bpe = BPE::from_file(&v, &m).build().map_err(|e| {
            err(
                &vocab.to_path_buf(),
                format!("cannot build BPE from {v} and {m}: {e}"),
            )
        })?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let _added: usize = inner
            .add_special_tokens([AddedToken::from(ENDOFTEXT, true)])
            .map_err(|e| err(&vocab.to_path_buf(), e.to_string()))?;
        Ok(Self { inner })
    }

    /// Token ids of `text`, without special tokens (GPT-2 adds no BOS/EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                path: PathBuf::new(),
                msg: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer {
                path: PathBuf::new(),
                msg: e.to_string(),
            })?;
        Ok(clean_up_tokenization(&text))
    }

    /// The number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// transformers' `clean_up_tokenization`: removes the space before some punctuation and
/// contractions, in this order.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
