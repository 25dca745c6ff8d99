//! Bad input and report format: each case gets the toolkit's behaviour where it has one
//! (pycocotools/pycocoevalcap fail on unknown images, duplicate predictions and images without
//! references, and score empty captions), otherwise a clear error naming the file and field.

mod common;

use std::path::{Path, PathBuf};

use common::scratch_dir;
use smallcap_metrics::coco::{GoldCaptions, ImageId, Prediction};
use smallcap_metrics::{evaluate, evaluate_data, EvalError, EvalOptions, Metric};

fn rust_only() -> EvalOptions {
    EvalOptions {
        metrics: vec![Metric::Bleu, Metric::Rouge, Metric::Cider],
        ..EvalOptions::default()
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

const GOLD: &str = r#"{"images": [{"id": 1}, {"id": 2}, {"id": 3}],
  "annotations": [{"image_id": 1, "caption": "a dog on a bench"},
                  {"image_id": 1, "caption": "a brown dog sitting"},
                  {"image_id": 2, "caption": "two cats on a bed"}]}"#;

fn run(preds: &str) -> Result<smallcap_metrics::EvalReport, EvalError> {
    let dir = scratch_dir("bad");
    let g = write(&dir, "gold.json", GOLD.as_bytes());
    let p = write(&dir, "preds.json", preds.as_bytes());
    let r = evaluate(&g, &p, &rust_only());
    let _ = std::fs::remove_dir_all(&dir);
    r
}

#[test]
fn prediction_for_an_image_missing_from_gold_is_an_error() {
    let err = run(r#"[{"image_id": 1, "caption": "a dog"}, {"image_id": 9, "caption": "x"}]"#)
        .expect_err("unknown image");
    assert!(
        matches!(err, EvalError::UnknownImage { index: 1, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("preds.json") && msg.contains("image 9"),
        "{msg}"
    );
}

#[test]
fn duplicate_predictions_are_an_error() {
    let err = run(
        r#"[{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "x"},
                      {"image_id": 1, "caption": "another"}]"#,
    )
    .expect_err("duplicate");
    assert!(
        matches!(
            err,
            EvalError::DuplicatePrediction {
                first: 0,
                second: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("image 1 has more than one prediction"));
}

#[test]
fn image_without_references_is_an_error() {
    let err = run(r#"[{"image_id": 3, "caption": "a dog"}]"#).expect_err("no references");
    assert!(matches!(err, EvalError::NoReferences { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains("gold.json: image 3 has no reference captions"));
}

#[test]
fn empty_prediction_list_is_an_error() {
    let err = run("[]").expect_err("empty");
    assert!(matches!(err, EvalError::NoPredictions { .. }), "{err:?}");
}

#[test]
fn empty_captions_are_scored_as_the_toolkit_scores_them() {
    // An empty hypothesis has no n-grams and length 0: BLEU's brevity penalty
    // exp(1 - (0 + 1e-9)/1e-15 ...) is 0, CIDEr and ROUGE-L have nothing in common.
    let r =
        run(r#"[{"image_id": 1, "caption": ""}, {"image_id": 2, "caption": "two cats on a bed"}]"#)
            .expect("scored");
    let empty = &r.per_image[0].scores;
    assert_eq!(r.tokenized_preds[0], "");
    assert_eq!(empty.bleu_4, Some(0.0));
    assert_eq!(empty.rouge_l, Some(0.0));
    assert_eq!(empty.cider, Some(0.0));
    // The exact copy of the only reference gets ROUGE-L 1.
    assert_eq!(r.per_image[1].scores.rouge_l, Some(1.0));
}

#[test]
fn non_utf8_and_malformed_json_are_errors_naming_the_file() {
    let dir = scratch_dir("enc");
    let g = write(&dir, "gold.json", GOLD.as_bytes());
    let bad = write(
        &dir,
        "latin1.json",
        b"[{\"image_id\": 1, \"caption\": \"caf\xe9\"}]",
    );
    let err = evaluate(&g, &bad, &rust_only()).expect_err("not utf-8");
    assert!(
        matches!(err, EvalError::NotUtf8 { offset: 32, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("latin1.json"));
    let broken = write(&dir, "broken.json", b"[{\"image_id\": 1, \"caption\": ");
    let err = evaluate(&g, &broken, &rust_only()).expect_err("malformed");
    assert!(matches!(err, EvalError::Json { .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with(&format!("{}: malformed JSON", broken.display())));
    let missing = dir.join("nope.json");
    let err = evaluate(&missing, &broken, &rust_only()).expect_err("missing file");
    assert!(err.to_string().contains("nope.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unavailable_meteor_and_spice_are_notes_not_numbers() {
    // A toolkit directory with spice-1.0.jar but neither the METEOR jar nor CoreNLP 3.6.0.
    let dir = scratch_dir("nojars");
    std::fs::create_dir_all(dir.join("spice/lib")).expect("mkdir");
    write(&dir, "spice/spice-1.0.jar", b"placeholder");
    let opts = EvalOptions {
        toolkit_dir: Some(dir.clone()),
        ..EvalOptions::default()
    };
    let gold = GoldCaptions::from_pairs([(ImageId::Int(7), vec!["a red bus", "a bus"])]);
    let preds = [Prediction {
        image_id: ImageId::Int(7),
        caption: "a red bus".into(),
    }];
    let r = evaluate_data(&gold, &preds, &opts).expect("evaluated");
    let _ = std::fs::remove_dir_all(&dir);
    let json = r.to_json();
    assert!(
        !json.contains("SPICE") && !json.contains("METEOR"),
        "{json}"
    );
    assert!(
        json.starts_with("{\"Bleu_1\":") && json.contains("\"ROUGE_L\":1.0"),
        "{json}"
    );
    let notes = r.notes.join("\n");
    assert!(
        notes.contains("METEOR unavailable") && notes.contains("pip install pycocoevalcap"),
        "{notes}"
    );
    assert!(
        notes.contains("SPICE unavailable") && notes.contains("Stanford CoreNLP 3.6.0"),
        "{notes}"
    );
    let table = r.table();
    assert!(
        table.contains("SPICE")
            && table.contains("n/a")
            && table.contains("note: SPICE unavailable"),
        "{table}"
    );
}

#[test]
fn per_image_file_is_written_atomically_in_the_documented_format() {
    let r = run(r#"[{"image_id": 2, "caption": "two cats"}, {"image_id": 1, "caption": "a dog"}]"#)
        .expect("scored");
    let dir = scratch_dir("out");
    let path = dir.join("per_image.json");
    r.write_per_image(&path).expect("written");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let items = v.as_array().expect("array");
    // Gold order (1 before 2), keys in report order.
    assert_eq!(items[0]["image_id"], 1);
    assert_eq!(items[1]["image_id"], 2);
    let keys: Vec<&str> = items[0]
        .as_object()
        .expect("obj")
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr", "ROUGE_L", "image_id"]
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // A directory that does not exist: an error, and no file.
    let bad = dir.join("missing/dir/out.json");
    assert!(matches!(
        r.write_per_image(&bad),
        Err(EvalError::Write { .. })
    ));
    assert!(!bad.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
