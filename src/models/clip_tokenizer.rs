//! OpenAI CLIP's byte-level BPE tokenizer, reproducing `clip.tokenize(texts, context_length=77,
//! truncate)`: clean-up (`clip_text_clean::clip_clean`), CLIP's pre-tokenizer regex, BPE with
//! the 48,894 merges of `bpe_simple_vocab_16e6.txt.gz` (vendored from openai/CLIP, MIT, in
//! `assets/`), `<|startoftext|>` (49406) … `<|endoftext|>` (49407), zero padding.

use super::clip_text_clean::clip_clean;
use crate::error::{Error, Result};
use flate2::read::GzDecoder;
use regex::Regex;
use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

/// Vocabulary size.
pub const VOCAB_SIZE: usize = 49408;
/// `<|startoftext|>`.
pub const SOT: u32 = 49406;
/// `<|endoftext|>`.
pub const EOT: u32 = 49407;
/// CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;
const N_MERGES: usize = 49152 - 256 - 2;

static VOCAB_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// GPT-2/CLIP `bytes_to_unicode`: the printable-byte ordering; returns (byte → char, byte → id).
fn byte_tables() -> ([char; 256], [u32; 256]) {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut ch = ['\0'; 256];
    let mut id = [0u32; 256];
    for (i, (&b, &c)) in bs.iter().zip(&cs).enumerate() {
        ch[b as usize] = char::from_u32(c).expect("valid");
        id[b as usize] = i as u32;
    }
    (ch, id)
}

/// The CLIP tokenizer.
#[derive(Debug)]
pub struct ClipTokenizer {
    byte_id: [u32; 256],
    /// (left, right) → (rank, merged id)
    merges: HashMap<(u32, u32), (u32, u32)>,
    decoder: Vec<String>,
    byte_decoder: HashMap<char, u8>,
    pattern: Regex,
}

impl ClipTokenizer {
    /// Builds the tokenizer from the vendored vocabulary.
    pub fn new() -> Result<Self> {
        let mut text = String::new();
        GzDecoder::new(VOCAB_GZ)
            .read_to_string(&mut text)
            .map_err(|e| Error::Input(format!("embedded CLIP vocabulary: {e}")))?;
        Self::from_merges_text(&text)
    }

    /// Builds the tokenizer from the (decompressed) text of a CLIP merges file.
    pub(crate) fn from_merges_text(text: &str) -> Result<Self> {
        let (byte_ch, byte_id) = byte_tables();
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < N_MERGES + 1 {
            return Err(Error::Input(format!(
                "CLIP merges file has {} lines, needs at least {}",
                lines.len(),
                N_MERGES + 1
            )));
        }
        let mut vocab: Vec<String> = Vec::with_capacity(VOCAB_SIZE);
        let mut by_id: Vec<char> = vec!['\0'; 256];
        for b in 0..256 {
            by_id[byte_id[b] as usize] = byte_ch[b];
        }
        vocab.extend(by_id.iter().map(|c| c.to_string()));
        vocab.extend(by_id.iter().map(|c| format!("{c}</w>")));
        let mut pairs = Vec::with_capacity(N_MERGES);
        for (i, line) in lines[1..=N_MERGES].iter().enumerate() {
            let mut it = line.split_whitespace();
            match (it.next(), it.next(), it.next()) {
                (Some(a), Some(b), None) => {
                    vocab.push(format!("{a}{b}"));
                    pairs.push((a, b));
                }
                _ => {
                    return Err(Error::Input(format!(
                        "CLIP merges file line {}: \"{line}\" is not two symbols",
                        i + 2
                    )))
                }
            }
        }
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        let encoder: HashMap<&str, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i as u32))
            .collect();
        let mut merges = HashMap::with_capacity(N_MERGES);
        for (rank, (a, b)) in pairs.iter().enumerate() {
            let (Some(&x), Some(&y)) = (encoder.get(a), encoder.get(b)) else {
                return Err(Error::Input(format!(
                    "CLIP merge {rank} (\"{a} {b}\") uses a symbol not in the vocabulary"
                )));
            };
            merges
                .entry((x, y))
                .or_insert((rank as u32, (512 + rank) as u32));
        }
        let byte_decoder = (0..256).map(|b| (byte_ch[b], b as u8)).collect();
        let pattern = Regex::new(
            r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .expect("valid regex");
        Ok(ClipTokenizer {
            byte_id,
            merges,
            decoder: vocab,
            byte_decoder,
            pattern,
        })
    }

    /// A shared instance (built once).
    pub fn global() -> &'static ClipTokenizer {
        static T: OnceLock<ClipTokenizer> = OnceLock::new();
        T.get_or_init(|| ClipTokenizer::new().expect("the embedded CLIP vocabulary is valid"))
    }

    fn bpe(&self, token: &[u8], out: &mut Vec<u32>) {
        let mut word: Vec<u32> = token.iter().map(|&b| self.byte_id[b as usize]).collect();
        if let Some(last) = word.last_mut() {
            *last += 256; // the "</w>" variant
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(r, id)| (r, w[0], w[1], id))
                })
                .min_by_key(|m| m.0);
            let Some((_, a, b, id)) = best else { break };
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    next.push(id);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        out.extend_from_slice(&word);
    }

    /// BPE ids of `text` after CLIP's clean-up, without `<|startoftext|>`/`<|endoftext|>`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let clean = clip_clean(text);
        let mut out = Vec::new();
        for m in self.pattern.find_iter(&clean) {
            match m.as_str() {
                "<|startoftext|>" => out.push(SOT),
                "<|endoftext|>" => out.push(EOT),
                t => self.bpe(t.as_bytes(), &mut out),
            }
        }
        out
    }

    /// `clip.tokenize([text], context_length, truncate)[0]`: SOT + ids + EOT, zero-padded to
    /// `context_length`. Too long: an error, or with `truncate` the first `context_length` ids with
    /// the last one replaced by EOT.
    pub fn tokenize(&self, text: &str, context_length: usize, truncate: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(context_length);
        ids.push(SOT);
        ids.extend(self.encode(text));
        ids.push(EOT);
        if ids.len() > context_length {
            if !truncate || context_length == 0 {
                let shown: String = text.chars().take(80).collect();
                return Err(Error::Input(format!(
                    "text \"{shown}\" is {} tokens, longer than the context length {context_length}",
                    ids.len()
                )));
            }
            ids.truncate(context_length);
            ids[context_length - 1] = EOT;
        }
        ids.resize(context_length, 0);
        Ok(ids)
    }

    /// [`ClipTokenizer::tokenize`] for each text.
    pub fn tokenize_batch(
        &self,
        texts: &[&str],
        context_length: usize,
        truncate: bool,
    ) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| self.tokenize(t, context_length, truncate))
            .collect()
    }

    /// CLIP's `decode`: ids back to text (`</w>` → space).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if let Some(s) = self.decoder.get(id as usize) {
                for c in s.chars() {
                    if let Some(&b) = self.byte_decoder.get(&c) {
                        bytes.push(b);
                    } else {
                        bytes.extend_from_slice(c.to_string().as_bytes());
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }
}
