//! Datastores published in a hub repository, named `hf://OWNER/REPO[@REVISION]/FILE`: a loopback
//! server in the hub's URL layout serves the fixture checkpoint, tokenizer and FAISS datastore
//! (`datastore_index` + `datastore_index_captions.json`, the hub's naming). One `caption` command
//! with live retrieval through the reference's TorchScript fp16 CLIP archive gives
//! `pipeline_cases.json` (the reference end to end); the same command then runs with the server
//! stopped and `HF_HUB_OFFLINE=1`. A download cut off midway is never used, and the next run
//! completes it; missing files and captions of the wrong count are clear errors.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use common::{assert_pipeline_cases, fixture, hub_server, pipeline_cases};
use serde_json::Value;

fn smallcap(endpoint: &str, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smallcap"));
    c.env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_OFFLINE");
    c
}

fn caption(mut c: Command, datastore: &str, images: &[String]) -> Output {
    c.args(["caption", "--model", "test-org/smallcap-tiny"])
        .args(["--tokenizer", "gpt2", "--datastore", datastore])
        .arg("--retrieval-encoder")
        .arg(fixture("retrieval/clip_resnet_jit_fp16.pt"));
    for i in images {
        c.arg(fixture(&format!("images/{i}")));
    }
    c.output().unwrap()
}

fn stdout_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "the command should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_hub_datastore_captions_as_the_reference_then_offline() {
    let server = hub_server::start(hub_server::fixture_repos());
    let home = tempfile::tempdir().unwrap();
    let cases = pipeline_cases();
    let images: Vec<String> = cases
        .iter()
        .map(|c| c["image"].as_str().unwrap().to_string())
        .collect();
    let spec = "hf://test-org/smallcap-tiny/datastore_index";

    // A download cut off midway fails the command and leaves nothing that a later run uses.
    *server.cut.lock().unwrap() = Some("datastore_index".into());
    let out = caption(smallcap(&server.endpoint, home.path()), spec, &images[..1]);
    let e = stderr(&out);
    assert!(e.contains("datastore_index"), "{e}");
    assert!(
        server.cut.lock().unwrap().is_none(),
        "the cut download was not made"
    );

    let out = caption(smallcap(&server.endpoint, home.path()), spec, &images);
    let lines = stdout_lines(&out);
    assert_pipeline_cases(&lines, &cases);
    // In place: the store is the cached file itself, byte for byte the published one.
    let snapshots = home
        .path()
        .join("hub/models--test-org--smallcap-tiny/snapshots");
    let snapshot = std::fs::read_dir(&snapshots)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read(snapshot.join("datastore_index")).unwrap(),
        std::fs::read(fixture("retrieval/datastore_index")).unwrap()
    );

    // Offline, with the server unreachable: the same output, no request made.
    let before = server.requests.load(Ordering::SeqCst);
    let mut offline = smallcap("http://127.0.0.1:9", home.path());
    offline.env("HF_HUB_OFFLINE", "1");
    let again = caption(offline, spec, &images);
    assert_eq!(again.stdout, out.stdout);
    assert_eq!(server.requests.load(Ordering::SeqCst), before);

    // Offline with nothing cached: the error names the file, the repo and what to do.
    let mut offline = smallcap("http://127.0.0.1:9", home.path());
    offline.env("HF_HUB_OFFLINE", "1");
    let e = stderr(&caption(
        offline,
        "hf://test-org/other/coco_index",
        &images[..1],
    ));
    assert!(
        e.contains("coco_index") && e.contains("test-org/other") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}

#[test]
fn missing_hub_files_and_miscounted_captions_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let caps: Vec<String> = serde_json::from_slice(
        &std::fs::read(fixture("retrieval/datastore_captions.json")).unwrap(),
    )
    .unwrap();
    let short = tmp.path().join("short_captions.json");
    std::fs::write(&short, serde_json::to_vec(&caps[..caps.len() - 1]).unwrap()).unwrap();
    let mut repos = hub_server::fixture_repos();
    repos.insert(
        "test-org/stores".into(),
        HashMap::from([
            ("lonely_index".into(), fixture("retrieval/datastore_index")),
            ("short_index".into(), fixture("retrieval/datastore_index")),
            ("short_index_captions.json".into(), short),
        ]),
    );
    let server = hub_server::start(repos);
    let home = tempfile::tempdir().unwrap();
    let image = ["chelsea.png".to_string()];
    let run = |spec: &str| {
        stderr(&caption(
            smallcap(&server.endpoint, home.path()),
            spec,
            &image,
        ))
    };
    // A file the repo does not have (404): the error names repo, revision and file.
    let e = run("hf://test-org/stores@main/absent_index");
    assert!(
        e.contains("absent_index") && e.contains("test-org/stores") && e.contains("main"),
        "{e}"
    );
    // An index without its captions file.
    let e = run("hf://test-org/stores/lonely_index");
    assert!(e.contains("lonely_index_captions.json"), "{e}");
    // Captions of another count than the index's vectors.
    let e = run("hf://test-org/stores/short_index");
    assert!(e.contains(&(caps.len() - 1).to_string()), "{e}");
    // Not the hf:// form.
    let e = run("hf://test-org/stores");
    assert!(e.contains("hf://OWNER/REPO[@REVISION]/FILE"), "{e}");
}

/// `datastore info` and `datastore export` take a hub datastore: the description and a copy of
/// the published files, byte for byte.
#[test]
fn info_and_export_take_a_hub_datastore() {
    let server = hub_server::start(hub_server::fixture_repos());
    let home = tempfile::tempdir().unwrap();
    let spec = "hf://test-org/smallcap-tiny/datastore_index";
    let out = smallcap(&server.endpoint, home.path())
        .args(["datastore", "info", spec])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&success_stdout(&out)).unwrap();
    let caps: Vec<String> = serde_json::from_slice(
        &std::fs::read(fixture("retrieval/datastore_captions.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(info["count"], caps.len());
    assert_eq!(info["dim"], 32);
    let index = home.path().join("out_index");
    let captions = home.path().join("out_captions.json");
    let out = smallcap(&server.endpoint, home.path())
        .args(["datastore", "export", spec, "--index"])
        .arg(&index)
        .arg("--captions")
        .arg(&captions)
        .output()
        .unwrap();
    success_stdout(&out);
    assert_eq!(
        std::fs::read(&index).unwrap(),
        std::fs::read(fixture("retrieval/datastore_index")).unwrap()
    );
    assert_eq!(
        std::fs::read(&captions).unwrap(),
        std::fs::read(fixture("retrieval/datastore_captions.json")).unwrap()
    );
}

fn success_stdout(out: &Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.clone()
}
