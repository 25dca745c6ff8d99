//! `smallcap datastore push` and `--datastore postgres://…` against a real PostgreSQL + pgvector
//! server (started on loopback from `$SMALLCAP_PG_BIN`, which `scripts/test` sets): retrieval and
//! live-retrieval captioning through the server give FAISS's ids for every fixture image.
//! Skipped with a message when no server can start, except under CI, where it fails.

mod common;

use std::process::Command;

use common::{fixture, import_fixture_store, run_ok};
use serde_json::Value;

fn smallcap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smallcap"));
    c.env_remove("HF_ENDPOINT").env("HF_HUB_OFFLINE", "1");
    c
}

#[test]
fn push_then_retrieve_and_caption_through_pgvector() {
    let Some(pg) = common::local_postgres_or_skip("pgvector CLI test") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let r = fixture("retrieval");
    import_fixture_store(&store);
    let url = pg.url("fixture_cli");
    run_ok(
        smallcap()
            .args(["datastore", "push"])
            .arg(&store)
            .args(["--to", &url]),
    );
    // Pushing again without --replace is refused.
    let again = smallcap()
        .args(["datastore", "push"])
        .arg(&store)
        .args(["--to", &url])
        .output()
        .unwrap();
    assert!(!again.status.success());

    let cases: Value =
        serde_json::from_slice(&std::fs::read(r.join("cases.json")).unwrap()).unwrap();
    let image_cases = cases["image_cases"].as_array().unwrap();
    let mut cmd = smallcap();
    cmd.args(["retrieve", "--datastore", &url, "--k", "8"]);
    for case in image_cases {
        cmd.arg("--image")
            .arg(fixture(case["image"].as_str().unwrap()));
    }
    let out = run_ok(&mut cmd);
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), image_cases.len());
    for (line, case) in lines.iter().zip(image_cases) {
        assert_eq!(line["ids"], case["top_ids"], "{}", case["image"]);
        assert_eq!(line["captions"], case["top_captions"]);
    }

    // Live retrieval while captioning: the prompt holds the server's top-4 captions.
    let case = &image_cases[0];
    let out = run_ok(
        smallcap()
            .args(["caption", "--model"])
            .arg(fixture("model"))
            .arg("--tokenizer")
            .arg(fixture("tokenizer"))
            .args(["--datastore", &url, "--beams", "1"])
            .arg(fixture(case["image"].as_str().unwrap())),
    );
    let line: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    let want: Vec<Value> = case["top_captions"].as_array().unwrap()[..4].to_vec();
    assert_eq!(line["retrieved_captions"], Value::Array(want));

    // A FAISS file with its captions (a hub one is fetched first) is pushed as it is; it records
    // no encoder, so retrieval names one.
    let url2 = pg.url("fixture_faiss");
    run_ok(
        smallcap()
            .args(["datastore", "push"])
            .arg(format!(
                "{},captions={}",
                r.join("datastore_index").display(),
                r.join("datastore_captions.json").display()
            ))
            .args(["--to", &url2]),
    );
    let out = run_ok(
        smallcap()
            .args(["retrieve", "--datastore", &url2, "--k", "8", "--encoder"])
            .arg(r.join("clip_resnet.pt"))
            .arg("--image")
            .arg(fixture(case["image"].as_str().unwrap())),
    );
    let line: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(line["ids"], case["top_ids"]);
}
