//! The COCO caption JSON formats: gold annotations
//! (`{"images": [{"id": ..}, ..], "annotations": [{"image_id": .., "caption": ".."}, ..]}`) and
//! results (`[{"image_id": .., "caption": ".."}, ..]`), read as pycocotools reads them, with
//! errors that name the file, the entry and the field.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::EvalError;

/// An image id: COCO uses integers; strings are accepted too (Python compares them by value).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum ImageId {
    /// An integer id (COCO's own).
    Int(i64),
    /// A string id.
    Str(String),
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageId::Int(i) => write!(f, "{i}"),
            ImageId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<i64> for ImageId {
    fn from(i: i64) -> ImageId {
        ImageId::Int(i)
    }
}

/// Gold captions: the image list (in file order, first occurrence of each id) and each image's
/// reference captions (in annotation order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GoldCaptions {
    /// The images, in file order, each once (its first occurrence).
    pub images: Vec<ImageId>,
    /// Each image's raw (untokenised) reference captions, in annotation order; may have
    /// entries for ids that `images` does not list.
    pub references: HashMap<ImageId, Vec<String>>,
}

impl GoldCaptions {
    /// Builds gold captions from `(image, captions)` pairs (for in-memory use, e.g. validation).
    pub fn from_pairs<I, S>(pairs: I) -> GoldCaptions
    where
        I: IntoIterator<Item = (ImageId, Vec<S>)>,
        S: Into<String>,
    {
        let mut gold = GoldCaptions::default();
        for (id, caps) in pairs {
            let entry = gold.references.entry(id.clone()).or_insert_with(|| {
                gold.images.push(id);
                Vec::new()
            });
            entry.extend(caps.into_iter().map(Into::into));
        }
        gold
    }
}

/// One predicted caption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// The image the caption is for.
    pub image_id: ImageId,
    /// The caption, raw (untokenised).
    pub caption: String,
}

/// Reads a file as UTF-8 text, with errors that name it.
pub fn read_text(path: &Path) -> Result<String, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Read {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| EvalError::NotUtf8 {
        path: path.display().to_string(),
        offset: e.utf8_error().valid_up_to(),
    })
}

fn parse_json(text: &str, name: &str) -> Result<Value, EvalError> {
    serde_json::from_str(text).map_err(|source| EvalError::Json {
        path: name.to_owned(),
        source,
    })
}

fn format_err(name: &str, message: String) -> EvalError {
    EvalError::Format {
        path: name.to_owned(),
        message,
    }
}

fn image_id(v: Option<&Value>, name: &str, what: &str) -> Result<ImageId, EvalError> {
    match v {
        None => Err(format_err(
            name,
            format!("{what}: missing field \"{}\"", id_field(what)),
        )),
        Some(Value::Number(n)) => n.as_i64().map(ImageId::Int).ok_or_else(|| {
            format_err(
                name,
                format!(
                    "{what}: \"{}\" must be an integer or a string, got {n}",
                    id_field(what)
                ),
            )
        }),
        Some(Value::String(s)) => Ok(ImageId::Str(s.clone())),
        Some(other) => Err(format_err(
            name,
            format!(
                "{what}: \"{}\" must be an integer or a string, got {}",
                id_field(what),
                type_name(other)
            ),
        )),
    }
}

fn id_field(what: &str) -> &'static str {
    if what.starts_with("images[") {
        "id"
    } else {
        "image_id"
    }
}

fn caption(v: Option<&Value>, name: &str, what: &str) -> Result<String, EvalError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        None => Err(format_err(
            name,
            format!("{what}: missing field \"caption\""),
        )),
        Some(other) => Err(format_err(
            name,
            format!(
                "{what}: \"caption\" must be a string, got {}",
                type_name(other)
            ),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses gold annotations from JSON text; `name` is used in error messages.
pub fn parse_gold(text: &str, name: &str) -> Result<GoldCaptions, EvalError> {
    let root = parse_json(text, name)?;
    let obj = root.as_object().ok_or_else(|| {
        format_err(
            name,
            format!(
                "expected a COCO annotation object with \"images\" and \"annotations\", got {}",
                type_name(&root)
            ),
        )
    })?;
    let array = |field: &str| -> Result<&Vec<Value>, EvalError> {
        match obj.get(field) {
            Some(Value::Array(a)) => Ok(a),
            Some(other) => Err(format_err(
                name,
                format!("\"{field}\" must be an array, got {}", type_name(other)),
            )),
            None => Err(format_err(name, format!("missing field \"{field}\""))),
        }
    };
    let mut gold = GoldCaptions::default();
    let mut seen = HashSet::new();
    for (i, img) in array("images")?.iter().enumerate() {
        let what = format!("images[{i}]");
        let o = img.as_object().ok_or_else(|| {
            format_err(
                name,
                format!("{what}: expected an object, got {}", type_name(img)),
            )
        })?;
        let id = image_id(o.get("id"), name, &what)?;
        if seen.insert(id.clone()) {
            gold.images.push(id);
        }
    }
    for (i, ann) in array("annotations")?.iter().enumerate() {
        let what = format!("annotations[{i}]");
        let o = ann.as_object().ok_or_else(|| {
            format_err(
                name,
                format!("{what}: expected an object, got {}", type_name(ann)),
            )
        })?;
        let id = image_id(o.get("image_id"), name, &what)?;
        let cap = caption(o.get("caption"), name, &what)?;
        gold.references.entry(id).or_default().push(cap);
    }
    Ok(gold)
}

/// Parses COCO results (predictions) from JSON text; `name` is used in error messages.
pub fn parse_predictions(text: &str, name: &str) -> Result<Vec<Prediction>, EvalError> {
    let root = parse_json(text, name)?;
    let items = root.as_array().ok_or_else(|| {
        format_err(
            name,
            format!(
                "expected a JSON array of {{\"image_id\", \"caption\"}} objects, got {}",
                type_name(&root)
            ),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let what = format!("entry {i}");
            let o = item.as_object().ok_or_else(|| {
                format_err(
                    name,
                    format!("{what}: expected an object, got {}", type_name(item)),
                )
            })?;
            Ok(Prediction {
                image_id: image_id(o.get("image_id"), name, &what)?,
                caption: caption(o.get("caption"), name, &what)?,
            })
        })
        .collect()
}

/// Reads and parses a gold annotation file.
pub fn load_gold(path: &Path) -> Result<GoldCaptions, EvalError> {
    parse_gold(&read_text(path)?, &path.display().to_string())
}

/// Reads and parses a predictions (results) file.
pub fn load_predictions(path: &Path) -> Result<Vec<Prediction>, EvalError> {
    parse_predictions(&read_text(path)?, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_keeps_image_order_and_reference_order() {
        let g = parse_gold(
            r#"{"images":[{"id":3},{"id":1},{"id":3}],"annotations":[
                {"image_id":1,"caption":"b"},{"image_id":3,"caption":"a"},{"image_id":1,"caption":"c"}]}"#,
            "g.json",
        )
        .expect("valid");
        assert_eq!(g.images, [ImageId::Int(3), ImageId::Int(1)]);
        assert_eq!(g.references[&ImageId::Int(1)], ["b", "c"]);
    }

    #[test]
    fn shape_errors_name_the_field() {
        let cases = [
            (r#"[]"#, "expected a COCO annotation object"),
            (r#"{"annotations":[]}"#, "missing field \"images\""),
            (
                r#"{"images":{},"annotations":[]}"#,
                "\"images\" must be an array",
            ),
            (
                r#"{"images":[{"x":1}],"annotations":[]}"#,
                "images[0]: missing field \"id\"",
            ),
            (
                r#"{"images":[{"id":1.5}],"annotations":[]}"#,
                "images[0]: \"id\" must be an integer or a string",
            ),
            (
                r#"{"images":[],"annotations":[{"image_id":1,"caption":7}]}"#,
                "annotations[0]: \"caption\" must be a string",
            ),
        ];
        for (text, want) in cases {
            let err = parse_gold(text, "g.json").expect_err(text).to_string();
            assert!(err.starts_with("g.json: ") && err.contains(want), "{err}");
        }
        let err = parse_predictions(r#"[{"image_id":1}]"#, "p.json").expect_err("no caption");
        assert!(
            err.to_string()
                .contains("entry 0: missing field \"caption\""),
            "{err}"
        );
        let err = parse_predictions(r#"{"a":1}"#, "p.json").expect_err("object");
        assert!(err.to_string().contains("expected a JSON array"), "{err}");
    }
}
