//! METEOR's `-norm` text normalisation for English (`Normalizer.normalizeLine` with punctuation
//! kept): a Moses-style tokenisation with METEOR's additions (quote and dash normalisation,
//! dashes between words split, dots of mixed abbreviations dropped) and the English
//! nonbreaking prefixes, which come from the jar's `nonbreaking/english.prefixes`.
//!
//! Java's regular expressions are written here with the classes they denote in Java (`\s`,
//! `\p{Digit}` and `\p{Lower}` are ASCII-only there).

use std::collections::HashMap;

use regex::Regex;

use super::java;

/// The letters METEOR's normaliser knows (Latin-1, Latin Extended-A parts, Cyrillic, phonetic).
const ALPHA: &str = r"A-Za-z\x{160}\x{17d}\x{161}\x{17e}\x{178}\x{c0}-\x{d6}\x{d8}-\x{f6}\x{f8}-\x{17e}\x{400}-\x{4ff}\x{500}-\x{527}\x{a640}-\x{a66e}\x{a67e}-\x{a697}\x{1d00}-\x{1d7f}";
/// Java's `\s`.
const JAVA_SPACE: &str = r"\t\n\x0B\x0C\r ";

/// How a nonbreaking prefix keeps its dot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prefix {
    /// Always (`Mr.`).
    Any,
    /// Only before a number (`No. 5`).
    NumericOnly,
}

/// The English normaliser, compiled once.
pub struct Normalizer {
    sep_other: Regex,
    multi_dot: Regex,
    multi_dot2: Regex,
    comma: [Regex; 3],
    quote: Regex,
    quote2: Regex,
    rm_dash: Regex,
    cont: [Regex; 4],
    cont_digit_s: Regex,
    white: Regex,
    prefixes: HashMap<String, Prefix>,
}

fn re(pattern: &str) -> Regex {
    // The patterns are constants of this module; a failure is a bug caught by its tests.
    Regex::new(pattern).unwrap_or_else(|e| panic!("METEOR normaliser pattern {pattern}: {e}"))
}

fn is_alpha(c: char) -> bool {
    matches!(c,
        'A'..='Z' | 'a'..='z' | '\u{160}' | '\u{17d}' | '\u{161}' | '\u{17e}' | '\u{178}'
        | '\u{c0}'..='\u{d6}' | '\u{d8}'..='\u{f6}' | '\u{f8}'..='\u{17e}' | '\u{400}'..='\u{4ff}'
        | '\u{500}'..='\u{527}' | '\u{a640}'..='\u{a66e}' | '\u{a67e}'..='\u{a697}'
        | '\u{1d00}'..='\u{1d7f}')
}

impl Normalizer {
    /// Builds the normaliser from the text of `nonbreaking/english.prefixes`.
    pub fn new(prefix_file: &str) -> Normalizer {
        let alnum = format!("0-9{ALPHA}");
        let mut prefixes = HashMap::new();
        for line in prefix_file.lines() {
            let mut toks = java::tokens(line);
            let Some(pre) = toks.next() else { continue };
            if pre.starts_with('#') {
                continue;
            }
            let kind = match toks.next() {
                Some("#NUMERIC_ONLY#") => Prefix::NumericOnly,
                _ => Prefix::Any,
            };
            prefixes.insert(pre.to_owned(), kind);
        }
        Normalizer {
            sep_other: re(&format!("([^{alnum}{JAVA_SPACE}.'`,\\-\u{2018}\u{2019}])")),
            multi_dot: re(r"\.(\.+)"),
            multi_dot2: re(r"DOTMULTI\.([^.])"),
            comma: [
                re("([^0-9]),([^0-9])"),
                re("([0-9]),([^0-9])"),
                re("([^0-9]),([0-9])"),
            ],
            quote: re("[`\u{2018}\u{2019}]"),
            quote2: re("[\u{201c}\u{201d}]|''"),
            rm_dash: re(&format!("([{alnum}.])-([{alnum}])")),
            cont: [
                re(&format!("([^{ALPHA}])'([^{ALPHA}])")),
                re(&format!("([^{ALPHA}0-9])'([{ALPHA}])")),
                re(&format!("([{ALPHA}])'([^{ALPHA}])")),
                re(&format!("([{ALPHA}])'([{ALPHA}])")),
            ],
            cont_digit_s: re("([0-9])'(s)"),
            white: re("[  \u{2000}-\u{200a}\u{202f}\u{205f}\u{3000}\u{a0}]+"),
            prefixes,
        }
    }

    /// `Normalizer.normalizeLine(line, LANG_EN, keepPunctuation = true)`.
    pub fn normalize(&self, line: &str) -> String {
        // Fast path: lowercase ASCII letters, digits and spaces (what most tokenised captions
        // are) meet none of the rules but the white-space normalisation.
        if line
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b' ')
        {
            return line
                .split(' ')
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
        }
        self.normalize_rules(line)
    }

    fn normalize_rules(&self, line: &str) -> String {
        let mut w = format!(" {line} ");
        w = self.sep_other.replace_all(&w, " ${1} ").into_owned();

        // Escape runs of dots.
        w = self.multi_dot.replace_all(&w, " DOTMULTI${1}").into_owned();
        while w.contains("DOTMULTI.") {
            w = self
                .multi_dot2
                .replace_all(&w, "DOTDOTMULTI ${1}")
                .into_owned();
            w = w.replace("DOTMULTI.", "DOTDOTMULTI");
        }

        // Commas, except within numbers.
        for r in &self.comma {
            w = r.replace_all(&w, "${1} , ${2}").into_owned();
        }

        // Quotes and dashes.
        w = self.quote.replace_all(&w, "'").into_owned();
        w = self.quote2.replace_all(&w, " \" ").into_owned();
        w = w.replace('\u{2013}', "-").replace("--", "-");
        w = self.rm_dash.replace_all(&w, "${1} ${2}").into_owned();

        // English contractions split to the right.
        w = self.cont[0].replace_all(&w, "${1} ' ${2}").into_owned();
        w = self.cont[1].replace_all(&w, "${1} ' ${2}").into_owned();
        w = self.cont[2].replace_all(&w, "${1} ' ${2}").into_owned();
        w = self.cont[3].replace_all(&w, "${1} '${2}").into_owned();
        w = self.cont_digit_s.replace_all(&w, "${1} '${2}").into_owned();

        // Dots: kept on nonbreaking prefixes, split off otherwise.
        let words: Vec<&str> = java::tokens(&w).collect();
        let mut out = String::with_capacity(w.len() + 8);
        for (i, word) in words.iter().enumerate() {
            let next = words.get(i + 1);
            match word.strip_suffix('.').filter(|pre| !pre.is_empty()) {
                Some(pre) => {
                    let kind = self.prefixes.get(pre).copied();
                    if pre.contains('.') && pre.chars().any(is_alpha) {
                        out.push_str(&word.replace('.', ""));
                    } else if kind == Some(Prefix::Any)
                        || next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_lowercase()))
                        || (kind == Some(Prefix::NumericOnly)
                            && next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit())))
                    {
                        // Always nonbreaking, followed by a lowercase word (an unlisted
                        // abbreviation), or nonbreaking before a number: kept.
                        out.push_str(word);
                    } else {
                        out.push_str(pre);
                        out.push_str(" .");
                    }
                }
                None => out.push_str(word),
            }
            out.push(' ');
        }
        w = out;

        // Unescape runs of dots.
        while w.contains("DOTDOTMULTI") {
            w = w.replace("DOTDOTMULTI", "DOTMULTI.");
        }
        w = w.replace("DOTMULTI", ".");

        let w = self.white.replace_all(&w, " ");
        java::trim(&w).to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm() -> Normalizer {
        Normalizer::new("# comment\nMr\nNo #NUMERIC_ONLY#\n\n")
    }

    // Expected values: the jar's `edu.cmu.meteor.util.Normalizer english true` on the same lines.
    #[test]
    fn plain_captions_pass_through() {
        let n = norm();
        assert_eq!(n.normalize("a dog on a couch"), "a dog on a couch");
        assert_eq!(n.normalize("  two  dogs\u{a0}run "), "two dogs run");
    }

    #[test]
    fn fast_path_equals_the_rules() {
        let n = norm();
        for line in [
            "a dog on a couch",
            "  two  dogs  ",
            "",
            " ",
            "1990s 2 dogs",
            "dotmulti x",
        ] {
            assert_eq!(n.normalize(line), n.normalize_rules(line), "{line:?}");
        }
    }

    #[test]
    fn punctuation_and_contractions() {
        let n = norm();
        assert_eq!(n.normalize("it's a dog's toy!"), "it 's a dog 's toy !");
        assert_eq!(n.normalize("the 1990's"), "the 1990 's");
        assert_eq!(
            n.normalize("a well-known u.s.-based man."),
            "a well known us based man ."
        );
        assert_eq!(n.normalize("1,000 dogs,cats"), "1,000 dogs , cats");
        assert_eq!(n.normalize("wait... what"), "wait ... what");
        assert_eq!(
            n.normalize("Mr. Smith and No. 5 vs No. Five"),
            "Mr. Smith and No. 5 vs No . Five"
        );
        assert_eq!(
            n.normalize("\u{201c}hi\u{201d} \u{2018}x\u{2019}"),
            "\" hi \" ' x '"
        );
        assert_eq!(n.normalize("rock 'n' roll"), "rock ' n ' roll");
        assert_eq!(n.normalize("a--b \u{2013} c"), "a b - c");
        assert_eq!(n.normalize("x....y"), "x .... y");
    }
}
