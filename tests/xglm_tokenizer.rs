//! XGLM's SentencePiece tokenizer against the reference's own (`AutoTokenizer` of transformers
//! 4.21.1, which gives `XGLMTokenizerFast` for `xglm-tiny/tokenizer`), run in the test from
//! `$SMALLCAP_PYTHON` (scripts/test installs transformers 4.21.1 with tokenizers 0.12.1 there):
//! ids with the prepended `</s>` and decoded text for 3,000 random strings in many scripts
//! (German, French, Chinese, Japanese, Russian, Arabic, Greek, emoji, combining marks, the
//! characters NFKC rewrites, runs of spaces and newlines, the special tokens inside text), and
//! retrieval prompts with German, French and Chinese captions; then the same through the
//! `tokenizer.json` that `save_pretrained` writes. Outside CI the test skips when the reference
//! tokenizer cannot be run; under CI that fails it.

mod common;

use std::path::Path;
use std::process::Command;

use common::decoder_pack::decoder_pack;
use smallcap::{prompt, Tokenizer};
use smallcap_util::rng::SplitMix64;

/// Runs the reference tokenizer of `dir` over `texts`: per text its `encode` ids and the
/// `decode` of those ids; also writes `save_pretrained` into `saved`.
const REFERENCE: &str = r#"
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
assert type(tok).__name__ == "XGLMTokenizerFast", type(tok).__name__
texts = json.load(open(sys.argv[2], encoding="utf-8"))
out = []
for t in texts:
    ids = tok.encode(t)
    out.append({"ids": ids, "decoded": tok.decode(ids)})
json.dump(out, open(sys.argv[3], "w", encoding="utf-8"), ensure_ascii=False)
tok.save_pretrained(sys.argv[4])
"#;

#[derive(serde::Deserialize)]
struct Encoded {
    ids: Vec<u32>,
    decoded: String,
}

/// The reference's results, or `None` (after saying so) where it cannot run outside CI.
fn reference(dir: &Path, texts: &[String], saved: &Path) -> Option<Vec<Encoded>> {
    let python = std::env::var("SMALLCAP_PYTHON").unwrap_or_else(|_| "python3".into());
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("texts.json");
    let output = tmp.path().join("out.json");
    std::fs::write(&input, serde_json::to_string(texts).unwrap()).unwrap();
    let run = Command::new(&python)
        .args(["-c", REFERENCE])
        .arg(dir)
        .arg(&input)
        .arg(&output)
        .arg(saved)
        .env("TRANSFORMERS_OFFLINE", "1")
        .output();
    let failure = match run {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).into_owned()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = failure {
        let msg = format!(
            "the reference tokenizer (transformers 4.21.1 in {python}; set SMALLCAP_PYTHON) did not run: {why}"
        );
        assert!(std::env::var_os("CI").is_none(), "under CI: {msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    let text = std::fs::read_to_string(&output).unwrap();
    Some(serde_json::from_str(&text).unwrap())
}

/// Pieces strings are drawn from: words and characters of several scripts, the characters NFKC
/// rewrites, whitespace, punctuation, and the tokenizer's special tokens.
const POOL: &[&str] = &[
    "a",
    "dog",
    "cat",
    "sitting",
    "on",
    "the",
    "table",
    "This",
    "image",
    "shows",
    "Similar",
    "images",
    "show",
    "Ein",
    "Hund",
    "läuft",
    "am",
    "Strand",
    "Straße",
    "Mädchen",
    "Fußball",
    "Un",
    "chat",
    "est",
    "assis",
    "sur",
    "une",
    "table",
    "été",
    "garçon",
    "Noël",
    "ça",
    "œuvre",
    "一只",
    "猫",
    "坐在",
    "桌子上",
    "。",
    "狗",
    "在",
    "海滩",
    "上",
    "跑",
    "日本語",
    "の",
    "写真",
    "Собака",
    "бежит",
    "по",
    "пляжу",
    "كلب",
    "يركض",
    "σκύλος",
    "🐶",
    "👩‍👩‍👧",
    "🏳️‍🌈",
    "e\u{301}",
    "n\u{303}",
    "\u{301}",
    "ｆｕｌｌ",
    "ﬁ",
    "①",
    "㎏",
    "Ⅻ",
    "ｶﾀｶﾅ",
    "\u{ff01}",
    "\u{2126}",
    "\u{212b}",
    "x\u{200b}y",
    "\u{feff}",
    "\u{a0}",
    "\u{3000}",
    "\u{2009}",
    " ",
    " ",
    " ",
    "  ",
    "   ",
    "\n",
    "\n\n",
    "\t",
    "\r\n",
    ".",
    ",",
    "!",
    "?",
    "'",
    "\"",
    "-",
    "(",
    ")",
    ":",
    ";",
    "n't",
    "'s",
    "…",
    "«",
    "»",
    "„",
    "“",
    "0",
    "7",
    "42",
    "3.5",
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "<madeupword0>",
    "<madeupword6>",
    "<s",
    "s>",
    "▁",
    "▁▁",
    "A",
    "Z",
    "q",
    "xyz",
    "ÄÖÜ",
    "ÀÉÎÕÛ",
];

fn random_texts(n: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| {
            let parts = 1 + (rng.next_u64() % 12) as usize;
            (0..parts)
                .map(|_| POOL[(rng.next_u64() % POOL.len() as u64) as usize])
                .collect::<String>()
        })
        .collect()
}

/// Retrieval prompts with captions in German, French and Chinese, as infer.py builds them.
fn multilingual_prompts() -> Vec<String> {
    let caps: Vec<String> = [
        "Ein Hund läuft am Strand.",
        "Un chat est assis sur une table",
        "一只猫坐在桌子上。",
        "Zwei Männer reiten auf Pferden am Strand",
        "Une femme regarde un grand bâtiment.",
        "两个男人在海滩上骑马",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    vec![
        prompt::prompt_text(Some(&caps[..4]), 4),
        prompt::prompt_text(Some(&caps[2..]), 4),
        prompt::prompt_text(Some(&caps[..2]), 2),
        prompt::prompt_text(None, 4),
    ]
}

fn compare(label: &str, tok: &Tokenizer, texts: &[String], want: &[Encoded]) {
    let mut mismatches = Vec::new();
    for (text, w) in texts.iter().zip(want) {
        let ids = tok.encode(text).unwrap();
        let decoded = tok.decode(&w.ids).unwrap();
        if ids != w.ids || decoded != w.decoded {
            mismatches.push(format!(
                "{text:?}: ids {ids:?} vs {:?}; decoded {decoded:?} vs {:?}",
                w.ids, w.decoded
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{label}: {} of {} texts differ from the reference, e.g.\n{}",
        mismatches.len(),
        texts.len(),
        mismatches[..mismatches.len().min(5)].join("\n")
    );
}

#[test]
fn xglm_tokenizer_equals_the_reference_on_multilingual_text() {
    let Some(pack) = decoder_pack("xglm-tiny") else {
        return;
    };
    let mut texts = random_texts(3000, 17);
    texts.extend(multilingual_prompts());
    texts.push(String::new());
    let saved = tempfile::tempdir().unwrap();
    let Some(want) = reference(&pack.path("tokenizer"), &texts, saved.path()) else {
        return;
    };
    let tok = Tokenizer::from_dir(&pack.path("tokenizer")).unwrap();
    assert_eq!(
        tok.kind(),
        smallcap::tokenizer::TokenizerKind::SentencePiece
    );
    compare("sentencepiece.bpe.model", &tok, &texts, &want);

    // The same tokenizer from the tokenizer.json that save_pretrained wrote (as hub repos have
    // it), without the SentencePiece model.
    let json_only = tempfile::tempdir().unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(saved.path().join(f), json_only.path().join(f)).unwrap();
    }
    let from_json = Tokenizer::from_dir(json_only.path()).unwrap();
    assert_eq!(
        from_json.kind(),
        smallcap::tokenizer::TokenizerKind::SentencePiece
    );
    compare("tokenizer.json", &from_json, &texts, &want);
}
