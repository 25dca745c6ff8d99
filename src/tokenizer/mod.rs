//! The decoder's tokenizer, as the reference's `AutoTokenizer` (transformers 4.21.1) encodes and
//! decodes for each decoder family:
//! - GPT-2's byte-level BPE (`GPT2TokenizerFast`), from `vocab.json` + `merges.txt` (or a
//!   `tokenizer.json`);
//! - OPT's, the same BPE with fairseq's special tokens (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3)
//!   and `add_bos_token`: the slow `GPT2Tokenizer` transformers 4.21.1 loads for
//!   `facebook/opt-*` puts `</s>` before every text it encodes with special tokens;
//! - XGLM's SentencePiece unigram model (`XGLMTokenizerFast`), from `sentencepiece.bpe.model`
//!   (or a `tokenizer.json`): see [`sentencepiece`].
//!
//! The special tokens come from the folder's `tokenizer_config.json` and
//! `special_tokens_map.json` when it has them.

pub mod sentencepiece;

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::error::{Error, Result};

/// GPT-2's only special token (also its bos/eos string).
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// The two kinds of tokenizer the decoder families use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// GPT-2's byte-level BPE (GPT-2 and OPT).
    ByteLevelBpe,
    /// A SentencePiece unigram model with fairseq's ids (XGLM).
    SentencePiece,
}

/// A decoder's tokenizer (see the module documentation).
#[derive(Clone)]
pub struct Tokenizer {
    inner: HfTokenizer,
    kind: TokenizerKind,
    /// `bos_token` (GPT-2's `<|endoftext|>` when the folder names none).
    bos_token: String,
    /// The id `encode` puts first: OPT's `</s>` (`add_bos_token`), XGLM's `</s>` (its
    /// post-processor's `</s> $A`).
    bos: Option<u32>,
    /// Where it was read from, for messages.
    dir: PathBuf,
}

/// What `tokenizer_config.json` and `special_tokens_map.json` say.
#[derive(Default)]
struct SpecialTokens {
    /// The special token strings (no-split when encoding).
    names: Vec<String>,
    /// `bos_token`.
    bos_token: Option<String>,
    /// `add_bos_token`.
    add_bos: bool,
}

/// A token in these files is a string or `{"content": …}`.
fn token_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn read_special_tokens(dir: &Path) -> Result<SpecialTokens> {
    let mut out = SpecialTokens::default();
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            msg: format!("not JSON: {e}"),
        })?;
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let Some(t) = v.get(key).and_then(token_string) {
                if key == "bos_token" {
                    out.bos_token = Some(t.clone());
                }
                if !out.names.contains(&t) {
                    out.names.push(t);
                }
            }
        }
        if let Some(b) = v.get("add_bos_token") {
            out.add_bos = b.as_bool().ok_or_else(|| Error::Tokenizer {
                path: path.clone(),
                msg: format!("add_bos_token must be true or false, found {b}"),
            })?;
        }
    }
    if out.add_bos && out.bos_token.is_none() {
        return Err(Error::Tokenizer {
            path: dir.join("tokenizer_config.json"),
            msg: "add_bos_token is true but no bos_token is named".into(),
        });
    }
    Ok(out)
}

/// The files a tokenizer folder is read from, in the order they are looked for: the BPE pair,
/// the SentencePiece model, or a `tokenizer.json`.
pub const TOKENIZER_FILES: [&str; 4] = [
    "vocab.json",
    "merges.txt",
    sentencepiece::MODEL_FILE,
    "tokenizer.json",
];

/// Whether `dir` holds a tokenizer ([`TOKENIZER_FILES`]).
pub fn is_tokenizer_dir(dir: &Path) -> bool {
    (dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file())
        || dir.join(sentencepiece::MODEL_FILE).is_file()
        || dir.join("tokenizer.json").is_file()
}

impl Tokenizer {
    /// Loads from a folder with `vocab.json` and `merges.txt`, with a SentencePiece
    /// `sentencepiece.bpe.model` (XGLM), or with `tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        if vocab.is_file() && merges.is_file() {
            return Self::from_files(&vocab, &merges);
        }
        let spm = dir.join(sentencepiece::MODEL_FILE);
        if spm.is_file() {
            let inner = sentencepiece::xglm_tokenizer(&spm)?;
            return Self::sentencepiece(inner, read_special_tokens(dir)?, dir);
        }
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let inner = HfTokenizer::from_file(&json).map_err(|e| Error::Tokenizer {
                path: json.clone(),
                msg: e.to_string(),
            })?;
            if sentencepiece::is_unigram(&inner) {
                return Self::sentencepiece(inner, read_special_tokens(dir)?, dir);
            }
            return Self::with_bos(inner, read_special_tokens(dir)?, dir);
        }
        Err(Error::Tokenizer {
            path: dir.to_path_buf(),
            msg: format!(
                "needs vocab.json and merges.txt, {} or tokenizer.json",
                sentencepiece::MODEL_FILE
            ),
        })
    }

    /// XGLM's: `</s>` before every text, `<s>` as `bos_token` (what `postprocess_preds` strips).
    fn sentencepiece(inner: HfTokenizer, specials: SpecialTokens, dir: &Path) -> Result<Self> {
        let bos = inner
            .token_to_id(sentencepiece::PREFIX_TOKEN)
            .ok_or_else(|| Error::Tokenizer {
                path: dir.to_path_buf(),
                msg: format!("{} is not in the vocabulary", sentencepiece::PREFIX_TOKEN),
            })?;
        Ok(Self {
            inner,
            kind: TokenizerKind::SentencePiece,
            bos_token: specials.bos_token.unwrap_or_else(|| "<s>".to_string()),
            bos: Some(bos),
            dir: dir.to_path_buf(),
        })
    }

    /// Builds the tokenizer from the two BPE files (and the special tokens of the folder they
    /// are in; GPT-2's `<|endoftext|>` when it names none).
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
        let mut inner = HfTokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let dir = vocab.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut specials = read_special_tokens(&dir)?;
        if specials.names.is_empty() && inner.token_to_id(ENDOFTEXT).is_some() {
            specials.names.push(ENDOFTEXT.to_string());
        }
        for name in &specials.names {
            if inner.token_to_id(name).is_none() {
                return Err(err(
                    &dir,
                    format!("special token {name:?} is not in {}", vocab.display()),
                ));
            }
        }
        let tokens: Vec<AddedToken> = specials
            .names
            .iter()
            .map(|n| AddedToken::from(n.clone(), true))
            .collect();
        let _added: usize = inner
            .add_special_tokens(tokens)
            .map_err(|e| err(&vocab.to_path_buf(), e.to_string()))?;
        Self::with_bos(inner, specials, &dir)
    }

    fn with_bos(inner: HfTokenizer, specials: SpecialTokens, dir: &Path) -> Result<Self> {
        let bos_token = specials.bos_token.unwrap_or_else(|| ENDOFTEXT.to_string());
        let bos = if specials.add_bos {
            Some(
                inner
                    .token_to_id(&bos_token)
                    .ok_or_else(|| Error::Tokenizer {
                        path: dir.to_path_buf(),
                        msg: format!("bos_token {bos_token:?} is not in the vocabulary"),
                    })?,
            )
        } else {
            None
        };
        Ok(Self {
            inner,
            kind: TokenizerKind::ByteLevelBpe,
            bos_token,
            bos,
            dir: dir.to_path_buf(),
        })
    }

    /// `bos_token`: what `postprocess_preds` strips from the front of a caption.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// Which kind of tokenizer this is.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The id `encode` puts first: OPT's and XGLM's `</s>`; none for GPT-2.
    pub fn added_bos(&self) -> Option<u32> {
        self.bos
    }

    /// The folder the tokenizer was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `tokenizer.encode(text)` of the reference: the text's ids after the bos token where the
    /// tokenizer adds one (OPT, XGLM), else exactly the text's ids (GPT-2 adds no BOS/EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        ids.extend(self.encode_plain(text)?);
        Ok(ids)
    }

    /// `tokenizer.encode(text, add_special_tokens=False)`: the text's ids alone.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                path: PathBuf::new(),
                msg: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=True)`. An id with
    /// no token (the rows OPT pads its embedding with, 50265–50271 in `facebook/opt-*`) is an
    /// error naming it, as the reference's decode fails on it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(Error::Tokenizer {
                path: self.dir.clone(),
                msg: format!(
                    "generated token id {bad} has no token in this tokenizer ({} tokens): the model's vocabulary is padded beyond it",
                    self.vocab_size()
                ),
            });
        }
        let text = self
            .inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer {
                path: PathBuf::new(),
                msg: e.to_string(),
            })?;
        Ok(clean_up_tokenization(&text))
    }

    /// The caption of a prompt and its generated ids: decoded, then `postprocess_preds`.
    pub fn caption(&self, ids: &[u32]) -> Result<String> {
        Ok(crate::prompt::postprocess(
            &self.decode(ids)?,
            &self.bos_token,
        ))
    }

    /// Checks that this tokenizer is one the decoder `cfg` was trained with: OPT's prompts start
    /// with `</s>` (`add_bos_token`, from the folder's `tokenizer_config.json`), GPT-2's with
    /// nothing, both byte-level BPE; XGLM's is a SentencePiece model whose tokens are exactly
    /// the decoder's vocabulary. No token id may lie outside the decoder's vocabulary.
    pub fn check_for(&self, cfg: &crate::config::DecoderConfig) -> Result<()> {
        use crate::config::DecoderArch;
        let bad = |msg: String| {
            Err(Error::Tokenizer {
                path: self.dir.clone(),
                msg,
            })
        };
        match (&cfg.arch, self.kind, self.bos) {
            (DecoderArch::Xglm(_), TokenizerKind::ByteLevelBpe, _) => {
                return bad(format!(
                    "the checkpoint's decoder is XGLM ({}), whose tokenizer is a SentencePiece model ({}), but this is a byte-level BPE tokenizer (GPT-2's or OPT's): give XGLM's tokenizer, as {} has it",
                    cfg.model_type(),
                    sentencepiece::MODEL_FILE,
                    crate::hub::XGLM_TOKENIZER_REPO
                ))
            }
            (DecoderArch::Gpt2 | DecoderArch::Opt(_), TokenizerKind::SentencePiece, _) => {
                return bad(format!(
                    "the checkpoint's decoder is {}, whose tokenizer is byte-level BPE, but this is a SentencePiece tokenizer (XGLM's): give the decoder's own tokenizer",
                    cfg.model_type()
                ))
            }
            (DecoderArch::Opt(_), _, None) => {
                return bad(format!(
                    "the checkpoint's decoder is OPT ({}), whose tokenizer puts </s> before every prompt, but this tokenizer adds no bos token: its folder needs OPT's tokenizer_config.json (add_bos_token, bos_token) and special_tokens_map.json, as {} has them",
                    cfg.model_type(),
                    crate::hub::OPT_TOKENIZER_REPO
                ))
            }
            (DecoderArch::Gpt2, _, Some(id)) => {
                return bad(format!(
                    "the checkpoint's decoder is GPT-2 ({}), whose tokenizer adds no bos token, but this one puts {:?} (id {id}) first (add_bos_token in tokenizer_config.json): give GPT-2's tokenizer",
                    cfg.model_type(),
                    self.bos_token
                ))
            }
            (DecoderArch::Xglm(_), _, _) if self.vocab_size() != cfg.vocab_size => {
                return bad(format!(
                    "{} tokens (the SentencePiece pieces with fairseq's specials and XGLM's 7 <madeupword>s), but the decoder's vocabulary has {}: not this checkpoint's tokenizer",
                    self.vocab_size(),
                    cfg.vocab_size
                ))
            }
            _ => {}
        }
        if self.vocab_size() > cfg.vocab_size {
            return bad(format!(
                "{} tokens, more than the decoder's vocabulary of {}: not this checkpoint's tokenizer",
                self.vocab_size(),
                cfg.vocab_size
            ));
        }
        Ok(())
    }

    /// The id of the token `text` (`.` and `!`, SmallCap's eos and pad): train.py sets
    /// `tokenizer.eos_token = '.'`, whose id is the vocabulary's entry for it
    /// (`convert_tokens_to_ids`), not what encoding the text gives (XGLM's puts `▁` before it).
    /// A token the vocabulary lacks is an error (transformers would give `<unk>`'s id).
    pub fn single_token(&self, text: &str) -> Result<u32> {
        self.inner
            .token_to_id(text)
            .ok_or_else(|| Error::Tokenizer {
                path: self.dir.clone(),
                msg: format!("{text:?} is not a token of this vocabulary"),
            })
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
