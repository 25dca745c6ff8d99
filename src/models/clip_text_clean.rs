//! The text clean-up OpenAI CLIP applies before BPE (`simple_tokenizer.py`):
//! `whitespace_clean(basic_clean(text)).lower()` with
//! `basic_clean = ftfy.fix_text → html.unescape → html.unescape → strip`.
//!
//! ftfy is reproduced as far as practical: its default fixers `fix_c1_controls`,
//! `fix_latin_ligatures`, `fix_character_width`, `uncurl_quotes`, `fix_line_breaks`,
//! `remove_terminal_escapes`, `remove_control_chars` and NFC normalisation, repeated until the
//! text no longer changes, and its `unescape_html` (semicolon-terminated entities, only when the
//! text has no `<`). Not reproduced: ftfy's mojibake repair (`fix_encoding`, e.g. "cafÃ©" →
//! "café") and its all-caps entity variants (`&EACUTE;`). `html.unescape` is exact for numeric
//! character references and for the 106 legacy entities HTML accepts without a semicolon
//! (Latin-1, `amp`, `lt`, `gt`, `quot`, …); of the other HTML5 named entities only a common subset
//! (typographic quotes, dashes, `apos`, `hellip`, `euro`, …) is known.

use regex::Regex;
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;

/// Names of U+00A0..=U+00FF in HTML, in code-point order (all accepted without a semicolon).
const LATIN1_NAMES: &str = "nbsp iexcl cent pound curren yen brvbar sect uml copy ordf laquo not \
    shy reg macr deg plusmn sup2 sup3 acute micro para middot cedil sup1 ordm raquo frac14 frac12 \
    frac34 iquest Agrave Aacute Acirc Atilde Auml Aring AElig Ccedil Egrave Eacute Ecirc Euml \
    Igrave Iacute Icirc Iuml ETH Ntilde Ograve Oacute Ocirc Otilde Ouml times Oslash Ugrave Uacute \
    Ucirc Uuml Yacute THORN szlig agrave aacute acirc atilde auml aring aelig ccedil egrave eacute \
    ecirc euml igrave iacute icirc iuml eth ntilde ograve oacute ocirc otilde ouml divide oslash \
    ugrave uacute ucirc uuml yacute thorn yuml";

/// Other legacy (semicolon-optional) entities.
const LEGACY_OTHER: &[(&str, char)] = &[
    ("amp", '&'),
    ("AMP", '&'),
    ("lt", '<'),
    ("LT", '<'),
    ("gt", '>'),
    ("GT", '>'),
    ("quot", '"'),
    ("QUOT", '"'),
    ("COPY", '\u{a9}'),
    ("REG", '\u{ae}'),
];

/// A common subset of the HTML5 entities that need a semicolon.
const SEMICOLON_ONLY: &[(&str, char)] = &[
    ("apos", '\''),
    ("hellip", '\u{2026}'),
    ("mdash", '\u{2014}'),
    ("ndash", '\u{2013}'),
    ("lsquo", '\u{2018}'),
    ("rsquo", '\u{2019}'),
    ("sbquo", '\u{201a}'),
    ("ldquo", '\u{201c}'),
    ("rdquo", '\u{201d}'),
    ("bdquo", '\u{201e}'),
    ("laquo", '\u{ab}'),
    ("lsaquo", '\u{2039}'),
    ("rsaquo", '\u{203a}'),
    ("euro", '\u{20ac}'),
    ("trade", '\u{2122}'),
    ("bull", '\u{2022}'),
    ("dagger", '\u{2020}'),
    ("Dagger", '\u{2021}'),
    ("permil", '\u{2030}'),
    ("prime", '\u{2032}'),
    ("Prime", '\u{2033}'),
    ("oelig", '\u{153}'),
    ("OElig", '\u{152}'),
    ("scaron", '\u{161}'),
    ("Scaron", '\u{160}'),
    ("Yuml", '\u{178}'),
    ("fnof", '\u{192}'),
    ("circ", '\u{2c6}'),
    ("tilde", '\u{2dc}'),
    ("ensp", '\u{2002}'),
    ("emsp", '\u{2003}'),
    ("thinsp", '\u{2009}'),
    ("zwnj", '\u{200c}'),
    ("zwj", '\u{200d}'),
    ("lrm", '\u{200e}'),
    ("rlm", '\u{200f}'),
    ("larr", '\u{2190}'),
    ("rarr", '\u{2192}'),
    ("uarr", '\u{2191}'),
    ("darr", '\u{2193}'),
    ("harr", '\u{2194}'),
    ("hearts", '\u{2665}'),
    ("infin", '\u{221e}'),
    ("ne", '\u{2260}'),
    ("le", '\u{2264}'),
    ("ge", '\u{2265}'),
    ("minus", '\u{2212}'),
];

/// A legacy entity (accepted without a semicolon).
fn legacy(name: &str) -> Option<char> {
    if let Some(i) = LATIN1_NAMES.split_whitespace().position(|n| n == name) {
        return char::from_u32(0xA0 + i as u32);
    }
    LEGACY_OTHER
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, c)| c)
}

/// Any known entity name (used with a semicolon).
fn named(name: &str) -> Option<char> {
    legacy(name).or_else(|| {
        SEMICOLON_ONLY
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, c)| c)
    })
}

/// Windows-1252 for 0x80..=0x9F (undefined bytes map to themselves, as Python's
/// `html` module and ftfy's "sloppy-windows-1252" do).
fn cp1252(c: u32) -> char {
    const T: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013,
        0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
    ];
    char::from_u32(T[(c - 0x80) as usize]).expect("valid table")
}

/// Python `html.unescape`'s treatment of a numeric character reference.
fn numeric_charref(num: Option<u32>) -> String {
    let Some(n) = num.filter(|&n| n <= 0x10FFFF) else {
        return "\u{FFFD}".into();
    };
    match n {
        0 => return "\u{FFFD}".into(),
        0x0D => return "\r".into(),
        0x80..=0x9F => return cp1252(n).to_string(),
        0xD800..=0xDFFF => return "\u{FFFD}".into(),
        _ => {}
    }
    let invalid = matches!(n, 0x1..=0x8 | 0xB | 0xE..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF)
        || (n & 0xFFFE) == 0xFFFE;
    if invalid {
        return String::new();
    }
    char::from_u32(n).map(String::from).unwrap_or_default()
}

fn parse_num(digits: &str, radix: u32) -> Option<u32> {
    // Values past 0x10FFFF all decode the same way; saturate instead of overflowing.
    let mut v: u64 = 0;
    for c in digits.chars() {
        v = (v * radix as u64 + c.to_digit(radix)? as u64).min(0x11_0000);
    }
    Some(v as u32)
}

/// Python's `html.unescape` (see the module note on which named entities are known).
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0C <&#;]{1,32};?)").expect("valid")
    });
    re.replace_all(s, |caps: &regex::Captures<'_>| {
        let body = &caps[1];
        if let Some(num) = body.strip_prefix('#') {
            let num = num.trim_end_matches(';');
            return if let Some(hex) = num.strip_prefix(['x', 'X']) {
                numeric_charref(parse_num(hex, 16))
            } else {
                numeric_charref(parse_num(num, 10))
            };
        }
        if let Some(name) = body.strip_suffix(';') {
            if let Some(c) = named(name) {
                return c.to_string();
            }
        } else if let Some(c) = legacy(body) {
            return c.to_string();
        }
        // longest legacy prefix (lengths len-1 down to 2), as Python does
        let idx: Vec<usize> = body.char_indices().map(|(i, _)| i).skip(2).collect();
        for &cut in idx.iter().rev() {
            if let Some(c) = legacy(&body[..cut]) {
                return format!("{c}{}", &body[cut..]);
            }
        }
        format!("&{body}")
    })
    .into_owned()
}

/// ftfy's `unescape_html`: only `&name;` / `&#…;` forms, replaced only when fully decoded.
fn ftfy_unescape_html(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("valid"));
    re.replace_all(s, |caps: &regex::Captures<'_>| {
        let m = &caps[0];
        let name = &m[1..m.len() - 1];
        if let Some(c) = named(name) {
            return c.to_string();
        }
        if name.starts_with('#') {
            let u = html_unescape(m);
            if !u.contains(';') {
                return u;
            }
        }
        m.to_string()
    })
    .into_owned()
}

fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{132}' => "IJ",
        '\u{133}' => "ij",
        '\u{149}' => "\u{2bc}n",
        '\u{1f1}' => "DZ",
        '\u{1f2}' => "Dz",
        '\u{1f3}' => "dz",
        '\u{1c4}' => "D\u{17d}",
        '\u{1c5}' => "D\u{17e}",
        '\u{1c6}' => "d\u{17e}",
        '\u{1c7}' => "LJ",
        '\u{1c8}' => "Lj",
        '\u{1c9}' => "lj",
        '\u{1ca}' => "NJ",
        '\u{1cb}' => "Nj",
        '\u{1cc}' => "nj",
        '\u{fb00}' => "ff",
        '\u{fb01}' => "fi",
        '\u{fb02}' => "fl",
        '\u{fb03}' => "ffi",
        '\u{fb04}' => "ffl",
        '\u{fb05}' => "\u{17f}t",
        '\u{fb06}' => "st",
        _ => return None,
    })
}

fn is_removed_control(c: char) -> bool {
    matches!(c as u32, 0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

/// One pass of ftfy's character fixers (everything but the HTML step and NFC).
fn ftfy_char_fixes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let u = c as u32;
        if (0x80..=0x9F).contains(&u) {
            out.push(cp1252(u)); // fix_c1_controls
        } else if let Some(l) = ligature(c) {
            out.push_str(l);
        } else if u == 0x3000 {
            out.push(' ');
        } else if (0xFF01..=0xFFEF).contains(&u) {
            out.extend(std::iter::once(c).nfkc()); // fix_character_width
        } else if matches!(u, 0x2BC | 0x2018..=0x201B) {
            out.push('\'');
        } else if (0x201C..=0x201F).contains(&u) {
            out.push('"');
        } else {
            out.push(c);
        }
    }
    // fix_line_breaks
    let out = out
        .replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}'], "\n");
    // remove_terminal_escapes
    static ANSI: OnceLock<Regex> = OnceLock::new();
    let ansi = ANSI.get_or_init(|| Regex::new(r"\x1b\[((?:\d|;)*)([a-zA-Z])").expect("valid"));
    let out = ansi.replace_all(&out, "");
    // remove_control_chars
    out.chars().filter(|&c| !is_removed_control(c)).collect()
}

/// `ftfy.fix_text` with its default configuration, as far as reproduced (see the module note).
pub fn ftfy_fix_text(text: &str) -> String {
    let unescape = !text.contains('<');
    let mut s = text.to_string();
    for _ in 0..16 {
        let orig = s.clone();
        if unescape {
            s = ftfy_unescape_html(&s);
        }
        s = ftfy_char_fixes(&s);
        s = s.nfc().collect();
        if s == orig {
            break;
        }
    }
    s
}

/// CLIP's `whitespace_clean`: runs of whitespace become one space; strip.
pub fn whitespace_clean(text: &str) -> String {
    static WS: OnceLock<Regex> = OnceLock::new();
    let ws = WS.get_or_init(|| Regex::new(r"\s+").expect("valid"));
    ws.replace_all(text, " ").trim().to_string()
}

/// The full CLIP clean-up: `whitespace_clean(basic_clean(text)).lower()`.
pub fn clip_clean(text: &str) -> String {
    let s = ftfy_fix_text(text);
    let s = html_unescape(&html_unescape(&s));
    whitespace_clean(s.trim()).to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_unescape_cases_from_python_semantics() {
        assert_eq!(html_unescape("a &amp; b"), "a & b");
        assert_eq!(html_unescape("&ampx"), "&x"); // legacy prefix
        assert_eq!(html_unescape("&#39;s &#x27; &#128;"), "'s ' \u{20ac}");
        assert_eq!(html_unescape("caf&eacute; &nosuch;"), "caf\u{e9} &nosuch;");
        assert_eq!(html_unescape("&#0;&#x110000;"), "\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn ftfy_subset() {
        assert_eq!(ftfy_fix_text("\u{201c}it\u{2019}s\u{201d}"), "\"it's\"");
        assert_eq!(ftfy_fix_text("\u{fb01}ne \u{ff21}\u{3000}x"), "fine A x");
        assert_eq!(ftfy_fix_text("e\u{301}"), "\u{e9}");
        assert_eq!(ftfy_fix_text("a\x1b[36mb\x07"), "ab");
    }
}
