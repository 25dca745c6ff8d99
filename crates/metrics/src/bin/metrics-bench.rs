//! Benchmark: this crate against pycocoevalcap 1.2 on the same files in the same run.
//!
//! Generates a deterministic COCO-style data set (default 5,000 images × 5 references plus one
//! prediction each), writes `gold.json` and `preds.json`, then times, end to end, (1) this
//! crate's [`evaluate`] with every metric but SPICE (METEOR native, its paraphrase cache in the
//! bench directory: built by an untimed first run, whose time is reported apart), (2) the same
//! with METEOR through the jar, and (3) a Python process that runs pycocotools + pycocoevalcap
//! the way COCOEvalCap does (without SPICE) on the same files. Also times each Rust stage alone,
//! checks that all report the same scores, and prints a Markdown table.
//!
//! ```text
//! metrics-bench [--images N] [--refs N] [--repeat N] [--dir DIR] [--python PATH] [--no-python]
//! ```
//! The Python interpreter defaults to `$SMALLCAP_PYTHON`, else `python3`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use smallcap_metrics::eval::write_atomic;
use smallcap_metrics::ptb_tokenizer::tokenize_captions;
use smallcap_metrics::{bleu, cider, evaluate, meteor, rouge, toolkit, EvalOptions, Metric};
use smallcap_util::rng::SplitMix64;

const PY_SCRIPT: &str = r#"
import json, sys, time
t0 = time.time()
from pycocotools.coco import COCO
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.cider.cider import Cider
stages = {"import": time.time() - t0}
gold, pred, out = sys.argv[1:4]
t = time.time()
coco = COCO(gold)
res = coco.loadRes(pred)
ids = res.getImgIds()
gts = {i: coco.imgToAnns[i] for i in ids}
rs = {i: res.imgToAnns[i] for i in ids}
stages["load"] = time.time() - t
t = time.time()
tok = PTBTokenizer()
gts = tok.tokenize(gts)
rs = tok.tokenize(rs)
stages["tokenize"] = time.time() - t
corpus = {}
for scorer, names in [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Meteor(), ["METEOR"]),
                      (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])]:
    t = time.time()
    if names[0] == "Bleu_1":
        score, _ = scorer.compute_score(gts, rs, verbose=0)
    else:
        score, _ = scorer.compute_score(gts, rs)
        score = [score]
    stages[scorer.method()] = time.time() - t
    for n, s in zip(names, score):
        corpus[n] = float(s)
stages["total_in_python"] = time.time() - t0
json.dump({"corpus": corpus, "stages": stages}, open(out, "w"))
"#;

const DETS: &[&str] = &[
    "a", "an", "the", "two", "three", "some", "A", "The", "Several",
];
const ADJS: &[&str] = &[
    "", "", "", "small ", "large ", "red ", "white ", "young ", "old ", "wooden ", "busy ",
];
const NOUNS: &[&str] = &[
    "man",
    "woman",
    "dog",
    "cat",
    "bus",
    "train",
    "giraffe",
    "plate",
    "pizza",
    "surfer",
    "kitchen",
    "horse",
    "laptop",
    "boy",
    "girl",
    "table",
    "street",
    "bench",
    "elephant",
    "bike",
    "skateboarder",
    "tennis player",
    "sandwich",
    "clock",
    "umbrella",
    "zebra",
    "airplane",
];
const VERBS: &[&str] = &[
    "sitting on",
    "standing next to",
    "riding",
    "eating",
    "holding",
    "walking down",
    "looking at",
    "parked on",
    "lying on",
    "jumping over",
    "playing with",
    "flying over",
];
const MODS: &[&str] = &[
    "",
    "",
    "",
    " in the snow",
    " at night",
    ", while smiling",
    " on a sunny day",
    " (in the background)",
    " - very close",
    " near the water's edge",
    " that isn't moving",
    " with a \"stop\" sign",
    " next to a man's car",
    " & friends",
    " 10 feet away",
];
const ENDS: &[&str] = &["", ".", " .", "!", "..."];

/// One of `items`, uniformly (a plain modulo, so the generated captions stay as they were).
fn pick<'a>(rng: &mut SplitMix64, items: &[&'a str]) -> &'a str {
    items[(rng.next_u64() % items.len() as u64) as usize]
}

fn sentence(rng: &mut SplitMix64) -> String {
    format!(
        "{} {}{} {} {} {}{}{}",
        pick(rng, DETS),
        pick(rng, ADJS),
        pick(rng, NOUNS),
        pick(rng, VERBS),
        pick(rng, DETS).to_lowercase(),
        pick(rng, NOUNS),
        pick(rng, MODS),
        pick(rng, ENDS)
    )
}

struct Args {
    images: usize,
    refs: usize,
    repeat: usize,
    dir: Option<PathBuf>,
    python: PathBuf,
    run_python: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        images: 5000,
        refs: 5,
        repeat: 1,
        dir: None,
        python: toolkit::python(),
        run_python: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--images" => a.images = value()?.parse().map_err(|e| format!("--images: {e}"))?,
            "--refs" => a.refs = value()?.parse().map_err(|e| format!("--refs: {e}"))?,
            "--repeat" => a.repeat = value()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--dir" => a.dir = Some(PathBuf::from(value()?)),
            "--python" => a.python = PathBuf::from(value()?),
            "--no-python" => a.run_python = false,
            "-h" | "--help" => {
                return Err(
                    "usage: metrics-bench [--images N] [--refs N] [--repeat N] [--dir DIR] \
                            [--python PATH] [--no-python]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.images == 0 || a.refs == 0 || a.repeat == 0 {
        return Err("--images, --refs and --repeat must be positive".into());
    }
    Ok(a)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> Result<T, String>) -> Result<(Duration, T), String> {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..n {
        let t = Instant::now();
        let v = f()?;
        let d = t.elapsed();
        if best.as_ref().is_none_or(|(b, _)| d < *b) {
            best = Some((d, v));
        }
    }
    best.ok_or_else(|| "no run".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("smallcap-metrics-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    // Data.
    let mut rng = SplitMix64(20230601);
    let mut images = Vec::with_capacity(args.images);
    let mut annotations = Vec::with_capacity(args.images * args.refs);
    let mut preds = Vec::with_capacity(args.images);
    for i in 0..args.images {
        let id = 100_000 + i as i64 * 7;
        images.push(json!({"id": id}));
        for _ in 0..args.refs {
            let n = annotations.len();
            annotations.push(json!({"image_id": id, "id": n, "caption": sentence(&mut rng)}));
        }
        preds.push(json!({"image_id": id, "caption": sentence(&mut rng)}));
    }
    let gold_path = dir.join("gold.json");
    let pred_path = dir.join("preds.json");
    let gold = json!({"info": {}, "licenses": [], "type": "captions", "images": images,
                      "annotations": annotations});
    write_atomic(&gold_path, gold.to_string().as_bytes()).map_err(|e| e.to_string())?;
    write_atomic(&pred_path, Value::Array(preds).to_string().as_bytes())
        .map_err(|e| e.to_string())?;

    // Rust, end to end: a first run builds the paraphrase cache, then the timed runs.
    let cache_dir = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache_dir);
    let opts = EvalOptions {
        meteor_cache_dir: Some(cache_dir.clone()),
        ..EvalOptions::without_spice()
    };
    let (rust_first, _) = best_of(1, || {
        evaluate(&gold_path, &pred_path, &opts).map_err(|e| e.to_string())
    })?;
    let (rust_total, report) = best_of(args.repeat, || {
        evaluate(&gold_path, &pred_path, &opts).map_err(|e| e.to_string())
    })?;
    if !report.notes.is_empty() {
        eprintln!("notes: {:?}", report.notes);
    }
    // Rust, end to end, METEOR through the jar.
    let jar_opts = EvalOptions {
        meteor_jar: true,
        ..EvalOptions::without_spice()
    };
    let (rust_jar_total, jar_report) = best_of(args.repeat, || {
        evaluate(&gold_path, &pred_path, &jar_opts).map_err(|e| e.to_string())
    })?;
    // Rust, end to end, without METEOR.
    let rust_only = EvalOptions {
        metrics: vec![Metric::Bleu, Metric::Rouge, Metric::Cider],
        ..EvalOptions::default()
    };
    let (rust_no_meteor, _) = best_of(args.repeat, || {
        evaluate(&gold_path, &pred_path, &rust_only).map_err(|e| e.to_string())
    })?;

    // Rust, stage by stage (on the report's own inputs).
    let refs = &report.tokenized_refs;
    let hyps = &report.tokenized_preds;
    let gold_caps = smallcap_metrics::coco::load_gold(&gold_path).map_err(|e| e.to_string())?;
    let flat: Vec<&str> = gold_caps
        .images
        .iter()
        .flat_map(|id| gold_caps.references[id].iter().map(String::as_str))
        .collect();
    let (t_tok, _) = best_of(args.repeat, || Ok(tokenize_captions(&flat)))?;
    let (t_bleu, _) = best_of(args.repeat, || {
        bleu::compute(refs, hyps).map_err(|e| e.to_string())
    })?;
    let (t_rouge, _) = best_of(args.repeat, || {
        rouge::compute(refs, hyps).map_err(|e| e.to_string())
    })?;
    let (t_cider, _) = best_of(args.repeat, || {
        cider::compute(refs, hyps).map_err(|e| e.to_string())
    })?;
    let java = toolkit::java(None);
    let toolkit_dir = toolkit::toolkit_dir(None);
    let mut native_load = None;
    let mut native_score = None;
    if let Some(tk) = toolkit_dir
        .as_ref()
        .filter(|tk| meteor::native_unavailable_reason(Some(tk)).is_none())
    {
        let (t, m) = best_of(args.repeat, || {
            meteor::NativeMeteor::load(tk, Some(&cache_dir)).map_err(|e| e.to_string())
        })?;
        native_load = Some(t);
        let (t, _) = best_of(args.repeat, || {
            m.compute(refs, hyps).map_err(|e| e.to_string())
        })?;
        native_score = Some(t);
    }
    let meteor_time = match &toolkit_dir {
        Some(tk) if meteor::unavailable_reason(&java, Some(tk)).is_none() => {
            let (t, _) = best_of(args.repeat, || {
                let mut m = meteor::Meteor::start(&java, tk).map_err(|e| e.to_string())?;
                m.compute(refs, hyps).map_err(|e| e.to_string())
            })?;
            Some(t)
        }
        _ => None,
    };

    // Python, end to end (interpreter start, imports, JSON, both JVM runs, all scorers).
    let mut py: Option<(Duration, Value)> = None;
    if args.run_python {
        let script = dir.join("pycocoevalcap_bench.py");
        std::fs::write(&script, PY_SCRIPT).map_err(|e| e.to_string())?;
        let out = dir.join("pycocoevalcap_scores.json");
        py = Some(best_of(args.repeat, || {
            let status = Command::new(&args.python)
                .arg(&script)
                .args([&gold_path, &pred_path, &out])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("cannot run {}: {e}", args.python.display()))?;
            if !status.success() {
                return Err(format!("pycocoevalcap run failed ({status})"));
            }
            let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
            serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())
        })?);
    }

    // Report.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "Data: {} images × {} references + 1 prediction each ({} captions); machine: {} ({} \
         hardware threads); best of {} run(s).\n",
        args.images,
        args.refs,
        args.images * (args.refs + 1),
        cpu_model(),
        threads,
        args.repeat
    );
    println!("| stage | smallcap-metrics (Rust) | pycocoevalcap 1.2 (Python + Java) |");
    println!("|---|---:|---:|");
    let stage = |v: &Option<(Duration, Value)>, key: &str| -> String {
        v.as_ref()
            .and_then(|(_, j)| j["stages"][key].as_f64())
            .map(|s| format!("{s:.3} s"))
            .unwrap_or_else(|| "–".into())
    };
    let tok_py = py
        .as_ref()
        .and_then(|(_, j)| j["stages"]["tokenize"].as_f64())
        .map(|s| format!("{s:.3} s (refs + preds)"))
        .unwrap_or_else(|| "–".into());
    println!(
        "| PTB tokenise references | {:.3} s | {tok_py} |",
        secs(t_tok)
    );
    println!(
        "| BLEU-1..4 | {:.3} s | {} |",
        secs(t_bleu),
        stage(&py, "Bleu")
    );
    let or_unavailable = |t: Option<Duration>| {
        t.map(|t| format!("{:.3} s", secs(t)))
            .unwrap_or_else(|| "unavailable".into())
    };
    println!(
        "| METEOR native: load data (paraphrase table from its cache) | {} | – |",
        or_unavailable(native_load)
    );
    println!(
        "| METEOR native: score | {} | – |",
        or_unavailable(native_score)
    );
    println!(
        "| METEOR through the jar (incl. JVM start) | {} | {} |",
        or_unavailable(meteor_time),
        stage(&py, "METEOR")
    );
    println!(
        "| ROUGE-L | {:.3} s | {} |",
        secs(t_rouge),
        stage(&py, "Rouge")
    );
    println!(
        "| CIDEr-D | {:.3} s | {} |",
        secs(t_cider),
        stage(&py, "CIDEr")
    );
    let py_total = py.as_ref().map(|(d, _)| secs(*d));
    println!(
        "| **end to end** (all but SPICE; METEOR native) | **{:.3} s** | **{}** |",
        secs(rust_total),
        py_total
            .map(|s| format!("{s:.3} s"))
            .unwrap_or_else(|| "–".into())
    );
    println!(
        "| end to end, first run (builds the paraphrase cache) | {:.3} s | – |",
        secs(rust_first)
    );
    println!(
        "| end to end, METEOR through the jar | {:.3} s | – |",
        secs(rust_jar_total)
    );
    let py_no_meteor = py.as_ref().and_then(|(_, j)| {
        Some(j["stages"]["total_in_python"].as_f64()? - j["stages"]["METEOR"].as_f64()?)
    });
    println!(
        "| end to end without METEOR (BLEU, ROUGE-L, CIDEr) | {:.3} s | {} (in-process, excl. interpreter start) |",
        secs(rust_no_meteor),
        py_no_meteor
            .map(|s| format!("{s:.3} s"))
            .unwrap_or_else(|| "–".into())
    );
    if let Some(p) = py_total {
        println!(
            "\nEnd-to-end speed-up, all but SPICE: {:.1}×",
            p / secs(rust_total)
        );
    }
    if let Some(p) = py_no_meteor {
        println!(
            "End-to-end speed-up without METEOR: {:.1}×",
            p / secs(rust_no_meteor)
        );
    }
    let mut worst_jar: f64 = 0.0;
    for ((_, native), (_, jar)) in report
        .corpus
        .entries()
        .iter()
        .zip(jar_report.corpus.entries())
    {
        if let (Some(n), Some(j)) = (native, jar) {
            worst_jar = worst_jar.max((n - j).abs());
        }
    }
    println!("Largest corpus-score difference, METEOR native vs jar run: {worst_jar:e}");
    if let Some((_, j)) = &py {
        let mut worst: f64 = 0.0;
        for (name, ours) in report.corpus.entries() {
            if let (Some(o), Some(t)) = (ours, j["corpus"][name].as_f64()) {
                worst = worst.max((o - t).abs());
            }
        }
        println!("Largest corpus-score difference between the two: {worst:e}");
    }
    println!("\nScores: {}", report.to_json());
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("metrics-bench: {e}");
        std::process::exit(1);
    }
}
