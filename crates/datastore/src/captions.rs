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

/// Captions held in one text buffer with their end offsets (and image ids where the file has
/// them): opening the hub's 565,497-caption COCO store allocates two buffers instead of half a
/// million strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptionList {
    text: String,
    /// `ends[i]` is where caption `i` ends in `text` (it starts where `i - 1` ends).
    ends: Vec<usize>,
    /// Per caption, once any caption has one.
    image_ids: Option<Vec<Option<i64>>>,
}

impl CaptionList {
    /// The number of captions.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Caption `i`'s text.
    pub fn text(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }

    /// Caption `i` with its image id.
    pub fn record(&self, i: usize) -> Option<CaptionRecord> {
        Some(CaptionRecord {
            text: self.text(i)?.to_string(),
            image_id: self.image_ids.as_ref().and_then(|ids| ids[i]),
        })
    }

    /// Appends a caption.
    pub fn push(&mut self, text: &str, image_id: Option<i64>) {
        if image_id.is_some() && self.image_ids.is_none() {
            self.image_ids = Some(vec![None; self.ends.len()]);
        }
        self.text.push_str(text);
        self.ends.push(self.text.len());
        if let Some(ids) = &mut self.image_ids {
            ids.push(image_id);
        }
    }
}

impl From<Vec<CaptionRecord>> for CaptionList {
    fn from(records: Vec<CaptionRecord>) -> Self {
        let mut list = CaptionList::default();
        for r in &records {
            list.push(&r.text, r.image_id);
        }
        list
    }
}

/// Reads captions as [`read_captions`] does, into a [`CaptionList`]; a JSON list of strings
/// (the hub's `<index>_captions.json`) goes straight into the list's buffer.
pub fn read_caption_list(
    path: impl AsRef<Path>,
    format: Option<CaptionFormat>,
) -> Result<CaptionList> {
    let path = path.as_ref();
    let text = read_utf8(path)?;
    let format = format.unwrap_or_else(|| detect_format(path, &text));
    if format == CaptionFormat::JsonList && text.trim_start().starts_with('[') {
        let mut list = CaptionList::default();
        let mut de = serde_json::Deserializer::from_str(&text);
        let parsed = serde::de::DeserializeSeed::deserialize(ListSeed(&mut list), &mut de)
            .and_then(|()| de.end());
        if parsed.is_ok() {
            return Ok(list);
        }
    }
    // Anything else, and a list that is not all strings (whose error the checked path words).
    let records = match format {
        CaptionFormat::Text => parse_text(path, &text),
        CaptionFormat::JsonList => parse_json_list(path, &text),
        CaptionFormat::Coco => parse_coco(path, &text),
        CaptionFormat::Karpathy => parse_karpathy(path, &text),
    }?;
    Ok(records.into())
}

/// A JSON list of strings, appended to a [`CaptionList`] without a string per item.
struct ListSeed<'a>(&'a mut CaptionList);

impl<'de> serde::de::DeserializeSeed<'de> for ListSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ListSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of strings")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        while seq.next_element_seed(ItemSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// One string of the list, appended where it is read.
struct ItemSeed<'a>(&'a mut CaptionList);

impl<'de> serde::de::DeserializeSeed<'de> for ItemSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ItemSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a caption string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.0.push(v, None);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_caption_list_holds_what_the_records_hold() {
        let dir = tempfile::tempdir().unwrap();
        // Escapes, non-ASCII, an empty caption, whitespace around the items.
        let list = r#" [ "a \"dog\"\n", "café ☕ \u00e9\ud83d\ude00", "", "plain" ] "#;
        for (name, text) in [
            ("list.json", list),
            ("keyed.json", r#"{"1": "b", "0": "a"}"#),
            ("lines.txt", "one\ntwo\r\nthree\n"),
            (
                "coco.json",
                r#"{"annotations": [{"image_id": 7, "caption": "x"}, {"image_id": 9, "caption": "y"}]}"#,
            ),
        ] {
            let p = write(dir.path(), name, text);
            let records = read_captions(&p, None).unwrap();
            let compact = read_caption_list(&p, None).unwrap();
            assert_eq!(compact.len(), records.len(), "{name}");
            for (i, r) in records.iter().enumerate() {
                assert_eq!(compact.record(i).as_ref(), Some(r), "{name} {i}");
            }
            assert_eq!(compact.record(records.len()), None);
        }
        let p = write(dir.path(), "list.json", list);
        assert_eq!(
            read_caption_list(&p, None).unwrap().text(1),
            Some("café ☕ é😀")
        );
    }

    #[test]
    fn a_bad_list_gets_the_checked_paths_error() {
        let dir = tempfile::tempdir().unwrap();
        for (text, want) in [
            (r#"["a", 3]"#, "item 1 is not a string but a number"),
            (r#"["a", "b""#, "JSON"),
            (r#"["a"] x"#, "JSON"),
        ] {
            let p = write(dir.path(), "bad.json", text);
            let e = read_caption_list(&p, None).unwrap_err().to_string();
            let checked = read_captions(&p, None).unwrap_err().to_string();
            assert_eq!(e, checked);
            assert!(
                e.contains(want) || e.to_lowercase().contains(&want.to_lowercase()),
                "{e}"
            );
        }
    }
}
