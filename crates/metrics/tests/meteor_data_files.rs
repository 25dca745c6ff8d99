//! The native METEOR's handling of its data files, on a small made-up toolkit directory (no
//! pycocoevalcap needed): missing files are "unavailable" notes, corrupt ones are errors that
//! name the file, and the paraphrase table's cache is rebuilt when it is damaged or its source
//! changes.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::scratch_dir;
use smallcap_metrics::coco::{GoldCaptions, ImageId, Prediction};
use smallcap_metrics::meteor::{NativeMeteor, METEOR_JAR, PARAPHRASE_TABLE};
use smallcap_metrics::{evaluate_data, EvalOptions, Metric};

/// A zip archive with `entries` stored uncompressed.
fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let offset = out.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend_from_slice(&sig.to_le_bytes());
            if central {
                h.extend_from_slice(&20u16.to_le_bytes());
            }
            h.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            h.extend_from_slice(&crc.sum().to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes());
            if central {
                // Comment length, disk, internal and external attributes.
                h.extend_from_slice(&[0; 10]);
                h.extend_from_slice(&offset.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend_from_slice(data);
        central.extend(header(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0; 2]);
    out
}

fn gzip(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text.as_bytes()).expect("gzip");
    e.finish().expect("gzip")
}

const JAR_ENTRIES: &[(&str, &[u8])] = &[
    ("function/english.words", b"a\nthe\non\n"),
    ("nonbreaking/english.prefixes", b"Mr\n"),
    ("synonym/english.exceptions", b"man\nmen\n"),
    (
        "synonym/english.synsets",
        b"man\n1\nguy\n1 2\nsofa\n3\ncouch\n3\n",
    ),
];

/// A toolkit directory with METEOR's files made up from `jar` entries and `table` text.
fn toolkit(tag: &str, jar: &[u8], table: &[u8]) -> PathBuf {
    let dir = scratch_dir(tag);
    std::fs::create_dir_all(dir.join("meteor/data")).expect("mkdir");
    std::fs::write(dir.join(METEOR_JAR), jar).expect("write jar");
    std::fs::write(dir.join(PARAPHRASE_TABLE), table).expect("write table");
    dir
}

fn one(refs: &[&str], hyp: &str) -> (Vec<Vec<String>>, Vec<String>) {
    (
        vec![refs.iter().map(|r| (*r).to_owned()).collect()],
        vec![hyp.to_owned()],
    )
}

fn score(dir: &Path, cache: &Path, refs: &[&str], hyp: &str) -> f64 {
    let (r, h) = one(refs, hyp);
    NativeMeteor::load(dir, Some(cache))
        .expect("load")
        .compute(&r, &h)
        .expect("compute")
        .corpus
}

#[test]
fn missing_files_make_meteor_unavailable_not_a_number() {
    let dir = scratch_dir("meteor-missing");
    let opts = EvalOptions {
        metrics: vec![Metric::Meteor],
        toolkit_dir: Some(dir.clone()),
        ..EvalOptions::default()
    };
    let gold = GoldCaptions::from_pairs([(ImageId::Int(1), vec!["a man"])]);
    let preds = [Prediction {
        image_id: ImageId::Int(1),
        caption: "a man".into(),
    }];
    let r = evaluate_data(&gold, &preds, &opts).expect("evaluated");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(r.corpus.meteor.is_none());
    let notes = r.notes.join("\n");
    assert!(
        notes.contains("METEOR unavailable")
            && notes.contains("meteor-1.5.jar is missing")
            && notes.contains("pip install pycocoevalcap"),
        "{notes}"
    );
}

#[test]
fn corrupt_files_are_errors_that_name_them() {
    let table = gzip("0.5\nguy\nman\n");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "not-a-zip",
            b"garbage".to_vec(),
            table.clone(),
            "meteor-1.5.jar",
        ),
        (
            "no-synsets",
            zip(&JAR_ENTRIES[..3]),
            table.clone(),
            "synonym/english.synsets",
        ),
        (
            "bad-synsets",
            zip(&[
                JAR_ENTRIES[0],
                JAR_ENTRIES[1],
                JAR_ENTRIES[2],
                ("synonym/english.synsets", b"man\nx\n"),
            ]),
            table.clone(),
            "meteor-1.5.jar",
        ),
        (
            "not-gzip",
            zip(JAR_ENTRIES),
            b"plain text".to_vec(),
            "paraphrase-en.gz",
        ),
        (
            "truncated-gz",
            zip(JAR_ENTRIES),
            table[..table.len() / 2].to_vec(),
            "paraphrase-en.gz",
        ),
        (
            "truncated-entry",
            zip(JAR_ENTRIES),
            gzip("0.5\nguy\n"),
            "paraphrase-en.gz",
        ),
    ];
    for (tag, jar, gz, names) in cases {
        let dir = toolkit(tag, &jar, &gz);
        let cache = dir.join("cache");
        let err = NativeMeteor::load(&dir, Some(&cache))
            .err()
            .unwrap_or_else(|| panic!("{tag}: loaded"));
        // Through the evaluator too: an error, not a score.
        let opts = EvalOptions {
            metrics: vec![Metric::Meteor],
            toolkit_dir: Some(dir.clone()),
            meteor_cache_dir: Some(cache),
            ..EvalOptions::default()
        };
        let gold = GoldCaptions::from_pairs([(ImageId::Int(1), vec!["a man"])]);
        let preds = [Prediction {
            image_id: ImageId::Int(1),
            caption: "a guy".into(),
        }];
        let eval_err = evaluate_data(&gold, &preds, &opts).expect_err(tag);
        let _ = std::fs::remove_dir_all(&dir);
        for e in [err.to_string(), eval_err.to_string()] {
            assert!(e.contains(names), "{tag}: {e}");
        }
    }
}

#[test]
fn paraphrase_cache_is_rebuilt_when_damaged_or_stale() {
    let jar = zip(JAR_ENTRIES);
    let dir = toolkit("meteor-cache", &jar, &gzip("0.5\nfellow\nman\n"));
    let cache = dir.join("cache");
    let cache_file = cache.join("meteor-paraphrase-en.v1.bin");
    let refs = ["a man on a sofa"];
    let hyp = "a bloke on a couch";

    let first = score(&dir, &cache, &refs, hyp);
    assert!(cache_file.is_file(), "cache written");
    assert_eq!(score(&dir, &cache, &refs, hyp), first, "from the cache");

    // Damaged caches are ignored and replaced.
    let good = std::fs::read(&cache_file).expect("read cache");
    for damaged in [
        good[..good.len() - 3].to_vec(),
        b"nonsense".to_vec(),
        Vec::new(),
    ] {
        std::fs::write(&cache_file, &damaged).expect("damage cache");
        assert_eq!(score(&dir, &cache, &refs, hyp), first, "damaged cache");
        assert_eq!(std::fs::read(&cache_file).expect("read"), good, "rebuilt");
    }

    // A new table (different size and content) replaces the cached one: "bloke" now
    // paraphrases "man", which raises the score.
    std::fs::write(
        dir.join(PARAPHRASE_TABLE),
        gzip("0.5\nfellow\nman\n0.25\nbloke\nman\n"),
    )
    .expect("rewrite table");
    let second = score(&dir, &cache, &refs, hyp);
    assert!(second > first, "{second} vs {first}");
    assert_ne!(std::fs::read(&cache_file).expect("read"), good, "rebuilt");

    // No cache directory at all works the same.
    let (r, h) = one(&refs, hyp);
    let uncached = NativeMeteor::load(&dir, None)
        .expect("load")
        .compute(&r, &h)
        .expect("compute")
        .corpus;
    assert_eq!(uncached, second);
    // An unwritable cache location is skipped.
    let file_not_dir = dir.join("a-file");
    std::fs::write(&file_not_dir, b"x").expect("write");
    assert_eq!(score(&dir, &file_not_dir, &refs, hyp), second);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn degenerate_captions_score_without_panicking() {
    let dir = toolkit(
        "meteor-degenerate",
        &zip(JAR_ENTRIES),
        &gzip("0.5\nguy\nman\n"),
    );
    let m = NativeMeteor::load(&dir, None).expect("load");
    let refs: Vec<Vec<String>> = ["", " ", "|||", "a man", "a man ||| a guy", "... !!", "🙂"]
        .iter()
        .map(|r| vec![(*r).to_owned(), "a man".to_owned()])
        .collect();
    let hyps: Vec<String> = ["", "|||", " ", "a a a a", "man.", "🙂🙂", "x"]
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
    let s = m.compute(&refs, &hyps).expect("compute");
    assert!(s.corpus.is_finite() && s.per_image.iter().all(|v| v.is_finite() && *v >= 0.0));
    // Mismatched inputs are errors.
    assert!(m.compute(&refs[..1], &hyps).is_err());
    assert!(m.compute(&[vec![]], &hyps[..1]).is_err());
    // A line break cannot travel through METEOR's line protocol.
    assert!(m.compute(&refs[..1], &["a\nman".to_owned()]).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
