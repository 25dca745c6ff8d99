//! The data METEOR's English configuration needs, read from pycocoevalcap's install (never
//! shipped with this crate): the function words (`function/english.words`), nonbreaking
//! prefixes (`nonbreaking/english.prefixes`) and WordNet synonyms (`synonym/english.*`) from
//! inside `meteor-1.5.jar`, and the paraphrase table `data/paraphrase-en.gz` beside it, cached
//! under [`default_cache_dir`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::normalize::Normalizer;
use super::paraphrase::{self, TableImage};
use super::stem::Stemmer;
use super::synonyms::Synonyms;
use super::{zip, METEOR_JAR, PARAPHRASE_TABLE};
use crate::EvalError;

/// Environment variable naming the directory of the paraphrase table cache.
pub const ENV_CACHE_DIR: &str = "SMALLCAP_CACHE_DIR";

/// Where the paraphrase table's cache goes: `$SMALLCAP_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/smallcap`, else `~/.cache/smallcap`; `None` if none of these is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var(ENV_CACHE_DIR)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("smallcap")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("smallcap")))
}

/// Everything the aligner and scorer read.
pub struct Resources {
    /// The `-norm` normaliser, with the jar's `nonbreaking/english.prefixes`.
    pub normalizer: Normalizer,
    /// Snowball's English stemmer (the stem module's).
    pub stemmer: Stemmer,
    /// The WordNet synonym dictionary (the jar's `synonym/english.*`).
    pub synonyms: Synonyms,
    /// The function words (the lines of the jar's `function/english.words`).
    pub function_words: HashSet<String>,
    /// The paraphrase table (`data/paraphrase-en.gz`, or its cache).
    pub table: TableImage,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> EvalError {
    EvalError::Meteor(format!(
        "{}: {what}; reinstall pycocoevalcap (`pip install --force-reinstall pycocoevalcap==1.2`)",
        path.display()
    ))
}

fn jar_text(jar: &Path, archive: &[u8], name: &str) -> Result<String, EvalError> {
    let bytes = zip::read_entry(archive, name).map_err(|e| corrupt(jar, e))?;
    String::from_utf8(bytes).map_err(|_| corrupt(jar, format!("{name} is not UTF-8 text")))
}

impl Resources {
    /// Loads the data from the pycocoevalcap package directory `toolkit_dir`; the paraphrase
    /// table through the cache in `cache_dir` (none: always from the `.gz`).
    pub fn load(toolkit_dir: &Path, cache_dir: Option<&Path>) -> Result<Resources, EvalError> {
        let jar = toolkit_dir.join(METEOR_JAR);
        let gz = toolkit_dir.join(PARAPHRASE_TABLE);
        for p in [&jar, &gz] {
            if !p.is_file() {
                return Err(EvalError::Meteor(format!(
                    "{} is missing; {}",
                    p.display(),
                    crate::toolkit::INSTALL_HINT
                )));
            }
        }
        let table_job = std::thread::spawn({
            let gz = gz.clone();
            let cache_dir = cache_dir.map(Path::to_path_buf);
            move || paraphrase::load(&gz, cache_dir.as_deref())
        });
        let from_jar = || -> Result<_, EvalError> {
            let archive = std::fs::read(&jar).map_err(|e| EvalError::Read {
                path: jar.clone(),
                source: e,
            })?;
            let function_words: HashSet<String> =
                jar_text(&jar, &archive, "function/english.words")?
                    .lines()
                    .map(str::to_owned)
                    .collect();
            let normalizer =
                Normalizer::new(&jar_text(&jar, &archive, "nonbreaking/english.prefixes")?);
            let synonyms = Synonyms::parse(
                &jar_text(&jar, &archive, "synonym/english.exceptions")?,
                &jar_text(&jar, &archive, "synonym/english.synsets")?,
            )
            .map_err(|e| corrupt(&jar, e))?;
            Ok((function_words, normalizer, synonyms))
        };
        let jar_parts = from_jar();
        // Joined even when the jar failed, so no loader outlives this call.
        let table = table_job
            .join()
            .map_err(|_| EvalError::Meteor("the paraphrase table loader panicked".into()))?;
        let (function_words, normalizer, synonyms) = jar_parts?;
        let table = table.map_err(|e| corrupt(&gz, e))?;
        Ok(Resources {
            normalizer,
            stemmer: Stemmer::default(),
            synonyms,
            function_words,
            table,
        })
    }
}
