//! One datastore spec on every command: a FAISS index file named as the hub names them
//! (`coco_index` + `coco_index_captions.json`) and a pgvector URL give, through `smallcap serve`,
//! the ids and captions that `smallcap retrieve` gives for the same spec (and those FAISS gave
//! the reference, from `retrieval/cases.json`), and the captions that `smallcap caption` gives.
//! Bad specs, mismatched captions files, stores of two encoders and `--device cuda` in a CPU build
//! are refused with errors that say what is wrong.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::serve_cli::spawn_serve;
use common::{fixture, http, import_fixture_store, run_ok};
use serde_json::Value;

fn smallcap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smallcap"));
    c.env_remove("HF_ENDPOINT").env("HF_HUB_OFFLINE", "1");
    c
}

/// The JSON lines of a command that must succeed.
fn ok(c: &mut Command) -> Vec<Value> {
    String::from_utf8(run_ok(c).stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn fails(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success(), "the command succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn encoder() -> PathBuf {
    fixture("retrieval/clip_resnet.pt")
}

/// The fixture images, in the order of `retrieval/cases.json`, with the reference's top ids.
fn image_cases() -> Vec<(PathBuf, Vec<Value>)> {
    let cases: Value =
        serde_json::from_slice(&std::fs::read(fixture("retrieval/cases.json")).unwrap()).unwrap();
    cases["image_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                fixture(c["image"].as_str().unwrap()),
                c["top_ids"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

/// The fixture's FAISS index and captions, laid out as the hub lays them out.
fn hub_layout(dir: &Path) -> PathBuf {
    let index = dir.join("coco_index");
    std::fs::copy(fixture("retrieval/datastore_index"), &index).unwrap();
    std::fs::copy(
        fixture("retrieval/datastore_captions.json"),
        dir.join("coco_index_captions.json"),
    )
    .unwrap();
    index
}

/// `retrieve` and `caption` through `spec` (with the fixture encoder when `with_encoder`), then
/// `serve --datastore NAME=SPEC`: the server answers what the commands answered.
fn serve_matches_the_commands(spec: &str, with_encoder: bool) {
    let cases = image_cases();
    let k = 4;
    let mut retrieve = smallcap();
    retrieve.args(["retrieve", "--datastore", spec, "--k", "4"]);
    let mut caption = smallcap();
    caption
        .args(["caption", "--model"])
        .arg(fixture("model"))
        .arg("--tokenizer")
        .arg(fixture("tokenizer"))
        // The server decodes with infer.py's settings, early stopping included.
        .args(["--datastore", spec, "--early-stopping"]);
    if with_encoder {
        retrieve.arg("--encoder").arg(encoder());
        caption.arg("--retrieval-encoder").arg(encoder());
    }
    for (image, _) in &cases {
        retrieve.arg("--image").arg(image);
        caption.arg(image);
    }
    let retrieved = ok(&mut retrieve);
    let captioned = ok(&mut caption);
    assert_eq!(retrieved.len(), cases.len());
    assert_eq!(captioned.len(), cases.len());

    let mut args: Vec<OsString> = vec![
        "--model".into(),
        fixture("model").into(),
        "--tokenizer".into(),
        fixture("tokenizer").into(),
        "--datastore".into(),
        format!("fixture={spec}").into(),
    ];
    if with_encoder {
        args.push("--retrieval-encoder".into());
        args.push(encoder().into());
    }
    let (_child, addr, _lines) = spawn_serve(&args);
    for (((image, top_ids), r), c) in cases.iter().zip(&retrieved).zip(&captioned) {
        // The reference's FAISS ids, through the command.
        assert_eq!(r["ids"].as_array().unwrap()[..], top_ids[..k], "{image:?}");
        let bytes = std::fs::read(image).unwrap();
        let kind = if image.extension().is_some_and(|e| e == "png") {
            "image/png"
        } else {
            "image/jpeg"
        };
        let got = http::post(
            &format!("http://{addr}/v1/retrieve?k={k}&datastore=fixture"),
            kind,
            &bytes,
        );
        assert_eq!(got.status, 200, "{}", got.text());
        let got = &got.json()["results"][0];
        assert_eq!(got["ids"], r["ids"], "{image:?}");
        assert_eq!(got["captions"], r["captions"], "{image:?}");
        let got = http::post(&format!("http://{addr}/v1/captions?k={k}"), kind, &bytes);
        assert_eq!(got.status, 200, "{}", got.text());
        let got = got.json();
        assert_eq!(got["caption"], c["caption"], "{image:?}");
        assert_eq!(
            got["retrieved_captions"], c["retrieved_captions"],
            "{image:?}"
        );
        assert_eq!(got["retrieved_ids"], r["ids"], "{image:?}");
    }
}

#[test]
fn serve_with_a_faiss_file_gives_what_retrieve_and_caption_give() {
    let tmp = tempfile::tempdir().unwrap();
    let index = hub_layout(tmp.path());
    serve_matches_the_commands(index.to_str().unwrap(), true);
}

#[test]
fn serve_with_a_pgvector_url_gives_what_retrieve_and_caption_give() {
    let Some(pg) = common::local_postgres_or_skip("pgvector spec test") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    import_fixture_store(&store);
    let url = pg.url("spec_test");
    ok(smallcap()
        .args(["datastore", "push"])
        .arg(&store)
        .args(["--to", &url]));
    // The table records the encoder: no --encoder needed.
    serve_matches_the_commands(&url, false);
}

#[test]
fn a_faiss_file_without_its_captions_or_with_another_count_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let index = hub_layout(tmp.path());
    let captions = tmp.path().join("coco_index_captions.json");
    let retrieve = |spec: &str| {
        fails(
            smallcap()
                .args([
                    "retrieve",
                    "--datastore",
                    spec,
                    "--text",
                    "a dog",
                    "--encoder",
                ])
                .arg(encoder()),
        )
    };
    // One caption fewer than vectors.
    let mut caps: Vec<String> = serde_json::from_slice(&std::fs::read(&captions).unwrap()).unwrap();
    let n = caps.len();
    caps.pop();
    std::fs::write(&captions, serde_json::to_vec(&caps).unwrap()).unwrap();
    let e = retrieve(index.to_str().unwrap());
    assert!(
        e.contains(&format!("{n} vectors")) && e.contains(&format!("{} captions", n - 1)),
        "{e}"
    );
    assert!(e.contains("coco_index_captions.json"), "{e}");
    // No captions file at all: the error names the file it looked for and the explicit form.
    std::fs::remove_file(&captions).unwrap();
    let e = retrieve(index.to_str().unwrap());
    assert!(
        e.contains("coco_index_captions.json") && e.contains("INDEX_FILE,captions="),
        "{e}"
    );
    // An explicit captions file that does not exist is named.
    let e = retrieve(&format!("{},captions=/no/such/caps.json", index.display()));
    assert!(e.contains("/no/such/caps.json"), "{e}");
    // The explicit form works with captions under any name.
    std::fs::copy(
        fixture("retrieval/datastore_captions.json"),
        tmp.path().join("any.json"),
    )
    .unwrap();
    let spec = format!(
        "{},captions={}",
        index.display(),
        tmp.path().join("any.json").display()
    );
    let lines = ok(smallcap()
        .args(["retrieve", "--datastore", &spec, "--k", "4", "--image"])
        .arg(&image_cases()[0].0)
        .arg("--encoder")
        .arg(encoder()));
    assert_eq!(
        lines[0]["ids"].as_array().unwrap()[..],
        image_cases()[0].1[..4]
    );
}

#[test]
fn a_spec_of_no_known_form_lists_the_forms() {
    for spec in ["/no/such/store", "s3://bucket/coco_index"] {
        for cmd in ["retrieve", "caption", "serve"] {
            let mut c = smallcap();
            c.arg(cmd).args(["--datastore", spec]);
            match cmd {
                "retrieve" => c.args(["--text", "a dog"]),
                _ => c.arg("--model").arg(fixture("model")),
            };
            if cmd == "caption" {
                c.arg(fixture("images/chelsea.png"));
            }
            let e = fails(&mut c);
            for form in ["folder", "_captions.json", "captions=", "postgres://"] {
                assert!(e.contains(form), "{cmd} {spec}: {form} not in {e}");
            }
        }
    }
}

#[test]
fn serve_refuses_stores_of_two_encoders() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    import_fixture_store(&a);
    // The same vectors, recorded as built by another CLIP of the same dimension.
    let b = tmp.path().join("b");
    std::fs::create_dir(&b).unwrap();
    for entry in std::fs::read_dir(&a).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), b.join(entry.file_name())).unwrap();
    }
    let manifest = b.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["encoder"] = "openai-clip:RN50 @ /elsewhere/RN50.pt".into();
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();

    let e = fails(
        smallcap()
            .args(["serve", "--addr", "127.0.0.1:0", "--model"])
            .arg(fixture("model"))
            .arg("--tokenizer")
            .arg(fixture("tokenizer"))
            .arg("--datastore")
            .arg(&a)
            .arg("--datastore")
            .arg(&b),
    );
    assert!(
        e.contains("\"b\"") && e.contains("openai-clip:RN50") && e.contains("was built with"),
        "{e}"
    );
}

#[test]
fn cuda_in_a_cpu_build_is_refused() {
    if cfg!(feature = "cuda") {
        return;
    }
    let image = fixture("images/chelsea.png");
    let runs: Vec<Vec<OsString>> = vec![
        vec![
            "caption".into(),
            "--model".into(),
            fixture("model").into(),
            "--no-retrieval".into(),
            image.clone().into(),
        ],
        vec![
            "retrieve".into(),
            "--datastore".into(),
            fixture("retrieval/datastore_index,captions=x").into(),
            "--text".into(),
            "a dog".into(),
        ],
        vec!["serve".into(), "--model".into(), fixture("model").into()],
    ];
    for mut args in runs {
        args.extend(["--device".into(), "cuda:0".into()]);
        let e = fails(smallcap().args(&args));
        assert!(e.contains("--features cuda"), "{args:?}: {e}");
    }
}
