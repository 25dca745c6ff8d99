//! The Java library behaviours METEOR's results depend on: `String.hashCode` (the aligner keys
//! words by it, so two words with the same hash count as equal), `StringTokenizer`'s default
//! delimiters, `String.trim`, `String.split("\\|\\|\\|")` and `Double.toString` of the whole
//! numbers a statistics line holds.

/// Java's `String.hashCode()`: `s[0]*31^(n-1) + … + s[n-1]` over the UTF-16 code units, with
/// `int` overflow.
pub fn string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)))
}

/// Whether `c` is one of `StringTokenizer`'s default delimiters (`" \t\n\r\f"`).
pub fn is_tokenizer_delimiter(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{c}')
}

/// The tokens `new StringTokenizer(s)` yields.
pub fn tokens(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_tokenizer_delimiter).filter(|t| !t.is_empty())
}

/// Java's `String.trim()`: strips every character up to U+0020 from both ends.
pub fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= ' ')
}

/// Java's `s.split("\\|\\|\\|")`: the pieces between non-overlapping `|||`, found left to right,
/// with trailing empty pieces removed.
pub fn split_triple_bar(s: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = s.split("|||").collect();
    while parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts
}

/// Java's length of `s` (UTF-16 code units).
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// Java's `Double.toString(v)` for a whole number `v` (what METEOR's statistics hold): `"15.0"`,
/// and `"1.0E7"`-style scientific notation from 10^7 on.
pub fn whole_double_to_string(v: f64) -> String {
    if !v.is_finite() || v.fract() != 0.0 || v.abs() >= 1e7 {
        // Not produced for statistics of real sentences; Rust's shortest representation is
        // the closest equivalent.
        if v.is_finite() && v.abs() >= 1e7 {
            let s = format!("{v:E}");
            return match s.split_once('E') {
                Some((m, e)) if !m.contains('.') => format!("{m}.0E{e}"),
                _ => s,
            };
        }
        return format!("{v}");
    }
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_javas() {
        // Values from Java's "…".hashCode().
        assert_eq!(string_hash(""), 0);
        assert_eq!(string_hash("a"), 97);
        assert_eq!(string_hash("dog"), 99_644);
        assert_eq!(string_hash("polygenelubricants"), i32::MIN);
        // "Aa" and "BB" collide in Java.
        assert_eq!(string_hash("Aa"), string_hash("BB"));
        // A character outside the BMP counts as two code units.
        assert_eq!(string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
    }

    #[test]
    fn split_drops_trailing_empty_pieces() {
        assert_eq!(
            split_triple_bar("SCORE ||| a ||| b"),
            ["SCORE ", " a ", " b"]
        );
        assert_eq!(split_triple_bar("SCORE ||| a|||"), ["SCORE ", " a"]);
        assert_eq!(split_triple_bar("a||||b"), ["a", "|b"]);
        assert!(split_triple_bar("||||||").is_empty());
    }

    #[test]
    fn doubles_print_as_java_does() {
        assert_eq!(whole_double_to_string(15.0), "15.0");
        assert_eq!(whole_double_to_string(0.0), "0.0");
        assert_eq!(whole_double_to_string(1e7), "1.0E7");
        assert_eq!(whole_double_to_string(12_345_678.0), "1.2345678E7");
    }

    #[test]
    fn trim_and_tokens_use_javas_sets() {
        assert_eq!(trim("\u{1} a b\u{0} "), "a b");
        assert_eq!(trim("\u{a0}a"), "\u{a0}a");
        let t: Vec<&str> = tokens(" a\tb\u{b}c\u{c}d\r\ne ").collect();
        assert_eq!(t, ["a", "b\u{b}c", "d", "e"]);
    }
}
