//! `smallcap datastore` / `smallcap retrieve` / `smallcap caption --datastore` end to end on the
//! reference fixture (`smallcap-tiny/retrieval/`): a store built with the fixture's CLIP holds
//! the reference's caption embeddings and gives FAISS's top-k; an interrupted build resumes to
//! the same bytes; a swapped datastore changes the prompts; and every kind of bad input is a
//! clear error with no output left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixture;
use serde_json::Value;

fn smallcap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smallcap"));
    c.env_remove("HF_ENDPOINT").env("HF_HUB_OFFLINE", "1");
    c
}

fn rfix(rel: &str) -> PathBuf {
    fixture("retrieval").join(rel)
}

fn encoder() -> PathBuf {
    rfix("clip_resnet.pt")
}

fn run(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fail(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success(), "unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(rfix("cases.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn build(out: &Path, captions: &Path, extra: &[&str]) -> Command {
    let mut c = smallcap();
    c.args(["datastore", "build", "--captions"])
        .arg(captions)
        .arg("--encoder")
        .arg(encoder())
        .arg("--out")
        .arg(out)
        .args(["--batch-size", "100"])
        .args(extra);
    c
}

#[test]
fn built_store_matches_the_reference_embeddings_and_faiss_top_k() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    run(&mut build(&out, &rfix("datastore_captions.json"), &[]));
    let worst = common::store_rows_vs_reference(&out, 32);
    assert!(worst < 1e-4, "a caption's relative error is {worst}");
    // info prints the manifest with the encoder identity.
    let info = run(smallcap().args(["datastore", "info", "--verify"]).arg(&out));
    let m: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(m["count"], 588);
    assert!(m["encoder"]
        .as_str()
        .unwrap()
        .starts_with("openai-clip:RN(layers=[1, 1, 1, 1]"));
    // Image queries against the built store (encoder taken from the manifest).
    let c = cases();
    let mut cmd = smallcap();
    cmd.args(["retrieve", "--datastore"])
        .arg(&out)
        .args(["--k", "8"]);
    for case in c["image_cases"].as_array().unwrap() {
        cmd.arg("--image")
            .arg(fixture(case["image"].as_str().unwrap()));
    }
    let res = lines(&run(&mut cmd));
    for (r, case) in res.iter().zip(c["image_cases"].as_array().unwrap()) {
        assert_eq!(ids(&r["ids"]), ids(&case["top_ids"]), "{}", case["image"]);
        assert_eq!(strings(&r["captions"]), strings(&case["top_captions"]));
    }
    assert_eq!(res.len(), 11);
}

/// The default batch (4096) takes all 588 captions at once: the text tower sorts them and packs
/// 256 at a time, the captions that begin alike sharing their first tokens' work. Each row is
/// the reference's, and byte for byte what batches of 100 store.
#[test]
fn one_large_batch_stores_the_reference_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let (large, small) = (tmp.path().join("large"), tmp.path().join("small"));
    let mut cmd = smallcap();
    cmd.args(["datastore", "build", "--captions"])
        .arg(rfix("datastore_captions.json"))
        .arg("--encoder")
        .arg(encoder())
        .arg("--out")
        .arg(&large);
    run(&mut cmd);
    let worst = common::store_rows_vs_reference(&large, 32);
    assert!(worst < 1e-4, "a caption's relative error is {worst}");
    run(&mut build(&small, &rfix("datastore_captions.json"), &[]));
    let rows = |dir: &Path| std::fs::read(dir.join("embeddings.bin")).unwrap();
    assert!(rows(&large) == rows(&small), "rows depend on the batch");
}

#[test]
fn text_queries_on_the_faiss_file() {
    let c = cases();
    let mut cmd = smallcap();
    cmd.args(["retrieve", "--index"])
        .arg(rfix("datastore_index"))
        .arg("--captions")
        .arg(rfix("datastore_captions.json"))
        .arg("--encoder")
        .arg(encoder())
        .args(["--k", "8", "--text"]);
    for case in c["text_cases"].as_array().unwrap() {
        cmd.arg(case["text"].as_str().unwrap());
    }
    let res = lines(&run(&mut cmd));
    assert_eq!(res.len(), 4);
    for (r, case) in res.iter().zip(c["text_cases"].as_array().unwrap()) {
        assert_eq!(r["query"], case["text"]);
        assert_eq!(ids(&r["ids"]), ids(&case["top_ids"]), "{}", case["text"]);
    }
}

#[test]
fn interrupted_build_resumes_to_the_same_store() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    run(&mut build(&whole, &rfix("datastore_captions.json"), &[]));
    let out = tmp.path().join("resumed");
    let err = fail(&mut build(
        &out,
        &rfix("datastore_captions.json"),
        &["--stop-after-batches", "2"],
    ));
    assert!(err.contains("interrupted"), "{err}");
    assert!(!out.exists(), "nothing half-written is visible");
    // A second interruption continues from batch 2, then the build completes.
    fail(&mut build(
        &out,
        &rfix("datastore_captions.json"),
        &["--stop-after-batches", "1"],
    ));
    let progress: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("resumed.building/progress.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(progress["batches_done"], 3);
    run(&mut build(&out, &rfix("datastore_captions.json"), &[]));
    assert!(!tmp.path().join("resumed.building").exists());
    for f in ["embeddings.bin", "captions.jsonl", "captions.idx"] {
        assert_eq!(
            std::fs::read(whole.join(f)).unwrap(),
            std::fs::read(out.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn interrupted_add_resumes_and_a_finished_add_is_not_repeated() {
    let tmp = tempfile::tempdir().unwrap();
    let all: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(rfix("datastore_captions.json")).unwrap())
            .unwrap();
    assert!(all.len() > 300, "{} captions", all.len());
    let write =
        |name: &str, caps: &[String]| common::annotations::write_captions(tmp.path(), name, caps);
    let (head, tail) = (
        write("head.json", &all[..200]),
        write("tail.json", &all[200..]),
    );
    let whole = tmp.path().join("whole");
    run(&mut build(&whole, &rfix("datastore_captions.json"), &[]));
    let out = tmp.path().join("grown");
    run(&mut build(&out, &head, &[]));
    let add = |extra: &[&str]| {
        let mut c = smallcap();
        c.args(["datastore", "add"])
            .arg(&out)
            .arg("--captions")
            .arg(&tail)
            .args(["--batch-size", "100"])
            .args(extra);
        c
    };
    let count = |dir: &Path| -> u64 {
        let m: Value =
            serde_json::from_slice(&run(smallcap().args(["datastore", "info"]).arg(dir)).stdout)
                .unwrap();
        m["count"].as_u64().unwrap()
    };
    // Interrupted after one batch: the store is untouched, the work is kept.
    let err = fail(&mut add(&["--stop-after-batches", "1"]));
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(count(&out), 200);
    let work = tmp.path().join("grown.adding");
    let progress = |w: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(w.join("progress.json")).unwrap()).unwrap()
    };
    assert_eq!(progress(&work)["batches_done"], 1);
    // Resumed, and stopped again once every batch is encoded, before the store is written.
    let remaining = (all.len() - 200).div_ceil(100) - 1;
    fail(&mut add(&["--stop-after-batches", &remaining.to_string()]));
    assert_eq!(count(&out), 200);
    assert_eq!(progress(&work)["batches_done"], remaining as u64 + 1);
    // Keep a copy of the finished work, as a run killed after the swap would leave it.
    let saved = tmp.path().join("saved.adding");
    std::fs::create_dir(&saved).unwrap();
    for f in ["progress.json", "embeddings.f32"] {
        std::fs::copy(work.join(f), saved.join(f)).unwrap();
    }
    run(&mut add(&[]));
    assert!(!work.exists());
    assert_eq!(count(&out), all.len() as u64);
    // The same bytes as building all captions at once (same batches).
    for f in ["embeddings.bin", "captions.jsonl", "captions.idx"] {
        assert_eq!(
            std::fs::read(whole.join(f)).unwrap(),
            std::fs::read(out.join(f)).unwrap(),
            "{f}"
        );
    }
    // The leftover work of a finished add is recognised: the captions are not added twice.
    std::fs::rename(&saved, &work).unwrap();
    run(&mut add(&[]));
    assert!(!work.exists());
    assert_eq!(count(&out), all.len() as u64);
}

#[test]
fn filters_dedup_f16_add_export_import() {
    let tmp = tempfile::tempdir().unwrap();
    let caps = tmp.path().join("caps.txt");
    let long = "a very long caption with many many words that goes on and on about a dog that sits on a red bench near the sea at dawn";
    std::fs::write(
        &caps,
        format!("a dog on a bench\na cat on a mat\na dog on a bench\n{long}\n"),
    )
    .unwrap();
    let out = tmp.path().join("s");
    run(&mut build(
        &out,
        &caps,
        &[
            "--dedup",
            "--max-gpt2-tokens",
            "--tokenizer",
            fixture("tokenizer").to_str().unwrap(),
            "--f16",
        ],
    ));
    let m: Value =
        serde_json::from_slice(&run(smallcap().args(["datastore", "info"]).arg(&out)).stdout)
            .unwrap();
    assert_eq!(m["count"], 2, "duplicate and >25-token captions dropped");
    assert_eq!(m["dtype"], "f16");
    let more = tmp.path().join("more.json");
    std::fs::write(&more, r#"["a red bus", "two horses"]"#).unwrap();
    run(smallcap()
        .args(["datastore", "add"])
        .arg(&out)
        .arg("--captions")
        .arg(&more));
    let m: Value =
        serde_json::from_slice(&run(smallcap().args(["datastore", "info"]).arg(&out)).stdout)
            .unwrap();
    assert_eq!(m["count"], 4);
    let (idx, cj) = (tmp.path().join("x.index"), tmp.path().join("x.json"));
    run(smallcap()
        .args(["datastore", "export"])
        .arg(&out)
        .arg("--index")
        .arg(&idx)
        .arg("--captions")
        .arg(&cj));
    let exported: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&cj).unwrap()).unwrap();
    assert_eq!(
        exported,
        [
            "a dog on a bench",
            "a cat on a mat",
            "a red bus",
            "two horses"
        ]
    );
    let back = tmp.path().join("back");
    run(smallcap()
        .args(["datastore", "import", "--index"])
        .arg(&idx)
        .arg("--captions")
        .arg(&cj)
        .arg("--out")
        .arg(&back)
        .arg("--encoder")
        .arg(encoder()));
    // The text "a red bus" finds itself first in both stores.
    for dir in [&out, &back] {
        let r = lines(&run(smallcap()
            .args(["retrieve", "--datastore"])
            .arg(dir)
            .args(["--k", "1", "--text", "a red bus"])));
        assert_eq!(ids(&r[0]["ids"]), [2]);
    }
}

#[test]
fn out_file_and_exclude_self() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cases();
    let case = &c["image_cases"][0];
    let top = strings(&case["top_captions"]);
    let img = tmp.path().join("COCO_val2014_000000000042.jpg");
    std::fs::copy(fixture(case["image"].as_str().unwrap()), &img).unwrap();
    // Image 42 owns the 1st and 3rd neighbours' captions.
    let ann = tmp.path().join("ann.json");
    let own = [top[0].clone(), top[2].clone()];
    std::fs::write(
        &ann,
        serde_json::json!({"annotations": [
            {"image_id": 42, "id": 1, "caption": own[0]},
            {"image_id": 42, "id": 2, "caption": own[1]},
            {"image_id": 7, "id": 3, "caption": "something else"}]})
        .to_string(),
    )
    .unwrap();
    let store_caps: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(rfix("datastore_captions.json")).unwrap())
            .unwrap();
    let want: Vec<i64> = ids(&case["top_ids"])
        .into_iter()
        .filter(|&i| !own.contains(&store_caps[i as usize]))
        .take(4)
        .collect();
    assert_eq!(want.len(), 4);
    let out = tmp.path().join("retrieved.json");
    let base = |c: &mut Command| {
        c.args(["retrieve", "--index"])
            .arg(rfix("datastore_index"))
            .arg("--captions")
            .arg(rfix("datastore_captions.json"))
            .arg("--encoder")
            .arg(encoder())
            .arg("--image")
            .arg(&img);
    };
    let mut cmd = smallcap();
    base(&mut cmd);
    cmd.arg("--exclude-self").arg(&ann).arg("--out").arg(&out);
    let r = lines(&run(&mut cmd));
    assert_eq!(ids(&r[0]["ids"]), want);
    let file: std::collections::HashMap<String, Vec<String>> =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let want_caps: Vec<String> = want
        .iter()
        .map(|&i| store_caps[i as usize].clone())
        .collect();
    assert_eq!(file["42"], want_caps);
    // Without exclusion: the plain top-4.
    let mut cmd = smallcap();
    base(&mut cmd);
    let r = lines(&run(&mut cmd));
    assert_eq!(ids(&r[0]["ids"]), ids(&case["top_ids"])[..4]);
}

#[test]
fn swapping_the_datastore_changes_the_prompts_not_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    run(smallcap()
        .args(["datastore", "import", "--index"])
        .arg(rfix("datastore_index"))
        .arg("--captions")
        .arg(rfix("datastore_captions.json"))
        .arg("--out")
        .arg(&a)
        .arg("--encoder")
        .arg(encoder()));
    // Store b: the captions the reference ranks 5th and below for every image.
    let c = cases();
    let store_caps: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(rfix("datastore_captions.json")).unwrap())
            .unwrap();
    let mut banned = std::collections::HashSet::new();
    for case in c["image_cases"].as_array().unwrap() {
        for i in &ids(&case["top_ids"])[..4] {
            banned.insert(store_caps[*i as usize].clone());
        }
    }
    let rest: Vec<&String> = store_caps.iter().filter(|s| !banned.contains(*s)).collect();
    let bcaps = tmp.path().join("b.json");
    std::fs::write(&bcaps, serde_json::to_string(&rest).unwrap()).unwrap();
    let b = tmp.path().join("b");
    run(&mut build(&b, &bcaps, &[]));
    let images: Vec<PathBuf> = c["image_cases"].as_array().unwrap()[..3]
        .iter()
        .map(|case| fixture(case["image"].as_str().unwrap()))
        .collect();
    let caption = |store: &Path| {
        let mut cmd = smallcap();
        cmd.arg("caption")
            .arg("--model")
            .arg(fixture("model"))
            .arg("--tokenizer")
            .arg(fixture("tokenizer"))
            .arg("--datastore")
            .arg(store)
            .args(&images);
        lines(&run(&mut cmd))
    };
    let with_a = caption(&a);
    let with_b = caption(&b);
    for (i, case) in c["image_cases"].as_array().unwrap()[..3].iter().enumerate() {
        // Store a is the reference's: its prompt captions are FAISS's top-4.
        assert_eq!(
            strings(&with_a[i]["retrieved_captions"]),
            strings(&case["top_captions"])[..4]
        );
        let pb = strings(&with_b[i]["retrieved_captions"]);
        assert_eq!(pb.len(), 4);
        assert!(pb.iter().all(|s| !banned.contains(s)), "{pb:?}");
        // And b's prompts are exactly what `retrieve` finds in b.
        let r = lines(&run(smallcap()
            .args(["retrieve", "--datastore"])
            .arg(&b)
            .arg("--image")
            .arg(&images[i])));
        assert_eq!(strings(&r[0]["captions"]), pb);
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let base = |c: &mut Command, index: &Path, caps: &Path| {
        c.args(["retrieve", "--index"])
            .arg(index)
            .arg("--captions")
            .arg(caps)
            .arg("--encoder")
            .arg(encoder())
            .args(["--text", "a dog"]);
    };
    let good = std::fs::read(rfix("datastore_index")).unwrap();
    let caps = rfix("datastore_captions.json");
    // Wrong magic.
    let p = t.join("magic.index");
    let mut bytes = good.clone();
    bytes[..4].copy_from_slice(b"XXXX");
    std::fs::write(&p, &bytes).unwrap();
    let mut c = smallcap();
    base(&mut c, &p, &caps);
    let e = fail(&mut c);
    assert!(e.contains("magic.index"), "{e}");
    // Truncated.
    let p = t.join("short.index");
    std::fs::write(&p, &good[..good.len() - 10]).unwrap();
    let mut c = smallcap();
    base(&mut c, &p, &caps);
    let e = fail(&mut c);
    assert!(e.contains("short.index"), "{e}");
    // Count disagrees with the captions.
    let short_caps = t.join("caps.json");
    let all: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&caps).unwrap()).unwrap();
    std::fs::write(&short_caps, serde_json::to_string(&all[..10]).unwrap()).unwrap();
    let mut c = smallcap();
    base(&mut c, &rfix("datastore_index"), &short_caps);
    let e = fail(&mut c);
    assert!(e.contains("588") && e.contains("10 captions"), "{e}");
    // Dimension disagrees with the encoder: a 3-d index.
    let p = t.join("dim3.index");
    let mut bytes = b"IxFI".to_vec();
    bytes.extend(3i32.to_le_bytes());
    bytes.extend(1i64.to_le_bytes());
    bytes.extend((1i64 << 20).to_le_bytes());
    bytes.extend((1i64 << 20).to_le_bytes());
    bytes.push(1);
    bytes.extend(0i32.to_le_bytes());
    bytes.extend(3u64.to_le_bytes());
    for x in [1.0f32, 0.0, 0.0] {
        bytes.extend(x.to_le_bytes());
    }
    std::fs::write(&p, &bytes).unwrap();
    let one = t.join("one.json");
    std::fs::write(&one, r#"["x"]"#).unwrap();
    let mut c = smallcap();
    base(&mut c, &p, &one);
    let e = fail(&mut c);
    assert!(e.contains("dimension") && e.contains("32"), "{e}");
    // k larger than the store.
    let mut c = smallcap();
    base(&mut c, &rfix("datastore_index"), &caps);
    c.args(["--k", "589"]);
    let e = fail(&mut c);
    assert!(e.contains("589") && e.contains("588"), "{e}");
    // Empty caption file, and captions that are not UTF-8: no store appears.
    let empty = t.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let out = t.join("s1");
    let e = fail(&mut build(&out, &empty, &[]));
    assert!(e.contains("empty.txt") && e.contains("empty"), "{e}");
    assert!(!out.exists());
    let latin1 = t.join("latin1.txt");
    std::fs::write(&latin1, b"a caf\xe9 au lait\n").unwrap();
    let e = fail(&mut build(&out, &latin1, &[]));
    assert!(e.contains("latin1.txt") && e.contains("UTF-8"), "{e}");
    assert!(!out.exists());
    assert!(!t.join("s1.building").exists());
    // A datastore whose dimension disagrees with the encoder; a missing datastore.
    let d3 = t.join("d3");
    run(smallcap()
        .args(["datastore", "import", "--index"])
        .arg(t.join("dim3.index"))
        .arg("--captions")
        .arg(&one)
        .arg("--out")
        .arg(&d3));
    let e = fail(
        smallcap()
            .args(["retrieve", "--datastore"])
            .arg(&d3)
            .arg("--encoder")
            .arg(encoder())
            .args(["--text", "x"]),
    );
    assert!(e.contains("dimension 3") && e.contains("32"), "{e}");
    let e = fail(
        smallcap()
            .args(["retrieve", "--datastore"])
            .arg(t.join("missing"))
            .args(["--text", "x"]),
    );
    assert!(e.contains("missing"), "{e}");
}
