//! PTB tokenisation exactly as pycocoevalcap 1.2 does it, in Rust.
//!
//! pycocoevalcap's `PTBTokenizer.tokenize` replaces `\n` inside each caption by a space, joins
//! all captions with `\n`, runs Stanford CoreNLP 3.4.1's
//! `edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase` over that text, splits the
//! output on `\n`, pairs the lines with the captions (Python `zip`, so extra lines are dropped and
//! missing ones leave captions out), and drops the tokens listed in [`PUNCTUATIONS`].
//! [`tokenize_captions`] reproduces all of it; [`tokenize_document`] is the Java program's part.
//!
//! Quirks that are the toolkit's and are kept: tokens are lower-cased *after* bracket escaping, so
//! `(` survives as `-lrb-` (only the upper-case `-LRB-` is in the punctuation list); a caption that
//! contains another line-break character (`\r`, U+000B, U+000C, U+2028, U+2029) makes the tokenizer
//! start a new output line, which shifts every later caption onto the wrong image
//! ([`TokenizedCaptions::line_count`] lets callers detect it).
//!
//! Known residual differences from the jar: capital sigma's final form follows Java's word-break
//! context only approximately (see `push_lowercase`), and lower-casing uses Rust's Unicode tables
//! where the jar uses those of the JVM running it (Unicode 13 for Java 17), which matters only for
//! characters whose case mapping was added later. The letter, digit and upper-case classes were
//! checked against the jar for every BMP character (see `unicode.rs`).

mod lexer;
mod regex;
mod unicode;

use std::sync::{Mutex, OnceLock};

use crate::pycompat::py_rstrip;
use lexer::{Lexer, Token};

/// The tokens pycocoevalcap removes after PTB tokenisation (exact, case-sensitive matches).
pub const PUNCTUATIONS: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Idle lexers (each keeps its lazily built automata), so that concurrent callers each get one.
fn pool() -> &'static Mutex<Vec<Lexer>> {
    static POOL: OnceLock<Mutex<Vec<Lexer>>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(Vec::new()))
}

fn with_lexer<T>(f: impl FnOnce(&mut Lexer) -> T) -> T {
    let idle = pool().lock().unwrap_or_else(|p| p.into_inner()).pop();
    // The rule table is a compile-time constant covered by unit tests, so a failure here is a
    // bug in this crate, not something input can cause.
    let mut lexer = idle.unwrap_or_else(|| {
        Lexer::new().unwrap_or_else(|e| panic!("PTB rule table is invalid: {}", e.0))
    });
    let out = f(&mut lexer);
    pool().lock().unwrap_or_else(|p| p.into_inner()).push(lexer);
    out
}

/// What `java edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase FILE` prints for a
/// file whose content is `text`, split into lines on `\n` (Python's `str.split('\n')`).
///
/// Each line is the line's tokens, lower-cased (`Locale.ENGLISH`), separated by single spaces.
pub fn tokenize_document(text: &str) -> Vec<String> {
    let units: Vec<u16> = text.encode_utf16().collect();
    let mut out = String::with_capacity(text.len() + 16);
    let mut begin_line = true;
    with_lexer(|lexer| {
        lexer.lex(&units, |token| match token {
            Token::Newline => {
                out.push('\n');
                begin_line = true;
            }
            Token::Word(word) => {
                if !begin_line {
                    out.push(' ');
                }
                begin_line = false;
                push_lowercase(&mut out, &word);
            }
        })
    });
    out.split('\n').map(str::to_owned).collect()
}

/// Java's `String.toLowerCase(Locale.ENGLISH)`: Unicode lower-casing in which capital sigma
/// becomes final sigma when a cased letter precedes it and none follows it within the same
/// "word" as Java's word `BreakIterator` sees it, where digits, marks, uncased letters and
/// word-internal punctuation (`'`, `"`, `.`, `_`, dashes, soft hyphen) do not end a word (Rust's
/// own rule looks only at the adjacent characters).
fn push_lowercase(out: &mut String, word: &str) {
    if word.is_ascii() {
        out.extend(word.chars().map(|c| c.to_ascii_lowercase()));
        return;
    }
    if !word.contains('\u{3A3}') {
        out.push_str(&word.to_lowercase());
        return;
    }
    let chars: Vec<char> = word.chars().collect();
    let cased = |c: char| c.is_lowercase() || c.is_uppercase();
    let in_word = |c: &&char| {
        c.is_alphanumeric()
            || matches!(**c, '\'' | '"' | '.' | '_' | '-' | '\u{AD}' | '\u{2027}'
                | '\u{2010}'..='\u{2015}' | '\u{300}'..='\u{36F}')
    };
    for (i, &c) in chars.iter().enumerate() {
        if c != '\u{3A3}' {
            out.extend(c.to_lowercase());
            continue;
        }
        let before = chars[..i]
            .iter()
            .rev()
            .take_while(in_word)
            .any(|&c| cased(c));
        let after = chars[i + 1..].iter().take_while(in_word).any(|&c| cased(c));
        out.push(if before && !after {
            '\u{3C2}'
        } else {
            '\u{3C3}'
        });
    }
}

/// Captions after pycocoevalcap's tokenisation, in input order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedCaptions {
    /// One entry per caption that received a tokenizer line (`zip` semantics): normally all.
    pub captions: Vec<String>,
    /// How many lines the tokenizer printed; differs from the number of captions only when a
    /// caption contained a line-break character, in which case the toolkit misaligns captions.
    pub line_count: usize,
}

/// pycocoevalcap's `PTBTokenizer.tokenize` over a flat list of captions (in the order of its
/// dictionary walk), including the removal of [`PUNCTUATIONS`].
pub fn tokenize_captions<S: AsRef<str>>(captions: &[S]) -> TokenizedCaptions {
    let mut doc = String::new();
    for (i, c) in captions.iter().enumerate() {
        if i > 0 {
            doc.push('\n');
        }
        doc.push_str(&c.as_ref().replace('\n', " "));
    }
    let lines = tokenize_document(&doc);
    let line_count = lines.len();
    let captions = lines
        .iter()
        .take(captions.len())
        .map(|line| remove_punctuation(line))
        .collect();
    TokenizedCaptions {
        captions,
        line_count,
    }
}

/// `' '.join(w for w in line.rstrip().split(' ') if w not in PUNCTUATIONS)`.
pub fn remove_punctuation(line: &str) -> String {
    let kept: Vec<&str> = py_rstrip(line)
        .split(' ')
        .filter(|w| !PUNCTUATIONS.contains(w))
        .collect();
    kept.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_lowercased_and_punctuation_dropped() {
        let t = tokenize_captions(&["The plate (in the background) .", "a man's car...", ""]);
        assert_eq!(
            t.captions,
            [
                "the plate -lrb- in the background -rrb-",
                "a man 's car",
                ""
            ]
        );
        assert_eq!(t.line_count, 3);
    }

    #[test]
    fn a_carriage_return_adds_a_line_as_in_the_toolkit() {
        let t = tokenize_captions(&["a\rb", "c"]);
        assert_eq!(t.line_count, 3);
        assert_eq!(t.captions, ["a", "b"]);
    }
}
