//! Training samples as the reference's `load_data_for_training` and `TrainDataset` build them:
//! one sample per (image, reference caption) of Karpathy's `train` + `restval` splits, the
//! caption `' '.join(tokens)`, the prompt from the image's first k retrieved captions, and
//! `prep_strings`' layout of `input_ids` and pre-shifted `labels`, right-padded to the
//! reference's length (`25 + 25·k + |template| + |"\n\n"|·(k−1)`, 140 at k = 4; 25 without
//! retrieval).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::prompt;
use crate::retrieved::RetrievedCaptions;
use crate::tokenizer::Tokenizer;

/// Caption tokens kept per target (`CAPTION_LENGTH` in the reference).
pub const CAPTION_LENGTH: usize = 25;
/// Label value the loss ignores.
pub const IGNORE_INDEX: i64 = -100;

/// One image of Karpathy's `dataset_coco.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct KarpathyImage {
    /// COCO image id.
    pub cocoid: i64,
    /// Image file name.
    pub filename: String,
    #[serde(default)]
    /// Folder of the image within the COCO tree (`train2014`, `val2014`).
    pub filepath: Option<String>,
    /// Karpathy split: `train`, `restval`, `val` or `test`.
    pub split: String,
    /// Its reference captions.
    pub sentences: Vec<KarpathySentence>,
}

#[derive(Debug, Clone, Deserialize)]
/// One reference caption of Karpathy's file.
pub struct KarpathySentence {
    /// The caption's tokens (joined with spaces, the training target).
    pub tokens: Vec<String>,
}

#[derive(Deserialize)]
struct KarpathyFile {
    images: Vec<KarpathyImage>,
}

impl KarpathyImage {
    /// The image id as feature files and retrieved-caption files key it.
    pub fn key(&self) -> String {
        self.cocoid.to_string()
    }
    /// The file name the reference opens: the part after the last `_` (COCO 2017 names).
    pub fn short_name(&self) -> &str {
        self.filename.rsplit('_').next().unwrap_or(&self.filename)
    }
}

/// A Karpathy-split annotation file.
#[derive(Debug, Clone)]
pub struct Annotations {
    /// The file.
    pub path: PathBuf,
    /// Its images.
    pub images: Vec<KarpathyImage>,
}

/// One training pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Image id (`str(cocoid)`).
    pub image: String,
    /// Target caption, `' '.join(tokens)`.
    pub text: String,
}

impl Annotations {
    /// Reads a Karpathy `dataset_coco.json`, naming the file and what is wrong on failure.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let file: KarpathyFile = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Input(format!(
                "{}: not a Karpathy-split annotation file (an object with \"images\": [{{cocoid, filename, split, sentences: [{{tokens}}]}}]): {e}",
                path.display()
            ))
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            images: file.images,
        })
    }

    /// Images whose split is one of `splits`, in file order.
    pub fn images_in<'a>(&'a self, splits: &'a [&str]) -> impl Iterator<Item = &'a KarpathyImage> {
        self.images
            .iter()
            .filter(move |im| splits.contains(&im.split.as_str()))
    }

    /// The samples of `splits` (e.g. `["train", "restval"]`), one per sentence, in file order;
    /// an error when the splits hold no image.
    pub fn samples(&self, splits: &[&str]) -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        let mut images = 0;
        for im in self.images_in(splits) {
            images += 1;
            for s in &im.sentences {
                out.push(Sample {
                    image: im.key(),
                    text: s.tokens.join(" "),
                });
            }
        }
        if images == 0 {
            return Err(Error::Input(format!(
                "{}: no image in split {}",
                self.path.display(),
                splits.join(" or ")
            )));
        }
        if out.is_empty() {
            return Err(Error::Input(format!(
                "{}: the images of split {} have no sentences",
                self.path.display(),
                splits.join(" or ")
            )));
        }
        Ok(out)
    }
}

/// The reference's `max_target_length`: 25 without retrieval, else
/// `25 + 25·k + len(encode(template)) + len(encode("\n\n"))·(k−1)`.
pub fn max_length(tokenizer: &Tokenizer, k: Option<usize>) -> Result<usize> {
    Ok(match k {
        None => CAPTION_LENGTH,
        Some(k) => {
            CAPTION_LENGTH
                + CAPTION_LENGTH * k
                + tokenizer.encode(prompt::TEMPLATE)?.len()
                + tokenizer.encode("\n\n")?.len() * k.saturating_sub(1)
        }
    })
}

/// `input_ids` and `labels` of one sample, padded to at least `max_len`.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Prompt and caption token ids, padded.
    pub input_ids: Vec<u32>,
    /// Targets: `IGNORE_INDEX` on the prompt and the padding, the caption's ids after it.
    pub labels: Vec<i64>,
}

/// The reference's `prep_strings` for training: prompt ids + the first 25 caption ids, labels
/// `[-100]·(len(prompt)−1) + caption + [eos]`, padded with `pad` / −100 up to `max_len` (a
/// longer sample is left unpadded, as in the reference).
pub fn prep_strings(
    tokenizer: &Tokenizer,
    text: &str,
    retrieved: Option<&[String]>,
    k: usize,
    max_len: usize,
    eos: u32,
    pad: u32,
) -> Result<Encoded> {
    let prefix = prompt::prompt_text(retrieved, k);
    let prefix_ids = tokenizer.encode(&prefix)?;
    let mut text_ids = tokenizer.encode_plain(text)?;
    text_ids.truncate(CAPTION_LENGTH);
    let mut input_ids = prefix_ids.clone();
    input_ids.extend(&text_ids);
    let mut labels = vec![IGNORE_INDEX; prefix_ids.len().saturating_sub(1)];
    labels.extend(text_ids.iter().map(|&t| t as i64));
    labels.push(eos as i64);
    if input_ids.len() < max_len {
        input_ids.resize(max_len, pad);
    }
    if labels.len() < max_len {
        labels.resize(max_len, IGNORE_INDEX);
    }
    Ok(Encoded { input_ids, labels })
}

/// The training set: samples, their retrieved captions and the prompt settings.
pub struct TrainDataset {
    /// The (image, caption) pairs.
    pub samples: Vec<Sample>,
    retrieved: Option<RetrievedCaptions>,
    k: usize,
    /// Length every sample is padded to (train.py's `max_length`).
    pub max_len: usize,
    tokenizer: Tokenizer,
    eos: u32,
    pad: u32,
}

impl TrainDataset {
    /// `retrieved` = `None` trains without retrieval (`--disable_rag`). Every sample's image
    /// must have at least `k` retrieved captions.
    pub fn new(
        samples: Vec<Sample>,
        retrieved: Option<RetrievedCaptions>,
        k: usize,
        tokenizer: Tokenizer,
        eos: u32,
        pad: u32,
    ) -> Result<Self> {
        if let Some(r) = &retrieved {
            if k == 0 {
                return Err(Error::Input("--k must be at least 1 with retrieval".into()));
            }
            let mut seen = std::collections::HashSet::new();
            for s in &samples {
                if seen.insert(s.image.as_str()) {
                    let caps = r.get(&s.image)?;
                    if caps.len() < k {
                        return Err(Error::Input(format!(
                            "{}: image {} has {} retrieved captions, but k = {k}",
                            r.path().display(),
                            s.image,
                            caps.len()
                        )));
                    }
                }
            }
        }
        let max_len = max_length(&tokenizer, retrieved.as_ref().map(|_| k))?;
        Ok(Self {
            samples,
            retrieved,
            k,
            max_len,
            tokenizer,
            eos,
            pad,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The padding token id.
    pub fn pad(&self) -> u32 {
        self.pad
    }

    /// The ids and labels of sample `i`, as train.py's `prep_strings` makes them.
    pub fn encode(&self, i: usize) -> Result<Encoded> {
        let s = &self.samples[i];
        let caps = match &self.retrieved {
            Some(r) => Some(r.get(&s.image)?),
            None => None,
        };
        prep_strings(
            &self.tokenizer,
            &s.text,
            caps,
            self.k,
            self.max_len,
            self.eos,
            self.pad,
        )
    }
}
