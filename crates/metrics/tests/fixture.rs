//! The eval-dev fixture: tokens, BLEU, ROUGE-L and CIDEr (and METEOR, native and through the jar,
//! where Java and pycocoevalcap are installed) against the values pycocoevalcap 1.2 computed.

mod common;

use std::collections::HashMap;

use common::fixture;
use serde_json::Value;
use smallcap_metrics::coco::{load_gold, load_predictions};
use smallcap_metrics::eval::Evaluator;
use smallcap_metrics::{EvalOptions, Metric};

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("read expected.json");
    serde_json::from_str(&text).expect("parse expected.json")
}

fn report(metrics: Vec<Metric>) -> smallcap_metrics::EvalReport {
    report_with(EvalOptions {
        metrics,
        ..EvalOptions::default()
    })
}

fn report_with(opts: EvalOptions) -> smallcap_metrics::EvalReport {
    let gold = load_gold(&fixture("gold.json")).expect("gold");
    let preds = load_predictions(&fixture("preds.json")).expect("preds");
    Evaluator::new(&opts)
        .expect("evaluator")
        .evaluate_data(&gold, &preds, "gold.json", "preds.json")
        .expect("evaluate")
}

/// Largest absolute difference between our value and pycocoevalcap's for each metric.
fn compare(
    report: &smallcap_metrics::EvalReport,
    exp: &Value,
    names: &[&str],
) -> HashMap<String, f64> {
    let mut worst = HashMap::new();
    let per_image = exp["per_image"].as_object().expect("per_image");
    assert_eq!(report.per_image.len(), per_image.len(), "number of images");
    for name in names {
        let want = exp["corpus"][*name].as_f64().expect("corpus value");
        let got = report
            .corpus
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let mut d = (got - want).abs();
        for img in &report.per_image {
            let key = img.image_id.to_string();
            let want = per_image[&key][*name].as_f64().expect("per-image value");
            let got = img.scores.get(name).expect("per-image score");
            d = d.max((got - want).abs());
        }
        worst.insert((*name).to_owned(), d);
    }
    worst
}

#[test]
fn tokens_equal_the_toolkits() {
    let exp = expected();
    let r = report(vec![Metric::Bleu]);
    for (img, refs) in r.per_image.iter().zip(&r.tokenized_refs) {
        let key = img.image_id.to_string();
        let want: Vec<&str> = exp["tokenized_refs"][&key]
            .as_array()
            .expect("refs")
            .iter()
            .map(|v| v.as_str().expect("string"))
            .collect();
        assert_eq!(refs, &want, "references of image {key}");
    }
    for (img, hyp) in r.per_image.iter().zip(&r.tokenized_preds) {
        let key = img.image_id.to_string();
        assert_eq!(
            exp["tokenized_preds"][&key][0].as_str().expect("pred"),
            hyp,
            "prediction of image {key}"
        );
    }
}

#[test]
fn bleu_rouge_cider_equal_the_toolkits_to_1e_9() {
    let exp = expected();
    let r = report(vec![Metric::Bleu, Metric::Rouge, Metric::Cider]);
    let names = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"];
    let worst = compare(&r, &exp, &names);
    eprintln!("largest absolute differences: {worst:?}");
    for name in names {
        assert!(worst[name] <= 1e-9, "{name}: off by {}", worst[name]);
    }
    // Evaluation order is the gold file's image order.
    let order: Vec<String> = r.per_image.iter().map(|i| i.image_id.to_string()).collect();
    let want: Vec<String> = exp["per_image"]
        .as_object()
        .expect("obj")
        .keys()
        .cloned()
        .collect();
    let mut sorted_want = want.clone();
    sorted_want.sort_by_key(|k| k.parse::<i64>().unwrap_or(0));
    assert_eq!(order, sorted_want);
}

#[test]
fn meteor_equals_the_toolkits_to_1e_4() {
    if common::tools("meteor_equals_the_toolkits_to_1e_4").is_none() {
        return;
    }
    let exp = expected();
    let r = report(vec![Metric::Meteor]);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let worst = compare(&r, &exp, &["METEOR"]);
    eprintln!("largest absolute METEOR difference: {}", worst["METEOR"]);
    assert!(worst["METEOR"] <= 1e-4, "METEOR off by {}", worst["METEOR"]);
}

#[test]
fn meteor_through_the_jar_equals_the_toolkits_to_1e_12() {
    if common::tools("meteor_through_the_jar_equals_the_toolkits_to_1e_12").is_none() {
        return;
    }
    let exp = expected();
    let r = report_with(EvalOptions {
        metrics: vec![Metric::Meteor],
        meteor_jar: true,
        ..EvalOptions::default()
    });
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let worst = compare(&r, &exp, &["METEOR"]);
    eprintln!(
        "largest absolute METEOR difference (jar): {}",
        worst["METEOR"]
    );
    assert!(
        worst["METEOR"] <= 1e-12,
        "METEOR off by {}",
        worst["METEOR"]
    );
}
