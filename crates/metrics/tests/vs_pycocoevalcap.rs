//! pycocoevalcap 1.2 itself (run through Python) against this crate on freshly generated random
//! caption sets: identical PTB tokens, BLEU / ROUGE-L / CIDEr / METEOR (native) within 1e-9, corpus
//! and per image. Runs where Java and pycocoevalcap are installed (`SMALLCAP_PYTHON`
//! names the interpreter, default `python3`); fails in CI if they are not.
//!
//! Each run uses a new seed (printed; set `SMALLCAP_EVAL_SEED` to replay one).

mod common;

use std::process::Command;

use common::{scratch_dir, tools, Rng};
use serde_json::{json, Value};
use smallcap_metrics::{evaluate, EvalOptions, Metric};

const SCRIPT: &str = r#"
import json, sys
from pycocotools.coco import COCO
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.cider.cider import Cider

gold, pred, out = sys.argv[1:4]
coco = COCO(gold)
res = coco.loadRes(pred)
# COCOEvalCap.evaluate with params['image_id'] = cocoRes.getImgIds(), without SPICE.
ids = res.getImgIds()
gts = {i: coco.imgToAnns[i] for i in ids}
rs = {i: res.imgToAnns[i] for i in ids}
tok = PTBTokenizer()
gts = tok.tokenize(gts)
rs = tok.tokenize(rs)
keys = list(gts.keys())
result = {"ids": keys, "refs": [gts[k] for k in keys], "preds": [rs[k][0] for k in keys],
          "corpus": {}, "per_image": [{} for _ in keys]}
for scorer, names in [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Meteor(), ["METEOR"]),
                      (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])]:
    if names[0] == "Bleu_1":
        score, scores = scorer.compute_score(gts, rs, verbose=0)
    else:
        score, scores = scorer.compute_score(gts, rs)
        score, scores = [score], [scores]
    for n, s, ss in zip(names, score, scores):
        result["corpus"][n] = float(s)
        for d, v in zip(result["per_image"], ss):
            d[n] = float(v)
json.dump(result, open(out, "w"))
"#;

const WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "two",
    "A",
    "The",
    "man",
    "woman",
    "dog",
    "dogs",
    "cat",
    "bus",
    "train",
    "pizza",
    "giraffe",
    "kitchen",
    "horse",
    "laptop",
    "sitting",
    "standing",
    "riding",
    "eating",
    "holding",
    "on",
    "in",
    "next",
    "to",
    "of",
    "with",
    "near",
    "at",
    "is",
    "are",
    "red",
    "white",
    "big",
    "small",
    "isn't",
    "man's",
    "they're",
    "can't",
    "U.S.",
    "Mr.",
    "etc.",
    "T-shirt",
    "well-known",
    "10",
    "3.5",
    "1,000",
    "2nd",
    "1/2",
    "$5",
    "50%",
    "&",
    "(",
    ")",
    "\"",
    "'",
    "``",
    "''",
    "...",
    "--",
    "-",
    ",",
    ".",
    "!",
    "?",
    ";",
    ":",
    "|||",
    "é",
    "café",
    "’",
    "“",
    "”",
    "—",
    "½",
    "£",
    "e-mail",
    "www.coco.org",
    "a@b.com",
    "<b>",
    ":)",
    "[",
    "]",
    "{",
    "}",
    "*",
    "/",
];

fn caption(rng: &mut Rng) -> String {
    match rng.below(40) {
        0 => return String::new(),
        1 => return "   ".to_owned(),
        2 => return "... !".to_owned(),
        3 => return "a".to_owned(),
        // A carriage return makes the toolkit's tokenizer start a new line, shifting every
        // later caption onto the wrong image; the crate must reproduce even that.
        4 if rng.chance(0.05) => return "a\rdog".to_owned(),
        _ => {}
    }
    let n = 1 + rng.below(14);
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push_str(rng.pick_str(&[" ", " ", " ", " ", "  ", "", "\n"]));
        }
        s.push_str(rng.pick_str(WORDS));
    }
    s
}

#[test]
fn scores_equal_pycocoevalcap_on_random_caption_sets() {
    let Some(t) = tools("scores_equal_pycocoevalcap_on_random_caption_sets") else {
        return;
    };
    let seed: u64 = std::env::var("SMALLCAP_EVAL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("SMALLCAP_EVAL_SEED={seed}");
    let mut rng = Rng(seed);

    // Gold: images in shuffled id order, 1-6 references each; predictions for most of them.
    let n_images = 150 + rng.below(150);
    let mut ids: Vec<i64> = (0..n_images as i64).map(|i| 10 + i * 3).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i + 1));
    }
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    let mut preds = Vec::new();
    for &id in &ids {
        images.push(json!({"id": id}));
        let refs: Vec<String> = (0..1 + rng.below(6)).map(|_| caption(&mut rng)).collect();
        for r in &refs {
            annotations.push(json!({"image_id": id, "id": annotations.len(), "caption": r}));
        }
        if rng.chance(0.9) {
            let p = if rng.chance(0.15) {
                refs[rng.below(refs.len())].clone()
            } else {
                caption(&mut rng)
            };
            preds.push(json!({"image_id": id, "caption": p}));
        }
    }
    if preds.is_empty() {
        preds.push(json!({"image_id": ids[0], "caption": "a dog"}));
    }
    // Predictions in an order unrelated to the gold order.
    for i in (1..preds.len()).rev() {
        preds.swap(i, rng.below(i + 1));
    }
    let dir = scratch_dir("vs-py");
    let gold_path = dir.join("gold.json");
    let pred_path = dir.join("preds.json");
    let out_path = dir.join("out.json");
    let gold = json!({"info": {}, "licenses": [], "type": "captions", "images": images,
                      "annotations": annotations});
    std::fs::write(&gold_path, gold.to_string()).expect("write gold");
    std::fs::write(&pred_path, Value::Array(preds).to_string()).expect("write preds");
    let script = dir.join("run.py");
    std::fs::write(&script, SCRIPT).expect("write script");

    let status = Command::new(&t.python)
        .arg(&script)
        .args([&gold_path, &pred_path, &out_path])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run pycocoevalcap");
    assert!(status.success(), "pycocoevalcap failed (seed {seed})");
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(&out_path).expect("read")).expect("json");

    let opts = EvalOptions {
        metrics: vec![Metric::Bleu, Metric::Meteor, Metric::Rouge, Metric::Cider],
        toolkit_dir: Some(t.toolkit_dir.clone()),
        java: Some(t.java.clone()),
        ..EvalOptions::default()
    };
    let got = evaluate(&gold_path, &pred_path, &opts).expect("evaluate");
    let _ = std::fs::remove_dir_all(&dir);

    let want_ids: Vec<String> = want["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.to_string())
        .collect();
    let got_ids: Vec<String> = got
        .per_image
        .iter()
        .map(|i| i.image_id.to_string())
        .collect();
    assert_eq!(
        got_ids, want_ids,
        "evaluated images and order (seed {seed})"
    );
    for (i, refs) in got.tokenized_refs.iter().enumerate() {
        let w: Vec<&str> = want["refs"][i]
            .as_array()
            .expect("refs")
            .iter()
            .map(|v| v.as_str().expect("str"))
            .collect();
        assert_eq!(
            refs, &w,
            "tokenised references of image {} (seed {seed})",
            got_ids[i]
        );
        assert_eq!(
            got.tokenized_preds[i],
            want["preds"][i].as_str().expect("str"),
            "tokenised prediction of image {} (seed {seed})",
            got_ids[i]
        );
    }
    for (name, tol) in [
        ("Bleu_1", 1e-9),
        ("Bleu_2", 1e-9),
        ("Bleu_3", 1e-9),
        ("Bleu_4", 1e-9),
        ("ROUGE_L", 1e-9),
        ("CIDEr", 1e-9),
        ("METEOR", 1e-9),
    ] {
        let w = want["corpus"][name].as_f64().expect("corpus");
        let g = got.corpus.get(name).expect("ours");
        let mut worst = (g - w).abs();
        for (i, img) in got.per_image.iter().enumerate() {
            let w = want["per_image"][i][name].as_f64().expect("per image");
            worst = worst.max((img.scores.get(name).expect("ours") - w).abs());
        }
        eprintln!("{name}: largest difference {worst:e}");
        assert!(worst <= tol, "{name} differs by {worst} (seed {seed})");
    }
}
