//! The `COCOEvalCap`-style driver: which images are evaluated, tokenisation, the scorers, and
//! the report (`--json` object, printed table, per-image file).
//!
//! As SmallCap's evaluation runs it, the evaluated images are those of the predictions, in the
//! order of the gold file's `images` list (pycocotools' `loadRes` keeps that order); each gets its
//! gold annotations' captions as references. References and predictions are tokenised as two
//! separate documents, as the toolkit's two tokenizer runs do. Bad input gets the toolkit's
//! behaviour where it has one (it fails on predictions for unknown images, on several
//! predictions for one image and on images without references, so these are errors here too;
//! empty captions are scored as it scores them), otherwise an error that names the file and field.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::coco::{self, GoldCaptions, ImageId, Prediction};
use crate::meteor::{self, Meteor, MeteorScores, NativeMeteor};
use crate::ptb_tokenizer::tokenize_captions;
use crate::{bleu, cider, rouge, spice, toolkit, EvalError};

/// A metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// BLEU-1..4.
    Bleu,
    /// METEOR 1.5 (needs pycocoevalcap's data files; Java too with [`EvalOptions::meteor_jar`]).
    Meteor,
    /// ROUGE-L.
    Rouge,
    /// CIDEr-D.
    Cider,
    /// SPICE 1.0 (needs Java, pycocoevalcap's jar and Stanford CoreNLP 3.6.0).
    Spice,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 5] = [
        Metric::Bleu,
        Metric::Meteor,
        Metric::Rouge,
        Metric::Cider,
        Metric::Spice,
    ];

    /// Parses a metric name as the CLI spells it (`bleu`, `meteor`, `rouge`, `cider`, `spice`;
    /// case-insensitive; `rouge_l` and `rouge-l` accepted).
    pub fn parse(name: &str) -> Option<Metric> {
        match name.to_ascii_lowercase().as_str() {
            "bleu" => Some(Metric::Bleu),
            "meteor" => Some(Metric::Meteor),
            "rouge" | "rouge_l" | "rouge-l" => Some(Metric::Rouge),
            "cider" | "cider-d" => Some(Metric::Cider),
            "spice" => Some(Metric::Spice),
            _ => None,
        }
    }
}

/// What to compute and where the Java toolkit is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalOptions {
    /// Metrics to compute (default: all; METEOR and SPICE are skipped with a note where they
    /// cannot run).
    pub metrics: Vec<Metric>,
    /// pycocoevalcap package directory; default: `$SMALLCAP_COCOEVAL_DIR`, else where
    /// `$SMALLCAP_PYTHON` (default `python3`) imports `pycocoevalcap` from.
    pub toolkit_dir: Option<PathBuf>,
    /// `java` executable; default: `$SMALLCAP_JAVA`, else `java` on `PATH`.
    pub java: Option<PathBuf>,
    /// Compute METEOR with pycocoevalcap's jar (Java) instead of the native port (which gives
    /// the same scores); for cross-checking.
    pub meteor_jar: bool,
    /// Where the native METEOR caches its paraphrase table; default:
    /// [`meteor::default_cache_dir`].
    pub meteor_cache_dir: Option<PathBuf>,
}

impl Default for EvalOptions {
    fn default() -> EvalOptions {
        EvalOptions {
            metrics: Metric::ALL.to_vec(),
            toolkit_dir: None,
            java: None,
            meteor_jar: false,
            meteor_cache_dir: None,
        }
    }
}

impl EvalOptions {
    /// All metrics except SPICE (the benchmark's set).
    pub fn without_spice() -> EvalOptions {
        EvalOptions {
            metrics: vec![Metric::Bleu, Metric::Meteor, Metric::Rouge, Metric::Cider],
            ..EvalOptions::default()
        }
    }

    fn wants(&self, m: Metric) -> bool {
        self.metrics.contains(&m)
    }
}

/// Scores keyed as pycocoevalcap names them; absent metrics are omitted from the JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CorpusScores {
    /// BLEU-1 (`Bleu_1`), between 0 and 1.
    #[serde(rename = "Bleu_1", skip_serializing_if = "Option::is_none")]
    pub bleu_1: Option<f64>,
    /// BLEU-2 (`Bleu_2`), between 0 and 1.
    #[serde(rename = "Bleu_2", skip_serializing_if = "Option::is_none")]
    pub bleu_2: Option<f64>,
    /// BLEU-3 (`Bleu_3`), between 0 and 1.
    #[serde(rename = "Bleu_3", skip_serializing_if = "Option::is_none")]
    pub bleu_3: Option<f64>,
    /// BLEU-4 (`Bleu_4`), between 0 and 1.
    #[serde(rename = "Bleu_4", skip_serializing_if = "Option::is_none")]
    pub bleu_4: Option<f64>,
    /// METEOR 1.5 (`METEOR`), between 0 and 1.
    #[serde(rename = "METEOR", skip_serializing_if = "Option::is_none")]
    pub meteor: Option<f64>,
    /// ROUGE-L F-measure (`ROUGE_L`), between 0 and 1.
    #[serde(rename = "ROUGE_L", skip_serializing_if = "Option::is_none")]
    pub rouge_l: Option<f64>,
    /// CIDEr-D (`CIDEr`), multiplied by 10 as the toolkit does (so not bounded by 1).
    #[serde(rename = "CIDEr", skip_serializing_if = "Option::is_none")]
    pub cider: Option<f64>,
    /// SPICE `All` F-score (`SPICE`), between 0 and 1; NaN where SPICE gave none.
    #[serde(rename = "SPICE", skip_serializing_if = "Option::is_none")]
    pub spice: Option<f64>,
}

impl CorpusScores {
    /// `(name, value)` for every metric, in report order.
    pub fn entries(&self) -> [(&'static str, Option<f64>); 8] {
        [
            ("Bleu_1", self.bleu_1),
            ("Bleu_2", self.bleu_2),
            ("Bleu_3", self.bleu_3),
            ("Bleu_4", self.bleu_4),
            ("METEOR", self.meteor),
            ("ROUGE_L", self.rouge_l),
            ("CIDEr", self.cider),
            ("SPICE", self.spice),
        ]
    }

    /// The value named as pycocoevalcap names it (`"Bleu_4"`, `"CIDEr"`, ...).
    pub fn get(&self, name: &str) -> Option<f64> {
        self.entries()
            .into_iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v)
    }
}

/// One image's scores (COCOEvalCap's `evalImgs` entry; SPICE is the `All` F-score).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageScores {
    /// The image.
    pub image_id: ImageId,
    /// Its scores (serialised next to `image_id`, with the corpus object's keys).
    #[serde(flatten)]
    pub scores: CorpusScores,
}

/// The result of an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// Corpus-level scores.
    pub corpus: CorpusScores,
    /// Per-image scores, in evaluation order.
    pub per_image: Vec<ImageScores>,
    /// The PTB-tokenised references of each evaluated image (evaluation order).
    pub tokenized_refs: Vec<Vec<String>>,
    /// The PTB-tokenised prediction of each evaluated image.
    pub tokenized_preds: Vec<String>,
    /// Human-readable notes: why a metric is missing, and warnings.
    pub notes: Vec<String>,
}

impl EvalReport {
    /// The `--json` object: `{"Bleu_1":..,"Bleu_2":..,"Bleu_3":..,"Bleu_4":..,"METEOR":..,
    /// "ROUGE_L":..,"CIDEr":..,"SPICE":..}` without the metrics that were not computed.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.corpus).unwrap_or_else(|_| "{}".to_owned())
    }

    /// A plain-text table of the corpus scores, followed by the notes.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{:<8}  {:>10}", "metric", "score");
        for (name, value) in self.corpus.entries() {
            match value {
                Some(v) => {
                    let _ = writeln!(out, "{name:<8}  {v:>10.6}");
                }
                None => {
                    let _ = writeln!(out, "{name:<8}  {:>10}", "n/a");
                }
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    /// The per-image file's content: a JSON array with one object per evaluated image, in
    /// evaluation order: `{"image_id": .., "Bleu_1": .., …, "CIDEr": .., "SPICE": ..}` (the same
    /// keys as the corpus object; COCOEvalCap's `evalImgs`).
    pub fn per_image_json(&self) -> String {
        serde_json::to_string_pretty(&self.per_image).unwrap_or_else(|_| "[]".to_owned())
    }

    /// Writes [`EvalReport::per_image_json`] to `path` atomically (temporary file + rename).
    pub fn write_per_image(&self, path: &Path) -> Result<(), EvalError> {
        write_atomic(path, self.per_image_json().as_bytes())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees a partial file and a failure leaves no file behind
/// ([`smallcap_util::fs::write_atomic`]); errors are [`EvalError::Write`] naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    smallcap_util::fs::write_atomic(path, bytes).map_err(|source| EvalError::Write {
        path: path.to_owned(),
        source,
    })
}

/// How METEOR is computed: the native port (its data loading in the background until first
/// needed) or the jar's process.
enum MeteorEngine {
    Native {
        loading: Option<std::thread::JoinHandle<Result<NativeMeteor, EvalError>>>,
        loaded: Option<Result<NativeMeteor, String>>,
    },
    Jar(Meteor),
}

impl MeteorEngine {
    fn compute(
        &mut self,
        refs: &[Vec<String>],
        hyps: &[String],
    ) -> Result<MeteorScores, EvalError> {
        match self {
            MeteorEngine::Jar(m) => m.compute(refs, hyps),
            MeteorEngine::Native { loading, loaded } => {
                if let Some(job) = loading.take() {
                    *loaded = Some(
                        job.join()
                            .unwrap_or_else(|_| Err(panicked("METEOR data loader")))
                            .map_err(|e| e.to_string()),
                    );
                }
                match loaded {
                    Some(Ok(m)) => m.compute(refs, hyps),
                    Some(Err(e)) => Err(EvalError::Meteor(e.clone())),
                    None => Err(EvalError::Meteor("the METEOR data were not loaded".into())),
                }
            }
        }
    }
}

/// A reusable evaluator: resolves the toolkit once and keeps METEOR's data (or the jar's
/// process) across calls (training scores validation captions every epoch with one of these).
pub struct Evaluator {
    opts: EvalOptions,
    java: PathBuf,
    toolkit_dir: Option<PathBuf>,
    meteor: Option<MeteorEngine>,
    meteor_note: Option<String>,
    spice_note: Option<String>,
}

impl Evaluator {
    /// Resolves Java and pycocoevalcap and, if METEOR is wanted and can run, starts loading its
    /// data (or starts the jar's process) right away, in the background, while the caller reads
    /// and tokenises captions.
    pub fn new(opts: &EvalOptions) -> Result<Evaluator, EvalError> {
        let java = toolkit::java(opts.java.as_deref());
        let needs_toolkit = opts.wants(Metric::Meteor) || opts.wants(Metric::Spice);
        let toolkit_dir = if needs_toolkit {
            toolkit::toolkit_dir(opts.toolkit_dir.as_deref())
        } else {
            None
        };
        let mut meteor_note = None;
        let mut meteor = None;
        if opts.wants(Metric::Meteor) {
            meteor_note = if opts.meteor_jar {
                meteor::unavailable_reason(&java, toolkit_dir.as_deref())
            } else {
                meteor::native_unavailable_reason(toolkit_dir.as_deref())
            };
            if meteor_note.is_none() {
                if let Some(dir) = &toolkit_dir {
                    meteor = Some(if opts.meteor_jar {
                        MeteorEngine::Jar(Meteor::start(&java, dir)?)
                    } else {
                        let dir = dir.clone();
                        let cache = opts
                            .meteor_cache_dir
                            .clone()
                            .or_else(meteor::default_cache_dir);
                        MeteorEngine::Native {
                            loading: Some(std::thread::spawn(move || {
                                NativeMeteor::load(&dir, cache.as_deref())
                            })),
                            loaded: None,
                        }
                    });
                }
            }
        }
        let spice_note = if opts.wants(Metric::Spice) {
            spice::unavailable_reason(&java, toolkit_dir.as_deref())
        } else {
            None
        };
        Ok(Evaluator {
            opts: opts.clone(),
            java,
            toolkit_dir,
            meteor,
            meteor_note,
            spice_note,
        })
    }

    /// Evaluates predictions against gold captions (`COCOEvalCap.evaluate` over the
    /// predictions' images).
    pub fn evaluate_data(
        &mut self,
        gold: &GoldCaptions,
        preds: &[Prediction],
        gold_name: &str,
        pred_name: &str,
    ) -> Result<EvalReport, EvalError> {
        let (ids, raw_refs, raw_hyps) = select_images(gold, preds, gold_name, pred_name)?;
        let mut notes = Vec::new();

        let flat_refs: Vec<&str> = raw_refs.iter().flatten().map(String::as_str).collect();
        let (tok_refs, tok_hyps) = std::thread::scope(|s| {
            let refs = s.spawn(|| tokenize_captions(&flat_refs));
            let hyps = tokenize_captions(&raw_hyps);
            (refs.join(), hyps)
        });
        let tok_refs =
            tok_refs.map_err(|_| EvalError::Tokenizer("tokenizer thread panicked".into()))?;
        for (what, t, n) in [
            ("references", &tok_refs, flat_refs.len()),
            ("predictions", &tok_hyps, raw_hyps.len()),
        ] {
            if t.captions.len() < n {
                return Err(EvalError::Tokenizer(format!(
                    "the {what} gave {} tokenizer lines for {n} captions (a caption's text spans \
                     lines); the toolkit would drop captions here",
                    t.line_count
                )));
            }
            if t.line_count > n {
                notes.push(format!(
                    "warning: some {what} contain line-break characters (\\r, U+000B, U+000C, \
                     U+2028 or U+2029); like pycocoevalcap, the tokenizer started new lines there, \
                     so later {what} are paired with the wrong images"
                ));
            }
        }
        let mut refs: Vec<Vec<String>> = Vec::with_capacity(raw_refs.len());
        let mut it = tok_refs.captions.into_iter();
        for r in &raw_refs {
            refs.push(it.by_ref().take(r.len()).collect());
        }
        let hyps = tok_hyps.captions;

        let mut report = self.score(&ids, &refs, &hyps)?;
        report.notes.splice(0..0, notes);
        Ok(report)
    }

    /// Scores already-tokenised captions (references per image, one hypothesis per image).
    pub fn score(
        &mut self,
        ids: &[ImageId],
        refs: &[Vec<String>],
        hyps: &[String],
    ) -> Result<EvalReport, EvalError> {
        crate::ngrams::check_inputs(refs, hyps)?;
        if ids.len() != hyps.len() {
            return Err(EvalError::InvalidInput(format!(
                "{} image ids for {} hypotheses",
                ids.len(),
                hyps.len()
            )));
        }
        let opts = &self.opts;
        let meteor = &mut self.meteor;
        let (bleu, meteor_scores, rouge, cider) = std::thread::scope(|s| {
            let meteor_job = meteor
                .as_mut()
                .map(|m| s.spawn(move || m.compute(refs, hyps)));
            let bleu_job = opts
                .wants(Metric::Bleu)
                .then(|| s.spawn(|| bleu::compute(refs, hyps)));
            let rouge = opts
                .wants(Metric::Rouge)
                .then(|| rouge::compute(refs, hyps))
                .transpose();
            let cider = opts
                .wants(Metric::Cider)
                .then(|| cider::compute(refs, hyps))
                .transpose();
            let bleu = bleu_job
                .map(|j| j.join().unwrap_or_else(|_| Err(panicked("BLEU"))))
                .transpose();
            let meteor_scores = meteor_job
                .map(|j| j.join().unwrap_or_else(|_| Err(panicked("METEOR"))))
                .transpose();
            (bleu, meteor_scores, rouge, cider)
        });
        let (bleu, meteor_scores, rouge, cider) = (bleu?, meteor_scores?, rouge?, cider?);

        let spice_scores = match (
            &self.toolkit_dir,
            self.opts.wants(Metric::Spice),
            &self.spice_note,
        ) {
            (Some(dir), true, None) => Some(spice::compute(&self.java, dir, ids, refs, hyps)?),
            _ => None,
        };

        let corpus = CorpusScores {
            bleu_1: bleu.as_ref().map(|b| b.corpus[0]),
            bleu_2: bleu.as_ref().map(|b| b.corpus[1]),
            bleu_3: bleu.as_ref().map(|b| b.corpus[2]),
            bleu_4: bleu.as_ref().map(|b| b.corpus[3]),
            meteor: meteor_scores.as_ref().map(|m| m.corpus),
            rouge_l: rouge.as_ref().map(|r| r.corpus),
            cider: cider.as_ref().map(|c| c.corpus),
            spice: spice_scores.as_ref().map(|s| s.corpus),
        };
        let per_image = ids
            .iter()
            .enumerate()
            .map(|(i, id)| ImageScores {
                image_id: id.clone(),
                scores: CorpusScores {
                    bleu_1: bleu.as_ref().map(|b| b.per_image[i][0]),
                    bleu_2: bleu.as_ref().map(|b| b.per_image[i][1]),
                    bleu_3: bleu.as_ref().map(|b| b.per_image[i][2]),
                    bleu_4: bleu.as_ref().map(|b| b.per_image[i][3]),
                    meteor: meteor_scores.as_ref().map(|m| m.per_image[i]),
                    rouge_l: rouge.as_ref().map(|r| r.per_image[i]),
                    cider: cider.as_ref().map(|c| c.per_image[i]),
                    spice: spice_scores.as_ref().map(|s| s.per_image[i]),
                },
            })
            .collect();
        let notes = [&self.meteor_note, &self.spice_note]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        Ok(EvalReport {
            corpus,
            per_image,
            tokenized_refs: refs.to_vec(),
            tokenized_preds: hyps.to_vec(),
            notes,
        })
    }
}

fn panicked(what: &str) -> EvalError {
    EvalError::InvalidInput(format!("the {what} scorer thread panicked"))
}

type Selected = (Vec<ImageId>, Vec<Vec<String>>, Vec<String>);

/// The evaluated images (gold order, restricted to the predictions' images), their raw
/// references and raw predictions, after the toolkit's checks.
fn select_images(
    gold: &GoldCaptions,
    preds: &[Prediction],
    gold_name: &str,
    pred_name: &str,
) -> Result<Selected, EvalError> {
    if preds.is_empty() {
        return Err(EvalError::NoPredictions {
            path: pred_name.to_owned(),
        });
    }
    let known: HashSet<&ImageId> = gold.images.iter().collect();
    let mut first_index: HashMap<&ImageId, usize> = HashMap::with_capacity(preds.len());
    for (i, p) in preds.iter().enumerate() {
        if !known.contains(&p.image_id) {
            return Err(EvalError::UnknownImage {
                path: pred_name.to_owned(),
                index: i,
                image_id: p.image_id.to_string(),
            });
        }
        if let Some(&first) = first_index.get(&p.image_id) {
            return Err(EvalError::DuplicatePrediction {
                path: pred_name.to_owned(),
                image_id: p.image_id.to_string(),
                first,
                second: i,
            });
        }
        first_index.insert(&p.image_id, i);
    }
    let mut ids = Vec::with_capacity(preds.len());
    let mut refs = Vec::with_capacity(preds.len());
    let mut hyps = Vec::with_capacity(preds.len());
    for id in &gold.images {
        let Some(&i) = first_index.get(id) else {
            continue;
        };
        let r = gold
            .references
            .get(id)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| EvalError::NoReferences {
                path: gold_name.to_owned(),
                image_id: id.to_string(),
            })?;
        ids.push(id.clone());
        refs.push(r.clone());
        hyps.push(preds[i].caption.clone());
    }
    Ok((ids, refs, hyps))
}

/// Evaluates the prediction file `pred` against the gold annotation file `gold`.
pub fn evaluate(gold: &Path, pred: &Path, opts: &EvalOptions) -> Result<EvalReport, EvalError> {
    // Start METEOR first: the JVM loads its tables while the files are parsed and tokenised.
    let mut evaluator = Evaluator::new(opts)?;
    let g = coco::load_gold(gold)?;
    let p = coco::load_predictions(pred)?;
    evaluator.evaluate_data(
        &g,
        &p,
        &gold.display().to_string(),
        &pred.display().to_string(),
    )
}

/// Evaluates in-memory predictions against in-memory gold captions.
pub fn evaluate_data(
    gold: &GoldCaptions,
    preds: &[Prediction],
    opts: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    Evaluator::new(opts)?.evaluate_data(gold, preds, "gold captions", "predictions")
}
