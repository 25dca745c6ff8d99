//! Tokenizes JSON-encoded texts, one per input line, with the CLIP tokenizer and prints one JSON
//! list of 77 ids per line (`truncate = true`): a tool for comparing with Python's `clip.tokenize`.

use smallcap::models::clip_tokenizer::ClipTokenizer;
use std::io::{BufRead, Write};

fn main() {
    let tok = ClipTokenizer::global();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.expect("read stdin");
        let text: String = serde_json::from_str(&line).expect("each line is a JSON string");
        let ids = tok.tokenize(&text, 77, true).expect("truncate never fails");
        writeln!(out, "{}", serde_json::to_string(&ids).expect("json")).expect("write stdout");
    }
}
