//! Caption metrics that reproduce pycocoevalcap 1.2 (the COCO caption evaluation toolkit).
//!
//! * [`ptb_tokenizer`]: Stanford PTBTokenizer 3.4.1 (`-preserveLines -lowerCase`) and the
//!   toolkit's punctuation removal, in Rust.
//! * [`bleu`], [`rouge`], [`cider`]: BLEU-1..4, ROUGE-L and CIDEr-D, in Rust, equal to the
//!   Python scorers.
//! * [`meteor`]: METEOR 1.5, natively (a Rust port of the jar's English scorer that reads the
//!   jar's data files from pycocoevalcap's install; the default) or through the jar that
//!   pycocoevalcap ships, driven as pycocoevalcap drives it; [`spice`]: SPICE 1.0 through its jar
//!   when its models are installed.
//! * [`coco`]: the COCO annotation and result JSON formats; [`eval`]: the `COCOEvalCap`-style
//!   driver ([`evaluate`], [`evaluate_data`]) and its report.
//! * [`toolkit`]: finding Java and the pycocoevalcap data files.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bleu;
pub mod cider;
pub mod coco;
pub mod error;
pub mod eval;
pub mod meteor;
pub mod ngrams;
pub mod ptb_tokenizer;
pub mod pycompat;
pub mod rouge;
pub mod spice;
pub mod toolkit;

pub use coco::{GoldCaptions, ImageId, Prediction};
pub use error::EvalError;
pub use eval::{
    evaluate, evaluate_data, CorpusScores, EvalOptions, EvalReport, Evaluator, ImageScores, Metric,
};
