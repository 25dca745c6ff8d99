//! `smallcap eval` on the eval-dev pack: the scores pycocoevalcap computed, as JSON and per image.

use std::path::PathBuf;
use std::process::Command;

fn pack(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval-dev")
        .join(file)
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(pack("expected.json")).unwrap()).unwrap()
}

#[test]
fn json_scores_equal_pycocoevalcap() {
    let dir = tempfile::tempdir().unwrap();
    let per_image = dir.path().join("per_image.json");
    let out = Command::new(env!("CARGO_BIN_EXE_smallcap"))
        .args(["eval", "--json", "--no-meteor", "--no-spice", "--gold"])
        .arg(pack("gold.json"))
        .arg("--pred")
        .arg(pack("preds.json"))
        .arg("--per-image")
        .arg(&per_image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = expected();
    for key in ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"] {
        let (g, w) = (
            got[key].as_f64().unwrap(),
            want["corpus"][key].as_f64().unwrap(),
        );
        assert!((g - w).abs() < 1e-9, "{key}: {g} vs {w}");
    }
    assert!(got.get("METEOR").is_none() && got.get("SPICE").is_none());
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&per_image).unwrap()).unwrap();
    assert!(!rows.is_empty());
}

#[test]
fn table_and_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_smallcap"))
        .args(["eval", "--no-meteor", "--no-spice", "--gold"])
        .arg(pack("gold.json"))
        .arg("--pred")
        .arg(pack("preds.json"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("CIDEr") && table.contains("Bleu_4"),
        "{table}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("preds.json");
    std::fs::write(&bad, "[{\"image_id\": 1, \"caption\": ").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smallcap"))
        .args(["eval", "--gold"])
        .arg(pack("gold.json"))
        .arg("--pred")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("preds.json"), "{err}");
}

#[test]
fn meteor_native_and_through_the_jar_equal_pycocoevalcap() {
    // Needs pycocoevalcap (its data files, and Java for the jar): scripts/test installs both
    // and points SMALLCAP_PYTHON at them.
    for extra in [&[][..], &["--meteor-jar"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_smallcap"))
            .args(["eval", "--json", "--no-spice", "--gold"])
            .arg(pack("gold.json"))
            .arg("--pred")
            .arg(pack("preds.json"))
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (g, w) = (
            got["METEOR"].as_f64().unwrap_or(f64::NAN),
            expected()["corpus"]["METEOR"].as_f64().unwrap(),
        );
        assert!((g - w).abs() < 1e-9, "{extra:?}: METEOR {g} vs {w}");
    }
}
