//! OpenAI CLIP files by name, fetched as `clip.load` fetches them, against loopback servers: one
//! in the layout of OpenAI's URLs (`/clip/models/<sha256>/RN50x64.pt`, here holding the
//! reference's TorchScript fp16 fixture archive, named through `$SMALLCAP_CLIP_MODELS` as a
//! mirror), one in the hub's (checkpoint, tokenizer, FAISS datastore). The paper's whole pipeline
//! is then one command — the checkpoint's `retrieval_encoder` (`RN50x64`) is the default — and it
//! gives `pipeline_cases.json`; it runs again with both servers unreachable and
//! `HF_HUB_OFFLINE=1`. SHA256 mismatches, cut-off downloads, unknown names and a broken mirror
//! file are clear errors that leave nothing in the cache.
//!
//! The fixture's text width (32) is below what `build_model` infers heads from, so its
//! `clip_dims.json` is put in the test's CLIP cache folder beside the downloaded file (real
//! OpenAI files need none).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use common::{assert_pipeline_cases, fixture, hub_server, openai_server, pipeline_cases};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn archive() -> PathBuf {
    fixture("retrieval/clip_resnet_jit_fp16.pt")
}

fn sha256_hex(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

/// A CLIP cache folder holding the fixture's `clip_dims.json`, and a mirror file mapping
/// `RN50x64` to `url`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("clip");
        std::fs::create_dir(&cache).unwrap();
        std::fs::copy(
            fixture("retrieval/clip_dims.json"),
            cache.join("clip_dims.json"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("mirror.json"),
            serde_json::json!({ "RN50x64": url }).to_string(),
        )
        .unwrap();
        Self { dir }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("clip")
    }

    fn command(&self, hub: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_smallcap"));
        c.env("SMALLCAP_CLIP_CACHE", self.cache())
            .env("SMALLCAP_CLIP_MODELS", self.dir.path().join("mirror.json"))
            .env("HF_ENDPOINT", hub)
            .env("HF_HOME", self.dir.path().join("hf"))
            .env_remove("HF_HUB_OFFLINE");
        c
    }

    /// `smallcap retrieve` of one image from the local fixture datastore with `--encoder NAME`.
    fn retrieve(&self, name: &str) -> Output {
        self.command("http://127.0.0.1:9")
            .args(["retrieve", "--encoder", name, "--k", "4", "--datastore"])
            .arg(format!(
                "{},captions={}",
                fixture("retrieval/datastore_index").display(),
                fixture("retrieval/datastore_captions.json").display()
            ))
            .arg("--image")
            .arg(fixture("images/chelsea.png"))
            .output()
            .unwrap()
    }

    /// The cache folder's files other than `clip_dims.json`.
    fn cached_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.cache())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "clip_dims.json")
            .collect();
        names.sort();
        names
    }
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "the command should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn openai_layout(sha: &str) -> (openai_server::OpenAiServer, String) {
    let path = format!("/clip/models/{sha}/RN50x64.pt");
    let server = openai_server::start(HashMap::from([(path.clone(), archive())]));
    let url = format!("{}{path}", server.base);
    (server, url)
}

#[test]
fn the_paper_pipeline_is_one_command_then_runs_offline() {
    let (openai, url) = openai_layout(&sha256_hex(&archive()));
    let hub = hub_server::start(hub_server::fixture_repos());
    let setup = Setup::new(&url);
    let cases = pipeline_cases();
    let caption = |mut c: Command| {
        c.args([
            "caption",
            "--model",
            "test-org/smallcap-tiny",
            "--tokenizer",
            "gpt2",
        ])
        .args(["--datastore", "hf://test-org/smallcap-tiny/datastore_index"]);
        for case in &cases {
            c.arg(fixture(&format!(
                "images/{}",
                case["image"].as_str().unwrap()
            )));
        }
        c.output().unwrap()
    };
    let out = caption(setup.command(&hub.endpoint));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_pipeline_cases(&lines, &cases);
    assert_eq!(setup.cached_files(), ["RN50x64.pt"]);
    assert_eq!(
        std::fs::read(setup.cache().join("RN50x64.pt")).unwrap(),
        std::fs::read(archive()).unwrap()
    );

    // Both servers unreachable (the mirror still names the stopped one), offline: the same.
    let before = (
        openai.requests.load(Ordering::SeqCst),
        hub.requests.load(Ordering::SeqCst),
    );
    let mut offline = setup.command("http://127.0.0.1:9");
    offline.env("HF_HUB_OFFLINE", "1");
    let again = caption(offline);
    assert_eq!(
        again.stdout,
        out.stdout,
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        before,
        (
            openai.requests.load(Ordering::SeqCst),
            hub.requests.load(Ordering::SeqCst)
        )
    );
}

#[test]
fn a_download_cut_off_is_never_used_and_the_next_run_restarts_it() {
    let (server, url) = openai_layout(&sha256_hex(&archive()));
    let setup = Setup::new(&url);
    server.cut.store(true, Ordering::SeqCst);
    let e = failed(&setup.retrieve("RN50x64"));
    assert!(e.contains("RN50x64"), "{e}");
    assert!(
        setup.cached_files().is_empty(),
        "{:?}",
        setup.cached_files()
    );
    let out = setup.retrieve("RN50x64");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(setup.cached_files(), ["RN50x64.pt"]);
}

#[test]
fn a_file_whose_sha256_is_not_its_urls_is_refused_and_removed() {
    let wrong = "0".repeat(64);
    let (_server, url) = openai_layout(&wrong);
    let setup = Setup::new(&url);
    let e = failed(&setup.retrieve("RN50x64"));
    assert!(e.contains("SHA256") && e.contains(&wrong), "{e}");
    assert!(
        setup.cached_files().is_empty(),
        "{:?}",
        setup.cached_files()
    );
    // Offline with nothing cached: the error names the model and what to do.
    let mut c = setup.command("http://127.0.0.1:9");
    c.env("HF_HUB_OFFLINE", "1")
        .args([
            "retrieve",
            "--encoder",
            "RN50x64",
            "--text",
            "a dog",
            "--datastore",
        ])
        .arg(format!(
            "{},captions={}",
            fixture("retrieval/datastore_index").display(),
            fixture("retrieval/datastore_captions.json").display()
        ));
    let e = failed(&c.output().unwrap());
    assert!(e.contains("RN50x64") && e.contains("HF_HUB_OFFLINE"), "{e}");
}

#[test]
fn unknown_names_and_broken_mirror_files_are_clear_errors() {
    let setup = Setup::new("http://127.0.0.1:9/clip/models/x/RN50x64.pt");
    let e = failed(&setup.retrieve("RN50x128"));
    assert!(e.contains("RN50x64") && e.contains("ViT-B/32"), "{e}");
    // A mirror URL without the SHA256 segment.
    let e = failed(&setup.retrieve("RN50x64"));
    assert!(e.contains("<sha256>"), "{e}");
    std::fs::write(setup.dir.path().join("mirror.json"), "{not json").unwrap();
    let e = failed(&setup.retrieve("RN50x64"));
    assert!(e.contains("mirror.json") && e.contains("JSON"), "{e}");
}

/// `smallcap download` fills the caches; the paper command then runs with the servers never
/// asked again and `HF_HUB_OFFLINE=1`.
#[test]
fn download_fills_the_caches_for_an_offline_run() {
    let (openai, url) = openai_layout(&sha256_hex(&archive()));
    let hub = hub_server::start(hub_server::fixture_repos());
    let setup = Setup::new(&url);
    let out = setup
        .command(&hub.endpoint)
        .args([
            "download",
            "test-org/smallcap-tiny",
            "--datastore",
            "datastore_index",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    // Every file with its size: checkpoint, tokenizer, the encoder by name, the datastore.
    let files = [
        ("checkpoint", fixture("model/config.json")),
        ("checkpoint", fixture("model/pytorch_model.bin")),
        ("tokenizer", fixture("tokenizer/vocab.json")),
        ("tokenizer", fixture("tokenizer/merges.txt")),
        ("encoder", archive()),
        ("datastore", fixture("retrieval/datastore_index")),
        ("datastore", fixture("retrieval/datastore_captions.json")),
    ];
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), files.len() + 1, "{listing}");
    let mut total = 0;
    for ((kind, file), line) in files.iter().zip(&lines) {
        let n = std::fs::metadata(file).unwrap().len();
        total += n;
        assert!(line.starts_with(kind), "{line}");
        assert!(line.contains(&format!(" {n} bytes")), "{line}");
    }
    assert!(
        lines[files.len()].contains(&format!(" {total} bytes")),
        "{listing}"
    );

    let before = (
        openai.requests.load(Ordering::SeqCst),
        hub.requests.load(Ordering::SeqCst),
    );
    let mut offline = setup.command("http://127.0.0.1:9");
    offline
        .env("HF_HUB_OFFLINE", "1")
        .args(["caption", "--model", "test-org/smallcap-tiny"])
        .args(["--datastore", "hf://test-org/smallcap-tiny/datastore_index"])
        .arg(fixture("images/chelsea.png"));
    let out = offline.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: Value =
        serde_json::from_slice(&std::fs::read(fixture("pipeline_cases.json")).unwrap()).unwrap();
    let want = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["image"] == "chelsea.png")
        .unwrap()
        .clone();
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["caption"], want["caption"]);
    assert_eq!(got["retrieved_captions"], want["retrieved_captions"]);
    assert_eq!(
        before,
        (
            openai.requests.load(Ordering::SeqCst),
            hub.requests.load(Ordering::SeqCst)
        )
    );
}
