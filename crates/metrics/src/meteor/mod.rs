//! METEOR 1.5 as pycocoevalcap 1.2 computes it (`meteor-1.5.jar - - -stdio -l en -norm`), in two
//! ways that give the same scores:
//!
//! * [`NativeMeteor`] (the default): a Rust port of the jar's English scorer: `-norm`
//!   normalisation ([`normalize`]), the exact, stem ([`stem`]), synonym ([`synonyms`]) and
//!   paraphrase ([`paraphrase`]) matchers ([`stage`]), the beam-search aligner ([`aligner`]),
//!   and the statistics and score with the English ranking-task parameters ([`stats`]). It
//!   reads the jar's data files from pycocoevalcap's install ([`resources`]) and needs no Java.
//! * [`Meteor`] ([`driver`]): the jar itself, driven exactly as pycocoevalcap drives it, kept
//!   to cross-check the port.
//!
//! Licence: METEOR is © Carnegie Mellon University, distributed under the GNU LGPL (v2.1 for the
//! current sources); this module is a port of its algorithms (it contains no METEOR code or
//! data, and reads the data from the user's pycocoevalcap install at run time). Whether the
//! port counts as a derivative work under the LGPL is a question for the project's licensing.

pub mod aligner;
pub mod driver;
pub mod java;
pub mod normalize;
pub mod paraphrase;
pub mod resources;
pub mod stage;
pub mod stats;
pub mod stem;
pub mod synonyms;
mod zip;

use std::path::Path;
use std::sync::Arc;

pub use driver::{score_line, unavailable_reason, Meteor};
use paraphrase::FxMap;
pub use resources::{default_cache_dir, Resources};
use stage::Sentence;
use stats::Stats;

use crate::ngrams::check_inputs;
use crate::EvalError;

/// The jar, relative to the pycocoevalcap package directory.
pub const METEOR_JAR: &str = "meteor/meteor-1.5.jar";
/// The paraphrase table the jar loads for English.
pub const PARAPHRASE_TABLE: &str = "meteor/data/paraphrase-en.gz";

/// Corpus and per-image METEOR.
#[derive(Clone, Debug, PartialEq)]
pub struct MeteorScores {
    /// The corpus score: computed from the images' statistics added up (the jar's aggregate),
    /// not the mean of the per-image scores.
    pub corpus: f64,
    /// Each image's score against its best reference, in input order.
    pub per_image: Vec<f64>,
}

/// Why the native METEOR cannot run here (its data files are missing), with how to fix it.
pub fn native_unavailable_reason(toolkit_dir: Option<&Path>) -> Option<String> {
    let Some(dir) = toolkit_dir else {
        return Some(format!(
            "METEOR unavailable: pycocoevalcap (which ships METEOR 1.5's data files) was not \
found; {}",
            crate::toolkit::INSTALL_HINT
        ));
    };
    for rel in [METEOR_JAR, PARAPHRASE_TABLE] {
        let path = dir.join(rel);
        if !path.is_file() {
            return Some(format!(
                "METEOR unavailable: {} is missing; {}",
                path.display(),
                crate::toolkit::INSTALL_HINT
            ));
        }
    }
    None
}

/// METEOR 1.5 in Rust. Cheap to clone (the data is shared).
#[derive(Clone)]
pub struct NativeMeteor {
    res: Arc<Resources>,
}

/// Scores with the statistics lines the jar would print for each image's `SCORE` line.
#[derive(Clone, Debug, PartialEq)]
pub struct DetailedScores {
    /// The scores, as [`NativeMeteor::compute`] returns them.
    pub scores: MeteorScores,
    /// Per image, in input order: the statistics line of its best reference
    /// ([`Stats::line`](stats::Stats::line)).
    pub stats_lines: Vec<String>,
}

impl NativeMeteor {
    /// Loads the data from the pycocoevalcap package directory `toolkit_dir`, with the paraphrase
    /// table cached in `cache_dir` (see [`default_cache_dir`]).
    pub fn load(toolkit_dir: &Path, cache_dir: Option<&Path>) -> Result<NativeMeteor, EvalError> {
        Ok(NativeMeteor {
            res: Arc::new(Resources::load(toolkit_dir, cache_dir)?),
        })
    }

    /// METEOR of `hyps[i]` against `refs[i]` (`Meteor.compute_score`).
    pub fn compute(
        &self,
        refs: &[Vec<String>],
        hyps: &[String],
    ) -> Result<MeteorScores, EvalError> {
        self.compute_detailed(refs, hyps).map(|d| d.scores)
    }

    /// [`NativeMeteor::compute`] with the per-image statistics lines.
    pub fn compute_detailed(
        &self,
        refs: &[Vec<String>],
        hyps: &[String],
    ) -> Result<DetailedScores, EvalError> {
        check_inputs(refs, hyps)?;
        let res = &*self.res;
        // What the jar reads: the toolkit's SCORE line, split at "|||", trimmed, normalised and
        // lowercased, then split into words.
        let mut segments: Vec<(Vec<String>, Vec<Vec<String>>)> = Vec::with_capacity(hyps.len());
        for (i, (r, h)) in refs.iter().zip(hyps).enumerate() {
            let line = score_line(r, h);
            let line = line.strip_suffix('\n').unwrap_or(&line);
            if line.contains(['\n', '\r']) {
                return Err(EvalError::InvalidInput(format!(
                    "image {i}: a caption contains a line break, which METEOR's line protocol \
                     cannot carry"
                )));
            }
            let parts = java::split_triple_bar(line);
            if parts.len() < 3 {
                return Err(EvalError::Meteor(format!(
                    "image {i}: the jar would answer \"Error: specify hypothesis and at least \
                     one reference\" to {line:?}"
                )));
            }
            let words = |s: &str| -> Vec<String> {
                let n = res.normalizer.normalize(java::trim(s)).to_lowercase();
                java::tokens(&n).map(str::to_owned).collect()
            };
            let test = words(parts[parts.len() - 1]);
            let references = parts[1..parts.len() - 1].iter().map(|s| words(s)).collect();
            segments.push((test, references));
        }

        // The evaluation's vocabulary and what each word is to the matchers.
        let mut vocab: FxMap<&str, u32> = FxMap::default();
        for (t, rs) in &segments {
            for w in t.iter().chain(rs.iter().flatten()) {
                let next = vocab.len() as u32;
                vocab.entry(w.as_str()).or_insert(next);
            }
        }
        let mut by_id: Vec<&str> = vec![""; vocab.len()];
        for (w, &id) in &vocab {
            by_id[id as usize] = w;
        }
        struct WordInfo {
            hash: i32,
            stem: i32,
            synsets: Vec<u32>,
            function: bool,
        }
        let info: Vec<WordInfo> = by_id
            .iter()
            .map(|w| WordInfo {
                hash: java::string_hash(w),
                stem: res.stemmer.stem_key(w),
                synsets: res.synonyms.synsets(w),
                function: res.function_words.contains(&w.to_lowercase()),
            })
            .collect();
        let sentence = |words: &[String]| -> Sentence {
            let ids: Vec<u32> = words.iter().map(|w| vocab[w.as_str()]).collect();
            Sentence {
                hash: ids.iter().map(|&i| info[i as usize].hash).collect(),
                stem: ids.iter().map(|&i| info[i as usize].stem).collect(),
                synsets: ids
                    .iter()
                    .map(|&i| info[i as usize].synsets.clone())
                    .collect(),
                function: ids.iter().map(|&i| info[i as usize].function).collect(),
                id: ids,
            }
        };
        let sentences: Vec<(Sentence, Vec<Sentence>)> = segments
            .iter()
            .map(|(t, rs)| (sentence(t), rs.iter().map(|r| sentence(r)).collect()))
            .collect();
        let all: Vec<&[u32]> = sentences
            .iter()
            .flat_map(|(t, rs)| std::iter::once(&t.id).chain(rs.iter().map(|r| &r.id)))
            .map(Vec::as_slice)
            .collect();
        let paraphrases = res.table.select(&vocab, &all);

        // Each image: the reference with the best score (the first on ties).
        let mut per_image = Vec::with_capacity(sentences.len());
        let mut stats_lines = Vec::with_capacity(sentences.len());
        let mut total = Stats::default();
        for (test, references) in &sentences {
            let mut best: Option<(Stats, f64)> = None;
            for r in references {
                let s = Stats::of(&aligner::align(test, r, &paraphrases));
                let score = s.score();
                if best.as_ref().is_none_or(|(_, b)| score > *b) {
                    best = Some((s, score));
                }
            }
            let Some((s, score)) = best else {
                return Err(EvalError::InvalidInput("an image has no references".into()));
            };
            stats_lines.push(s.line());
            per_image.push(score);
            total.add(&s);
        }
        Ok(DetailedScores {
            scores: MeteorScores {
                corpus: total.score(),
                per_image,
            },
            stats_lines,
        })
    }
}
