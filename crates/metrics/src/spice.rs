//! SPICE 1.0 through `spice-1.0.jar`, as pycocoevalcap's `Spice` runs it: the images sorted by
//! id, written as `[{"image_id", "test", "refs"}]` to a temporary file, scored by
//! `java -jar -Xmx8G spice-1.0.jar IN -cache DIR -out OUT -subset -silent` (working directory:
//! the jar's), and read back; the corpus score is the mean of the per-image `All` F-scores.
//!
//! SPICE also needs Stanford CoreNLP 3.6.0 (`stanford-corenlp-3.6.0.jar` and
//! `stanford-corenlp-3.6.0-models.jar` in the jar's `lib/`), which pycocoevalcap downloads on
//! first use. Where they are absent SPICE is reported unavailable, never estimated.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;
use serde_json::Value;

use crate::coco::ImageId;
use crate::ngrams::check_inputs;
use crate::pycompat::np_mean;
use crate::toolkit::INSTALL_HINT;
use crate::EvalError;

/// The jar, relative to the pycocoevalcap package directory.
pub const SPICE_JAR: &str = "spice/spice-1.0.jar";
/// The CoreNLP files SPICE needs, relative to the pycocoevalcap package directory.
pub const CORENLP_JARS: [&str; 2] = [
    "spice/lib/stanford-corenlp-3.6.0.jar",
    "spice/lib/stanford-corenlp-3.6.0-models.jar",
];

/// Corpus and per-image SPICE (the `All` F-score; NaN where SPICE gave none, as the toolkit).
#[derive(Clone, Debug, PartialEq)]
pub struct SpiceScores {
    /// The corpus score: the mean of the `All` F-scores of SPICE's output entries (NaN if
    /// any is NaN).
    pub corpus: f64,
    /// Each image's `All` F-score, in the order of the `ids` passed in.
    pub per_image: Vec<f64>,
}

/// Why SPICE cannot run here, with how to fix it; `None` when it can.
pub fn unavailable_reason(java: &Path, toolkit_dir: Option<&Path>) -> Option<String> {
    let Some(dir) = toolkit_dir else {
        return Some(format!(
            "SPICE unavailable: pycocoevalcap (which ships spice-1.0.jar) was not found; {INSTALL_HINT}"
        ));
    };
    let jar = dir.join(SPICE_JAR);
    if !jar.is_file() {
        return Some(format!(
            "SPICE unavailable: {} is missing; {INSTALL_HINT}",
            jar.display()
        ));
    }
    let missing: Vec<String> = CORENLP_JARS
        .iter()
        .map(|rel| dir.join(rel))
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "SPICE unavailable: it needs Stanford CoreNLP 3.6.0, and {} {} not present. pycocoevalcap \
fetches them on first use (needs network access): run `python3 -c \"from pycocoevalcap.spice.spice \
import Spice; Spice()\"`, or unpack stanford-corenlp-full-2015-12-09.zip and copy \
stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar into {}",
            missing.join(" and "),
            if missing.len() == 1 { "is" } else { "are" },
            dir.join("spice/lib").display()
        ));
    }
    if !crate::toolkit::executable_exists(java) {
        return Some(format!(
            "SPICE unavailable: cannot run Java ({}); install a Java runtime or set SMALLCAP_JAVA",
            java.display()
        ));
    }
    None
}

#[derive(Serialize)]
struct Input<'a> {
    image_id: &'a ImageId,
    test: &'a str,
    refs: &'a [String],
}

fn temp_path(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "smallcap-spice-{}-{nanos}-{tag}.json",
        std::process::id()
    ))
}

/// Runs SPICE over the images `ids` (hypothesis `hyps[i]`, references `refs[i]`); per-image
/// scores are returned in the order of `ids`.
pub fn compute(
    java: &Path,
    toolkit_dir: &Path,
    ids: &[ImageId],
    refs: &[Vec<String>],
    hyps: &[String],
) -> Result<SpiceScores, EvalError> {
    check_inputs(refs, hyps)?;
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by(|&a, &b| ids[a].cmp(&ids[b]));
    let input: Vec<Input> = order
        .iter()
        .map(|&i| Input {
            image_id: &ids[i],
            test: &hyps[i],
            refs: &refs[i],
        })
        .collect();
    let in_path = temp_path("in");
    let out_path = temp_path("out");
    let text = serde_json::to_string_pretty(&input)
        .map_err(|e| EvalError::Spice(format!("cannot encode the input: {e}")))?;
    std::fs::write(&in_path, text).map_err(|source| EvalError::Write {
        path: in_path.clone(),
        source,
    })?;
    let cache = std::env::temp_dir().join("smallcap-spice-cache");
    let jar_dir = toolkit_dir.join("spice");
    let status = Command::new(java)
        .args(["-jar", "-Xmx8G", "spice-1.0.jar"])
        .arg(&in_path)
        .arg("-cache")
        .arg(&cache)
        .arg("-out")
        .arg(&out_path)
        .args(["-subset", "-silent"])
        .current_dir(&jar_dir)
        .stdin(Stdio::null())
        .status();
    let _ = std::fs::remove_file(&in_path);
    let result = match status {
        Ok(s) if s.success() => std::fs::read_to_string(&out_path)
            .map_err(|e| EvalError::Spice(format!("cannot read its output: {e}")))
            .and_then(|text| parse_output(&text, ids)),
        Ok(s) => Err(EvalError::Spice(format!("the jar failed ({s})"))),
        Err(e) => Err(EvalError::Spice(format!(
            "cannot start {}: {e}",
            java.display()
        ))),
    };
    let _ = std::fs::remove_file(&out_path);
    result
}

fn image_id_of(v: &Value) -> Option<ImageId> {
    match v {
        Value::Number(n) => n.as_i64().map(ImageId::Int),
        Value::String(s) => Some(ImageId::Str(s.clone())),
        _ => None,
    }
}

/// Parses SPICE's output file: `[{"image_id", "scores": {"All": {"f": ..}, ..}}, ..]`.
pub fn parse_output(text: &str, ids: &[ImageId]) -> Result<SpiceScores, EvalError> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| EvalError::Spice(format!("malformed output: {e}")))?;
    let items = root
        .as_array()
        .ok_or_else(|| EvalError::Spice("output is not a JSON array".into()))?;
    let mut by_id = std::collections::HashMap::new();
    let mut all_f = Vec::with_capacity(items.len());
    for item in items {
        let id = item
            .get("image_id")
            .and_then(image_id_of)
            .ok_or_else(|| EvalError::Spice("output entry without an image_id".into()))?;
        // The toolkit's float_convert: anything that is not a number becomes NaN.
        let f = item
            .get("scores")
            .and_then(|s| s.get("All"))
            .and_then(|a| a.get("f"))
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN);
        all_f.push(f);
        by_id.insert(id, f);
    }
    let per_image = ids
        .iter()
        .map(|id| {
            by_id
                .get(id)
                .copied()
                .ok_or_else(|| EvalError::Spice(format!("no score for image {id}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SpiceScores {
        corpus: np_mean(&all_f),
        per_image,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_read_per_image_and_averaged() {
        let text = r#"[{"image_id": 2, "scores": {"All": {"f": 0.5, "pr": 1.0, "re": 0.25}}},
                       {"image_id": 1, "scores": {"All": {"f": 0.25}}}]"#;
        let s = parse_output(text, &[ImageId::Int(1), ImageId::Int(2)]).expect("valid");
        assert_eq!(s.per_image, [0.25, 0.5]);
        assert_eq!(s.corpus, 0.375);
        assert!(parse_output(text, &[ImageId::Int(3)]).is_err());
        assert!(parse_output("{}", &[]).is_err());
    }

    #[test]
    fn missing_corenlp_is_reported_with_instructions() {
        let dir = std::env::temp_dir().join(format!("smallcap-spice-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("spice/lib")).expect("mkdir");
        std::fs::write(dir.join(SPICE_JAR), b"not a jar").expect("write");
        let why = unavailable_reason(Path::new("java"), Some(&dir)).expect("unavailable");
        assert!(
            why.contains("Stanford CoreNLP 3.6.0")
                && why.contains("stanford-corenlp-3.6.0-models.jar"),
            "{why}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
