//! The English stemmer of METEOR's stem module: Snowball's English (Porter2) stemmer, which the
//! jar runs through `SnowballStemmerWrapper`. `rust-stemmers` implements the same algorithm;
//! the tests in `tests/meteor_native.rs` check it against the jar's stemmer word by word.
//!
//! One difference is bridged: Java's Snowball works on UTF-16 code units, so a character outside
//! the Basic Multilingual Plane counts as two (non-letter) characters there, which changes some
//! rules' outcome ("🙂ies" stems to "🙂i" in the jar, "🙂ie" by characters). Such characters are
//! stemmed here as two private-use characters standing for their surrogates.

use std::borrow::Cow;

use rust_stemmers::{Algorithm, Stemmer as Snowball};

use super::java;

/// Snowball's English stemmer.
pub struct Stemmer(Snowball);

impl Default for Stemmer {
    fn default() -> Stemmer {
        Stemmer(Snowball::create(Algorithm::English))
    }
}

/// Private-use stand-ins for high (`HIGH..HIGH+0x400`) and low (`LOW..LOW+0x400`) surrogates.
const HIGH: u32 = 0xE000;
const LOW: u32 = 0xE400;
const STAND_IN_END: u32 = 0xE800;

impl Stemmer {
    /// The stem of `word` (`stemmer.setCurrent(word); stemmer.stem(); stemmer.getCurrent()`)
    /// for words within the Basic Multilingual Plane; see [`Stemmer::stem_key`] for all words.
    pub fn stem<'a>(&self, word: &'a str) -> Cow<'a, str> {
        self.0.stem(word)
    }

    /// The Java `hashCode` of the jar's stem of `word` (what the stem matcher compares).
    pub fn stem_key(&self, word: &str) -> i32 {
        if word.chars().all(|c| c.len_utf16() == 1) {
            return java::string_hash(&self.0.stem(word));
        }
        let mut units = [0u16; 2];
        let stand_in: String = word
            .chars()
            .flat_map(|c| {
                let u = c.encode_utf16(&mut units);
                let pair = if u.len() == 2 {
                    [
                        char::from_u32(HIGH + u32::from(u[0] - 0xD800)),
                        char::from_u32(LOW + u32::from(u[1] - 0xDC00)),
                    ]
                } else {
                    [Some(c), None]
                };
                pair.into_iter().flatten()
            })
            .collect();
        let stem = self.0.stem(&stand_in);
        stem.chars()
            .flat_map(|c| {
                let v = u32::from(c);
                let unit = match v {
                    HIGH..LOW => Some((0xD800 + v - HIGH) as u16),
                    LOW..STAND_IN_END => Some((0xDC00 + v - LOW) as u16),
                    _ => None,
                };
                let mut buf = [0u16; 2];
                let units: Vec<u16> = match unit {
                    Some(u) => vec![u],
                    None => c.encode_utf16(&mut buf).to_vec(),
                };
                units
            })
            .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_english() {
        let s = Stemmer::default();
        assert_eq!(s.stem("running"), "run");
        assert_eq!(s.stem("dogs"), "dog");
        assert_eq!(s.stem("generously"), "generous");
        assert_eq!(s.stem_key("running"), java::string_hash("run"));
    }

    #[test]
    fn characters_outside_the_bmp_count_twice_as_in_java() {
        // The jar stems "🙂ies" to "🙂i" (two UTF-16 units before "ies").
        let s = Stemmer::default();
        assert_eq!(s.stem_key("\u{1F642}ies"), java::string_hash("\u{1F642}i"));
        assert_eq!(
            s.stem_key("\u{1F642}dogs"),
            java::string_hash("\u{1F642}dog")
        );
    }
}
