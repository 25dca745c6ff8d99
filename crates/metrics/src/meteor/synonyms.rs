//! METEOR's synonym module data (`SynonymDictionary`): WordNet synsets by word
//! (`synonym/english.synsets`), irregular forms to their bases (`synonym/english.exceptions`)
//! and WordNet 3.0's regular-suffix morphology for the rest. (The jar never loads
//! `english.relations`.)

use std::borrow::Cow;
use std::collections::HashMap;

use super::java;

/// Noun, verb and adjective suffixes and what replaces them (WordNet 3.0's `morph`).
const SUFFIXES: [(&str, &str); 20] = [
    ("s", ""),
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
    ("s", ""),
    ("ies", "y"),
    ("es", "e"),
    ("es", ""),
    ("ed", "e"),
    ("ed", ""),
    ("ing", "e"),
    ("ing", ""),
    ("er", ""),
    ("est", ""),
    ("er", "e"),
    ("est", "e"),
];

/// The synonym dictionary.
#[derive(Default)]
pub struct Synonyms {
    bases: HashMap<String, Vec<String>>,
    synsets: HashMap<String, Vec<u32>>,
}

impl Synonyms {
    /// Parses the exceptions file (a base form line, then a line of its irregular forms) and the
    /// synsets file (a word line, then a line of synset numbers). `Err` names what is malformed.
    pub fn parse(exceptions: &str, synsets: &str) -> Result<Synonyms, String> {
        let mut bases: HashMap<String, Vec<String>> = HashMap::new();
        let mut lines = exceptions.lines();
        while let Some(base) = lines.next() {
            let forms = lines
                .next()
                .ok_or_else(|| format!("exceptions: base form {base:?} has no forms line"))?;
            for form in java::tokens(forms) {
                bases
                    .entry(form.to_owned())
                    .or_default()
                    .push(base.to_owned());
            }
        }
        let mut sets: HashMap<String, Vec<u32>> = HashMap::new();
        let mut lines = synsets.lines();
        while let Some(word) = lines.next() {
            let ids = lines
                .next()
                .ok_or_else(|| format!("synsets: word {word:?} has no synset line"))?;
            let mut v = java::tokens(ids)
                .map(|t| {
                    t.parse::<u32>().map_err(|_| {
                        format!("synsets: {t:?} (for {word:?}) is not a synset number")
                    })
                })
                .collect::<Result<Vec<u32>, String>>()?;
            v.sort_unstable();
            v.dedup();
            sets.insert(word.to_owned(), v);
        }
        Ok(Synonyms {
            bases,
            synsets: sets,
        })
    }

    fn sets_of(&self, word: &str) -> &[u32] {
        self.synsets.get(word).map_or(&[], Vec::as_slice)
    }

    /// WordNet's base form of a regularly inflected `word` that has synsets, else `""`.
    fn morph<'a>(&self, word: &'a str) -> Cow<'a, str> {
        if word.ends_with("ss") || java::utf16_len(word) <= 2 {
            return Cow::Borrowed(word);
        }
        for (suffix, ending) in SUFFIXES {
            if let Some(stem) = word.strip_suffix(suffix) {
                let candidate = format!("{stem}{ending}");
                if self.synsets.contains_key(&candidate) {
                    return Cow::Owned(candidate);
                }
            }
        }
        Cow::Borrowed("")
    }

    /// The synsets `SynonymMatcher` gives `word`: its own and those of its base forms, sorted.
    pub fn synsets(&self, word: &str) -> Vec<u32> {
        let mut v: Vec<u32> = self.sets_of(word).to_vec();
        match self.bases.get(word) {
            Some(bases) => {
                for b in bases {
                    v.extend_from_slice(self.sets_of(b));
                }
            }
            None => v.extend_from_slice(self.sets_of(&self.morph(word))),
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Whether two sorted synset lists share a synset.
pub fn share_synset(a: &[u32], b: &[u32]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict() -> Synonyms {
        Synonyms::parse(
            "mouse\nmice\ngo\nwent gone\n",
            "mouse\n1 2\ndog\n3\ncanine\n00000003 4\ngo\n5\nbus\n6\nbox\n7\n",
        )
        .expect("parse")
    }

    #[test]
    fn exceptions_then_morphology() {
        let d = dict();
        assert_eq!(d.synsets("mice"), [1, 2]);
        assert_eq!(d.synsets("went"), [5]);
        assert_eq!(d.synsets("dogs"), [3]);
        assert_eq!(d.synsets("buses"), [6]);
        assert_eq!(d.synsets("boxes"), [7]);
        assert_eq!(d.synsets("canine"), [3, 4]);
        assert!(d.synsets("cats").is_empty());
        assert!(share_synset(&d.synsets("dog"), &d.synsets("canine")));
        assert!(!share_synset(&d.synsets("dog"), &d.synsets("mouse")));
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(Synonyms::parse("base\n", "").is_err());
        assert!(Synonyms::parse("", "dog\nx1\n").is_err());
    }
}
