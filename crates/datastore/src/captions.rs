//! Caption-file readers: plain text (one caption per line), a JSON list of strings, a JSON object
//! keyed by string ids `"0"`, `"1"`, … (as SmallCap's other hub datastores use), COCO caption
//! annotations (`annotations[].caption`) and Karpathy's `dataset_coco.json` (train + restval
//! sentences joined as `' '.join(sentence['tokens'])`, as the reference's `retrieve_caps.py`).
//! Every caption keeps its source image id where the format has one (for `--exclude-self`).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One datastore caption and, where known, the id of the image it describes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptionRecord {
    /// The caption text.
    pub text: String,
    /// Source image id (COCO `image_id` / Karpathy `cocoid`), when the file has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<i64>,
}

impl CaptionRecord {
    /// A caption without a source image.
    pub fn new(text: impl Into<String>) -> Self {
        CaptionRecord {
            text: text.into(),
            image_id: None,
        }
    }
}

/// Caption file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptionFormat {
    /// One caption per line.
    Text,
    /// A JSON list of strings, or an object keyed by `"0"`, `"1"`, ….
    JsonList,
    /// COCO caption annotations.
    Coco,
    /// Karpathy `dataset_coco.json` (train + restval).
    Karpathy,
}

/// Reads a whole file as UTF-8; errors for a missing, empty (or all-whitespace) or non-UTF-8 file.
pub(crate) fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::NotUtf8 {
        path: path.into(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(Error::Empty { path: path.into() });
    }
    Ok(text)
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Json {
        path: path.into(),
        source: e,
    })
}

/// Guesses the format: `.txt` → text; JSON starting with `[` → list; a JSON object mentioning
/// `"annotations"` → COCO, `"sentences"` → Karpathy, otherwise an id-keyed object.
pub fn detect_format(path: &Path, text: &str) -> CaptionFormat {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
    {
        return CaptionFormat::Text;
    }
    match text.trim_start().as_bytes().first() {
        Some(b'[') => CaptionFormat::JsonList,
        Some(b'{') if text.contains("\"annotations\"") => CaptionFormat::Coco,
        Some(b'{') if text.contains("\"sentences\"") => CaptionFormat::Karpathy,
        Some(b'{') => CaptionFormat::JsonList,
        _ => CaptionFormat::Text,
    }
}

/// Reads captions in `format`, or a detected one (see [`detect_format`]) when `None`.
pub fn read_captions(
    path: impl AsRef<Path>,
    format: Option<CaptionFormat>,
) -> Result<Vec<CaptionRecord>> {
    let path = path.as_ref();
    let text = read_utf8(path)?;
    let format = format.unwrap_or_else(|| detect_format(path, &text));
    match format {
        CaptionFormat::Text => parse_text(path, &text),
        CaptionFormat::JsonList => parse_json_list(path, &text),
        CaptionFormat::Coco => parse_coco(path, &text),
        CaptionFormat::Karpathy => parse_karpathy(path, &text),
    }
}

/// One caption per line (`\n` or `\r\n`); an empty line inside the file is an error.
pub fn read_text(path: impl AsRef<Path>) -> Result<Vec<CaptionRecord>> {
    read_captions(path, Some(CaptionFormat::Text))
}

/// A JSON list of strings, or an object keyed by `"0"`..`"n-1"` (each exactly once).
pub fn read_json_list(path: impl AsRef<Path>) -> Result<Vec<CaptionRecord>> {
    read_captions(path, Some(CaptionFormat::JsonList))
}

/// COCO caption annotations: `annotations[]` in file order, with `image_id`.
pub fn read_coco(path: impl AsRef<Path>) -> Result<Vec<CaptionRecord>> {
    read_captions(path, Some(CaptionFormat::Coco))
}

/// Karpathy `dataset_coco.json`: the sentences of `train` and `restval` images in file order,
/// `' '.join(tokens)`, with the image's `cocoid`.
pub fn read_karpathy(path: impl AsRef<Path>) -> Result<Vec<CaptionRecord>> {
    read_captions(path, Some(CaptionFormat::Karpathy))
}

fn parse_text(path: &Path, text: &str) -> Result<Vec<CaptionRecord>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            return Err(Error::format(path, format!("line {} is empty", i + 1)));
        }
        out.push(CaptionRecord::new(line));
    }
    Ok(out)
}

fn parse_json_list(path: &Path, text: &str) -> Result<Vec<CaptionRecord>> {
    // The common case (the hub's `<index>_captions.json`, a list of strings) straight into
    // strings: no JSON value tree for half a million captions. Anything else takes the checked
    // path below, which also words the errors.
    if let Ok(list) = serde_json::from_str::<Vec<String>>(text) {
        return Ok(list.into_iter().map(CaptionRecord::new).collect());
    }
    let value: serde_json::Value = parse_json(path, text)?;
    match value {
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                serde_json::Value::String(s) => Ok(CaptionRecord::new(s)),
                other => Err(Error::format(
                    path,
                    format!("item {i} is not a string but {}", json_kind(&other)),
                )),
            })
            .collect(),
        serde_json::Value::Object(map) => {
            let n = map.len();
            let mut slots: Vec<Option<String>> = vec![None; n];
            for (key, v) in map {
                let idx = key
                    .parse::<usize>()
                    .ok()
                    .filter(|&i| i < n && i.to_string() == key)
                    .ok_or_else(|| {
                        Error::format(
                            path,
                            format!("key \"{key}\" is not an id in \"0\"..\"{}\"", n - 1),
                        )
                    })?;
                match v {
                    serde_json::Value::String(s) => slots[idx] = Some(s),
                    other => {
                        return Err(Error::format(
                            path,
                            format!(
                                "value of key \"{key}\" is not a string but {}",
                                json_kind(&other)
                            ),
                        ))
                    }
                }
            }
            // n distinct keys each < n: every slot is filled.
            Ok(slots
                .into_iter()
                .map(|s| CaptionRecord::new(s.expect("n distinct ids below n")))
                .collect())
        }
        other => Err(Error::format(
            path,
            format!(
                "expected a JSON list of captions or an object keyed by id, found {}",
                json_kind(&other)
            ),
        )),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

#[derive(Deserialize)]
struct CocoFile {
    annotations: Vec<CocoAnnotation>,
}
#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: i64,
    caption: String,
}

fn parse_coco(path: &Path, text: &str) -> Result<Vec<CaptionRecord>> {
    let f: CocoFile = parse_json(path, text)?;
    if f.annotations.is_empty() {
        return Err(Error::format(path, "\"annotations\" is empty"));
    }
    Ok(f.annotations
        .into_iter()
        .map(|a| CaptionRecord {
            text: a.caption,
            image_id: Some(a.image_id),
        })
        .collect())
}

#[derive(Deserialize)]
struct KarpathyFile {
    images: Vec<KarpathyImage>,
}
#[derive(Deserialize)]
struct KarpathyImage {
    split: String,
    cocoid: i64,
    sentences: Vec<KarpathySentence>,
}
#[derive(Deserialize)]
struct KarpathySentence {
    tokens: Vec<String>,
}

fn parse_karpathy(path: &Path, text: &str) -> Result<Vec<CaptionRecord>> {
    let f: KarpathyFile = parse_json(path, text)?;
    let out: Vec<CaptionRecord> = f
        .images
        .into_iter()
        .filter(|im| im.split == "train" || im.split == "restval")
        .flat_map(|im| {
            let id = im.cocoid;
            im.sentences.into_iter().map(move |s| CaptionRecord {
                text: s.tokens.join(" "),
                image_id: Some(id),
            })
        })
        .collect();
    if out.is_empty() {
        return Err(Error::format(
            path,
            "no sentences in \"train\" or \"restval\" images",
        ));
    }
    Ok(out)
}
