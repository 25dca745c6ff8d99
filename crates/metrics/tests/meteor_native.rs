//! The native METEOR against METEOR 1.5 itself: the eval-dev fixture's METEOR values (computed by
//! pycocoevalcap 1.2), the jar's statistics lines and scores on random caption sets that exercise
//! every matcher and on adversarial strings (normalisation, case, Unicode), and the jar's stemmer
//! word by word.
//!
//! The native scorer needs pycocoevalcap's data files (not Java); the comparisons with the jar
//! need Java too. Like the other toolkit tests they fail in CI when these are missing and are
//! skipped elsewhere.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{fixture, Rng};
use serde_json::Value;
use smallcap_metrics::coco::{load_gold, load_predictions};
use smallcap_metrics::eval::Evaluator;
use smallcap_metrics::meteor::java::string_hash;
use smallcap_metrics::meteor::{Meteor, NativeMeteor, METEOR_JAR, PARAPHRASE_TABLE};
use smallcap_metrics::{toolkit, EvalOptions, Metric};

/// The pycocoevalcap package directory if it has METEOR's data files (see [`common::tools`]
/// for the CI policy).
fn data_dir(test: &str) -> Option<PathBuf> {
    let dir = toolkit::toolkit_dir(None);
    let problem = match &dir {
        None => "pycocoevalcap not found (set SMALLCAP_COCOEVAL_DIR or SMALLCAP_PYTHON)".to_owned(),
        Some(d) if !d.join(METEOR_JAR).is_file() || !d.join(PARAPHRASE_TABLE).is_file() => {
            format!("{} lacks METEOR's data files", d.display())
        }
        Some(d) => return Some(d.clone()),
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {problem}; CI must provide pycocoevalcap");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {problem}");
    None
}

/// A fresh cache directory for one test (so tests never share a half-written cache).
fn cache_dir(tag: &str) -> PathBuf {
    common::scratch_dir(tag)
}

#[test]
fn native_meteor_equals_the_fixture() {
    let Some(dir) = data_dir("native_meteor_equals_the_fixture") else {
        return;
    };
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
    let exp: Value = serde_json::from_str(&text).expect("parse expected.json");
    let gold = load_gold(&fixture("gold.json")).expect("gold");
    let preds = load_predictions(&fixture("preds.json")).expect("preds");
    let cache = cache_dir("meteor-fixture");
    let opts = EvalOptions {
        metrics: vec![Metric::Meteor],
        toolkit_dir: Some(dir),
        meteor_cache_dir: Some(cache.clone()),
        ..EvalOptions::default()
    };
    // Twice: the first run builds the paraphrase cache, the second reads it.
    for round in 0..2 {
        let r = Evaluator::new(&opts)
            .expect("evaluator")
            .evaluate_data(&gold, &preds, "gold.json", "preds.json")
            .expect("evaluate");
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        let want = exp["corpus"]["METEOR"].as_f64().expect("corpus METEOR");
        let got = r.corpus.meteor.expect("METEOR");
        let mut worst = (got - want).abs();
        for img in &r.per_image {
            let want = exp["per_image"][img.image_id.to_string()]["METEOR"]
                .as_f64()
                .expect("per-image METEOR");
            worst = worst.max((img.scores.meteor.expect("METEOR") - want).abs());
        }
        eprintln!("round {round}: largest absolute METEOR difference {worst:e}");
        assert!(worst <= 1e-12, "METEOR off by {worst}");
    }
    let _ = std::fs::remove_dir_all(&cache);
}

/// Real caption words: the eval-dev fixture's tokenised references and predictions.
fn caption_vocabulary() -> (Vec<Vec<String>>, Vec<String>) {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
    let exp: Value = serde_json::from_str(&text).expect("parse expected.json");
    let mut captions: Vec<Vec<String>> = Vec::new();
    for key in ["tokenized_refs", "tokenized_preds"] {
        for caps in exp[key].as_object().expect("object").values() {
            for c in caps.as_array().expect("array") {
                let words = c.as_str().expect("string").split(' ');
                captions.push(words.filter(|w| !w.is_empty()).map(str::to_owned).collect());
            }
        }
    }
    let words: BTreeSet<String> = captions.iter().flatten().cloned().collect();
    (captions, words.into_iter().collect())
}

/// Words that make the stem, synonym and paraphrase matchers fire, and the normaliser work.
const EXTRA: &[&str] = &[
    "dogs",
    "running",
    "runs",
    "ran",
    "sitting",
    "sits",
    "seated",
    "rides",
    "riding",
    "rode",
    "men",
    "women",
    "children",
    "kids",
    "child",
    "kid",
    "people",
    "persons",
    "person",
    "guy",
    "guys",
    "lady",
    "ladies",
    "gentleman",
    "sofa",
    "couch",
    "settee",
    "picture",
    "photo",
    "photograph",
    "image",
    "big",
    "large",
    "huge",
    "small",
    "little",
    "tiny",
    "automobile",
    "car",
    "cars",
    "road",
    "street",
    "roadway",
    "plate",
    "dish",
    "dishes",
    "beside",
    "next",
    "to",
    "near",
    "close",
    "top",
    "on",
    "of",
    "in",
    "front",
    "behind",
    "motorcycle",
    "motorbike",
    "bike",
    "bicycle",
    "cellphone",
    "cell",
    "phone",
    "telephone",
    "television",
    "tv",
    "looking",
    "looks",
    "watching",
    "at",
    "stands",
    "standing",
    "stood",
    "walking",
    "walks",
    "field",
    "grassy",
    "grass",
    "eats",
    "eating",
    "ate",
    "eaten",
    "feline",
    "cat",
    "kitty",
    "puppy",
    "canine",
    "mice",
    "mouse",
    "geese",
    "oxen",
    "better",
    "best",
    "well",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "has",
    "have",
    "had",
    "a",
    "an",
    "the",
    "'s",
    "n't",
    "1,000",
    "3.5",
    "2nd",
    "u.s.",
    "mr.",
    "mr",
    "dr.",
    "no.",
    "5",
    "...",
    "..",
    "-",
    "--",
    "e-mail",
    "well-known",
    "x-ray",
    "’",
    "‘",
    "“",
    "”",
    "–",
    "½",
    "café",
    "naïve",
    "|||",
    "|",
    "&",
    "!",
    "?",
    ",",
    ".",
    ";",
    ":",
    "'",
    "''",
    "``",
    "(",
    ")",
    "$",
    "%",
    "#",
    "αβγ",
    "Σίσυφος",
    "ΟΔΟΣ",
    "İstanbul",
    "straße",
    "🙂",
    "i.e.",
    "e.g.",
    "etc.",
    "o'clock",
    "rock'n'roll",
    "'n'",
    "a.m.",
    "p.m.",
    "ca.",
    "vs.",
    "jan.",
    "No",
    "Mr.",
    "U.S.A.",
];

/// Phrases and their paraphrases in METEOR's table.
const PHRASES: &[&str] = &[
    "a couple of",
    "two",
    "several",
    "a few",
    "one or two",
    "a lot of",
    "much",
    "very",
    "close to",
    "near",
    "nearly",
    "around",
    "a man",
    "one man",
    "a male",
    "a group of",
    "one group of",
    "in front of",
    "against",
    "next to",
    "beside",
    "on top of",
    "above",
];

/// A caption made from real captions with words swapped, inflected, repeated, dropped and
/// punctuated.
fn mutate(rng: &mut Rng, base: &[String], words: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    for w in base {
        match rng.below(20) {
            0 => {}
            1 => out.push(rng.pick(words).clone()),
            2 => out.push(rng.pick_str(EXTRA).to_owned()),
            3 => {
                out.push(w.clone());
                out.push(w.clone());
            }
            4 => out.push(format!(
                "{w}{}",
                rng.pick_str(&["s", "es", "ing", "ed", "er", "ly"])
            )),
            5 => out.push(format!(
                "{w}{}",
                rng.pick_str(&[".", ",", "'s", "-", "...", "!"])
            )),
            _ => out.push(w.clone()),
        }
    }
    if rng.chance(0.3) {
        let i = rng.below(out.len() + 1);
        out.insert(i, rng.pick_str(EXTRA).to_owned());
    }
    if rng.chance(0.4) {
        let i = rng.below(out.len() + 1);
        out.insert(i, rng.pick_str(PHRASES).to_owned());
    }
    let sep = if rng.chance(0.05) { "  " } else { " " };
    out.join(sep)
}

/// A random set of images: real references, hypotheses near them, unrelated, or degenerate.
fn caption_set(rng: &mut Rng, n: usize) -> (Vec<Vec<String>>, Vec<String>) {
    let (captions, words) = caption_vocabulary();
    let mut refs = Vec::with_capacity(n);
    let mut hyps = Vec::with_capacity(n);
    for _ in 0..n {
        if rng.chance(0.05) {
            // Long captions over a few words: many candidate matches, so the beam prunes.
            let few: Vec<&str> = (0..2 + rng.below(5))
                .map(|_| {
                    rng.pick_str(&[
                        "a",
                        "dog",
                        "dogs",
                        "the",
                        "on",
                        "man",
                        "men",
                        "sofa",
                        "couch",
                        "next to",
                        "a couple of",
                        "two",
                    ])
                })
                .collect();
            let long = |rng: &mut Rng| -> String {
                (0..10 + rng.below(40))
                    .map(|_| *rng.pick(&few))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            refs.push((0..1 + rng.below(5)).map(|_| long(rng)).collect());
            hyps.push(long(rng));
            continue;
        }
        let base = rng.pick(&captions).clone();
        let r: Vec<String> = (0..1 + rng.below(5))
            .map(|_| {
                if rng.chance(0.5) {
                    mutate(rng, &base, &words)
                } else {
                    rng.pick(&captions).join(" ")
                }
            })
            .collect();
        let h = match rng.below(12) {
            0 => String::new(),
            1 => rng
                .pick_str(&["a", "a a a", "dog dog dog dog", "...", " ", "the the"])
                .to_owned(),
            2 => r[rng.below(r.len())].clone(),
            3 => (0..1 + rng.below(15))
                .map(|_| rng.pick_str(EXTRA))
                .collect::<Vec<_>>()
                .join(" "),
            4 => rng.pick(&captions).join(" "),
            _ => mutate(rng, &base, &words),
        };
        refs.push(r);
        hyps.push(h);
    }
    (refs, hyps)
}

/// A string of characters the normaliser, lower-casing and tokenising treat specially: quotes,
/// dashes, dots, commas, Unicode spaces and controls, combining marks, case oddities (final sigma,
/// dotted I, ligatures), characters outside the BMP, private-use characters.
fn adversarial(rng: &mut Rng) -> String {
    const ASCII: &[char] = &[
        'a', 'b', 'e', 's', 'y', ' ', ' ', '.', ',', '\'', '-', '`', '"', '|', '\t', '\u{b}',
        '\u{c}', '0', '9', '\u{1}',
    ];
    const OTHER: &[char] = &[
        'é',
        'ß',
        'İ',
        'ı',
        'Σ',
        'σ',
        'ς',
        'Ω',
        'ﬁ',
        'Ǆ',
        '\u{301}',
        '\u{2018}',
        '\u{2019}',
        '\u{201c}',
        '\u{201d}',
        '\u{2013}',
        '\u{a0}',
        '\u{2009}',
        '\u{3000}',
        '\u{85}',
        '\u{2028}',
        '\u{fffd}',
        '\u{1F642}',
        '\u{10400}',
        'Ⅻ',
        '½',
        '١',
        'ा',
        '中',
        '\u{e000}',
        'ꙁ',
        'ᴀ',
        'Ŝ',
        'ŉ',
    ];
    const PIECES: &[&str] = &[
        "DOTMULTI", "...", "mr.", "U.S.", "1,000", "a.b.c.", "''", "--",
    ];
    let mut s = String::new();
    for _ in 0..rng.below(25) {
        let pool = if rng.chance(0.5) { ASCII } else { OTHER };
        s.push(*rng.pick(pool));
        if rng.chance(0.3) {
            s.push(' ');
        }
        if rng.chance(0.1) {
            s.push_str(rng.pick_str(PIECES));
        }
    }
    s
}

/// Asserts that the native statistics lines and scores equal the jar's; returns the largest score
/// difference.
fn assert_same(
    what: &str,
    seed: u64,
    refs: &[Vec<String>],
    hyps: &[String],
    want: &smallcap_metrics::meteor::DetailedScores,
    got: &smallcap_metrics::meteor::DetailedScores,
) -> f64 {
    let mut worst = (got.scores.corpus - want.scores.corpus).abs();
    for i in 0..hyps.len() {
        assert_eq!(
            got.stats_lines[i], want.stats_lines[i],
            "{what}: statistics of image {i} (seed {seed}): refs {:?}, hyp {:?}",
            refs[i], hyps[i]
        );
        worst = worst.max((got.scores.per_image[i] - want.scores.per_image[i]).abs());
    }
    eprintln!(
        "{what}: {} images, statistics lines identical; largest score difference {worst:e}; \
         corpus {} (jar) vs {} (native)",
        hyps.len(),
        want.scores.corpus,
        got.scores.corpus
    );
    assert!(
        worst <= 1e-12,
        "{what}: scores differ by {worst} (seed {seed})"
    );
    worst
}

#[test]
fn native_meteor_equals_the_jar_on_random_caption_sets() {
    let Some(t) = common::tools("native_meteor_equals_the_jar_on_random_caption_sets") else {
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
    let n: usize = std::env::var("SMALLCAP_METEOR_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (refs, hyps) = caption_set(&mut rng, n);

    let mut jar = Meteor::start(&t.java, &t.toolkit_dir).expect("start the jar");
    let cache = cache_dir("meteor-random");
    let native = NativeMeteor::load(&t.toolkit_dir, Some(&cache)).expect("load native METEOR");
    let want = jar.compute_detailed(&refs, &hyps).expect("jar");
    let got = native.compute_detailed(&refs, &hyps).expect("native");
    let _ = std::fs::remove_dir_all(&cache);

    // Every matcher must have fired, or the comparison proves little.
    let mut images_with = [0usize; 4];
    for line in &want.stats_lines {
        let v: Vec<f64> = line
            .split(' ')
            .map(|x| x.parse().expect("number"))
            .collect();
        for (m, count) in images_with.iter_mut().enumerate() {
            if v[4 + 4 * m..8 + 4 * m].iter().any(|&x| x > 0.0) {
                *count += 1;
            }
        }
    }
    eprintln!("images with exact, stem, synonym, paraphrase matches: {images_with:?}");
    for (m, count) in images_with.iter().enumerate() {
        assert!(
            *count * 100 >= n,
            "module {m} matched in only {count} of {n} images"
        );
    }

    assert_same("captions", seed, &refs, &hyps, &want, &got);

    // Adversarial strings, through the same jar process.
    let refs: Vec<Vec<String>> = (0..n)
        .map(|_| {
            (0..1 + rng.below(4))
                .map(|_| adversarial(&mut rng))
                .collect()
        })
        .collect();
    let hyps: Vec<String> = (0..n).map(|_| adversarial(&mut rng)).collect();
    let want = jar.compute_detailed(&refs, &hyps).expect("jar");
    let got = native.compute_detailed(&refs, &hyps).expect("native");
    assert_same("adversarial strings", seed, &refs, &hyps, &want, &got);
}

#[test]
fn stemmer_equals_the_jars() {
    let Some(t) = common::tools("stemmer_equals_the_jars") else {
        return;
    };
    // Every word of the paraphrase table, the caption vocabulary and its inflections.
    let mut vocab: BTreeSet<String> = BTreeSet::new();
    let gz = std::fs::File::open(t.toolkit_dir.join(PARAPHRASE_TABLE)).expect("open table");
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(std::io::BufReader::new(gz))
        .read_to_string(&mut text)
        .expect("decompress table");
    for (i, line) in text.lines().enumerate() {
        if i % 3 != 0 {
            vocab.extend(line.split_whitespace().map(str::to_owned));
        }
    }
    drop(text);
    let (_, words) = caption_vocabulary();
    for w in words
        .iter()
        .map(String::as_str)
        .chain(EXTRA.iter().copied())
    {
        for suffix in [
            "", "s", "es", "ing", "ed", "ly", "ness", "ational", "ful", "ies", "'s",
        ] {
            vocab.insert(format!("{w}{suffix}"));
        }
    }
    // The jar's `Stemmer` leaves numbers unstemmed; compare words only.
    let vocab: Vec<String> = vocab
        .into_iter()
        .filter(|w| !w.chars().all(|c| c.is_numeric() || ",.-".contains(c)))
        .collect();
    let mut child = Command::new(&t.java)
        .args([
            "-Dfile.encoding=UTF-8",
            "-Dsun.stdout.encoding=UTF-8",
            "-cp",
        ])
        .arg(t.toolkit_dir.join(METEOR_JAR))
        .args(["Stemmer", "en"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the jar's Stemmer");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = vocab.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stems");
    writer.join().expect("writer").expect("write words");
    assert!(
        child.wait().expect("wait").success(),
        "the jar's Stemmer failed"
    );
    let stems: Vec<&str> = out.lines().collect();
    assert_eq!(stems.len(), vocab.len(), "one stem per word");
    let ours = smallcap_metrics::meteor::stem::Stemmer::default();
    let mut differ = Vec::new();
    for (w, s) in vocab.iter().zip(&stems) {
        // The stem matcher compares stems by Java hash code; compare the text too where the
        // word has no character outside the BMP (see `stem::Stemmer::stem_key`).
        let bmp = w.chars().all(|c| c.len_utf16() == 1);
        if ours.stem_key(w) != string_hash(s) || bmp && ours.stem(w) != *s {
            differ.push(format!("{w}: jar {s}, ours {}", ours.stem(w)));
        }
    }
    eprintln!("{} words stemmed, {} differ", vocab.len(), differ.len());
    assert!(
        differ.is_empty(),
        "stems differ: {:?}",
        &differ[..differ.len().min(20)]
    );
}
