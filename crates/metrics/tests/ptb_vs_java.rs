//! The Rust PTB tokenizer against the real Stanford CoreNLP 3.4.1 `PTBTokenizer` (the jar that
//! pycocoevalcap ships) on a large deterministic set of adversarial caption-like strings.
//! Runs where Java and pycocoevalcap are installed; fails in CI if they are not.

mod common;

use std::process::Command;

use common::{scratch_dir, tools, Rng};
use smallcap_metrics::ptb_tokenizer::tokenize_document;

const WORDS: &[&str] = &[
    "a",
    "man",
    "The",
    "dog",
    "isn't",
    "can't",
    "won't",
    "cannot",
    "gonna",
    "I'm",
    "they're",
    "we've",
    "he'll",
    "she'd",
    "it's",
    "man's",
    "dogs'",
    "o'clock",
    "y'all",
    "'tis",
    "'twas",
    "U.S.",
    "U.S",
    "Mr.",
    "Dr",
    "Inc.",
    "Co.",
    "etc.",
    "e.g.",
    "i.e.",
    "a.m.",
    "p.m.",
    "Jan.",
    "No.",
    "fig.",
    "vs.",
    "St.",
    "Ph.D.",
    "A.",
    "x.",
    "e-mail",
    "well-known",
    "3-D",
    "t-shirt",
    "co-op",
    "10",
    "3.5",
    "1,000",
    "2nd",
    "1/2",
    "3 1/2",
    "12/25/2009",
    "(555) 123-4567",
    "555-1234",
    "+1",
    "-5",
    "$5",
    "US$",
    "#1",
    "50%",
    "&",
    "&amp;",
    "AT&T",
    "S&P",
    "c++",
    "C#",
    "http://x.com/a?b=c",
    "www.example.org",
    "foo.com",
    "a@b.com",
    "@user",
    "#tag",
    "<b>",
    "</i>",
    "<a href='x'>",
    "...",
    "..",
    ". . .",
    "--",
    "---",
    "-",
    "''",
    "``",
    "\"",
    "'",
    "`",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "<",
    ">",
    ":)",
    ";-)",
    ":-(",
    "=D",
    "^_^",
    "o_o",
    "*",
    "**",
    "/",
    "\\",
    "|",
    "~",
    "^",
    "=",
    "!",
    "?",
    "!?",
    "?!",
    "!!!",
    ",",
    ";",
    ":",
    "_",
    "@",
    "#",
    "é",
    "café",
    "naïve",
    "’",
    "‘",
    "“",
    "”",
    "—",
    "–",
    "…",
    "½",
    "¼",
    "£",
    "€",
    "¢",
    "¥",
    "°",
    "×",
    "\u{a0}",
    "\u{2009}",
    "ß",
    "İ",
    "ı",
    "ΑΒΓ",
    "ſ",
    "K",
    "日本",
    "😀",
    "\u{ad}",
    "\u{200b}",
    "\u{feff}",
    "\t",
    "1990s",
    "'90s",
    "’90s",
    "mid-1990s",
    "ol'",
    "li'l",
    "c'mon",
    "O'Neil",
    "d'Arc",
    "l'amour",
    "Dunkin'",
    "somethin'",
    "rock'n'roll",
    "N'T",
    "cont'd",
    "pt.",
    "ltd",
    "gimme",
    "lemme",
    "wanna",
    "gotta",
    "fo'c'sle",
    "Sino-U.S",
    "non-U.S",
    "a.k.a.",
    "C.D.s",
    "-LRB-",
    "-rrb-",
    "pro-",
    "anti-",
    "¿",
    "¡",
    "§",
    "©",
    "®",
    "™",
    "→",
    "∀",
    "·",
    "•",
];

const PUNCT: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

// Capital sigma is left out: Java lower-cases it to final sigma by the context of its word
// break iterator, which `push_lowercase` only approximates (see the module documentation).

/// Characters for "soup" strings: printable ASCII weighted towards punctuation, white space,
/// line-break-like characters and a few non-ASCII letters, quotes and symbols.
const SOUP: &[char] = &[
    'a', 'b', 'e', 'n', 's', 't', 'A', 'S', 'T', 'X', '0', '1', '5', '9', ' ', ' ', ' ', '.', '.',
    ',', '\'', '\'', '"', '`', '-', '-', '(', ')', '&', ';', ':', '!', '?', '/', '\\', '$', '%',
    '#', '@', '*', '<', '>', '=', '_', '+', '[', ']', '{', '}', '|', '~', '^', '\u{85}', '\u{a0}',
    '\u{ad}', '\u{2019}', '\u{201c}', '\u{2026}', '\u{2013}', 'é', 'ß', '\u{1}', '\u{7f}',
];

fn random_caption(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.chance(0.03) {
        // Any BMP characters (no surrogates, no capital sigma), to probe the Unicode tables.
        let len = 1 + rng.below(12);
        return (0..len)
            .filter_map(|_| char::from_u32(rng.below(0x10000) as u32))
            .filter(|&c| c != '\u{3A3}')
            .collect();
    }
    if rng.chance(0.2) {
        let len = rng.below(40);
        return (0..len).map(|_| *rng.pick(SOUP)).collect();
    }
    let pieces = 1 + rng.below(12);
    for _ in 0..pieces {
        match rng.below(10) {
            0..=5 => s.push_str(rng.pick_str(WORDS)),
            6 => {
                let c = PUNCT.as_bytes()[rng.below(PUNCT.len())] as char;
                s.push(c);
            }
            7 => {
                let len = 1 + rng.below(6);
                for _ in 0..len {
                    let c = match rng.below(4) {
                        0 => (b'A' + rng.below(26) as u8) as char,
                        1 => (b'0' + rng.below(10) as u8) as char,
                        _ => (b'a' + rng.below(26) as u8) as char,
                    };
                    s.push(c);
                }
            }
            8 => s.push_str(rng.pick_str(&["  ", " . ", "! ", "?", ". ", ", "])),
            _ => {}
        }
        if rng.chance(0.75) {
            s.push(' ');
        }
    }
    s
}

#[test]
fn rust_tokenizer_matches_corenlp_3_4_1_on_adversarial_strings() {
    let Some(t) = tools("rust_tokenizer_matches_corenlp_3_4_1_on_adversarial_strings") else {
        return;
    };
    let n: usize = std::env::var("SMALLCAP_PTB_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed = std::env::var("SMALLCAP_PTB_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_2023);
    let mut rng = Rng(seed);
    let captions: Vec<String> = (0..n).map(|_| random_caption(&mut rng)).collect();
    // As pycocoevalcap builds the document: newlines inside captions become spaces.
    let doc = captions
        .iter()
        .map(|c| c.replace('\n', " "))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = scratch_dir("ptb");
    let input = dir.join("captions.txt");
    std::fs::write(&input, &doc).expect("write input");
    let jar = t.toolkit_dir.join("tokenizer/stanford-corenlp-3.4.1.jar");
    let out = Command::new(&t.java)
        .arg("-cp")
        .arg(&jar)
        .args([
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
        ])
        .arg(&input)
        .output()
        .expect("run the CoreNLP tokenizer");
    assert!(
        out.status.success(),
        "tokenizer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let java_lines: Vec<String> = String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .split('\n')
        .map(str::to_owned)
        .collect();
    let rust_lines = tokenize_document(&doc);
    let _ = std::fs::remove_dir_all(&dir);

    let mut diffs = Vec::new();
    for (i, (j, r)) in java_lines.iter().zip(&rust_lines).enumerate() {
        if j != r {
            diffs.push(format!(
                "line {i}: input {:?}\n  java {j:?}\n  rust {r:?}",
                captions.get(i).map(String::as_str).unwrap_or("?")
            ));
        }
    }
    assert_eq!(java_lines.len(), rust_lines.len(), "line counts differ");
    assert!(
        diffs.is_empty(),
        "{} of {} lines differ; first ones:\n{}",
        diffs.len(),
        java_lines.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
