//! `smallcap serve`'s `/openapi.json` against the server itself: the document states the limits,
//! datastore names and key requirement the server was started with, and Schemathesis (run here
//! with all its checks, positive and negative, on the fixture model, the fixture's FAISS
//! datastore and the fixture's OpenAI CLIP as retrieval encoder) finds no request that the
//! document allows and the server refuses, none it forbids and the server accepts, no 5xx and
//! no response that breaks the document. Images are drawn by `scripts/schemathesis_hooks.py`
//! (a schema can say "binary", not "decodes as a PNG").
//!
//! Schemathesis comes from `$SMALLCAP_PYTHON` (scripts/test installs it in the oracle venv);
//! without it the test skips, and fails under CI.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture_server::{image_bytes, image_cases};
use common::serve_cli::spawn_serve;
use common::*;

fn serve_args(store: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--model".into(),
        fixture("model").into(),
        "--tokenizer".into(),
        fixture("tokenizer").into(),
        "--datastore".into(),
        format!("coco={}", store.display()).into(),
        "--retrieval-encoder".into(),
        fixture("retrieval/clip_resnet.pt").into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs Schemathesis against `addr`; `None` (after saying so) where it is not installed outside
/// CI.
fn schemathesis(addr: &str, extra: &[&str]) -> Option<(bool, String)> {
    let python = std::env::var("SMALLCAP_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import schemathesis"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let msg = format!("schemathesis is not importable by {python} (set SMALLCAP_PYTHON)");
        assert!(std::env::var_os("CI").is_none(), "under CI: {msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    let seed = std::env::var("SMALLCAP_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261204".into());
    let examples = std::env::var("SMALLCAP_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "60".into());
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "run",
        ])
        .arg(format!("http://{addr}/openapi.json"))
        .args([
            "--checks",
            "all",
            "--max-examples",
            &examples,
            "--seed",
            &seed,
        ])
        .args(["--generation-database", "none", "--no-color"])
        .args(extra)
        .current_dir(work.path())
        .env("PYTHONPATH", repo().join("scripts"))
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// Reads the server's log lines (one per request) so that its stderr pipe never fills.
fn drain(lines: impl Iterator<Item = std::io::Result<String>> + Send + 'static) {
    std::thread::spawn(move || lines.for_each(drop));
}

#[test]
fn the_served_document_states_the_servers_limits_names_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("coco");
    import_fixture_store(&store);
    let args = serve_args(
        &store,
        &[
            "--max-k",
            "6",
            "--max-beams",
            "5",
            "--max-new-tokens",
            "40",
            "--max-images-per-request",
            "3",
        ],
    );
    let (_child, addr, _lines) = spawn_serve(&args);
    let doc = common::http::get(&format!("http://{addr}/openapi.json")).json();
    let s = &doc["components"]["schemas"];
    assert_eq!(
        (&s["K"]["maximum"], &s["Beams"]["maximum"]),
        (&serde_json::json!(6), &serde_json::json!(5))
    );
    assert_eq!(s["MaxNewTokens"]["maximum"], 40);
    assert_eq!(s["ImageFiles"]["maxItems"], 3);
    assert_eq!(s["QueryTexts"]["maxItems"], 3);
    assert_eq!(s["DatastoreName"]["enum"], serde_json::json!(["coco"]));
    // The fixture model's config: k = 4; the generation defaults of infer.py.
    assert_eq!(
        (&s["K"]["default"], &s["Beams"]["default"]),
        (&serde_json::json!(4), &serde_json::json!(3))
    );
    // No keys: no security requirement anywhere.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for op in ops.as_object().unwrap().values() {
            assert!(op.get("security").is_none(), "{path}");
        }
    }
    // The limits are the server's: one past each is refused, each itself is served.
    let post = |query: &str| {
        common::http::post(
            &format!("http://{addr}/v1/captions?{query}"),
            "image/png",
            &image_bytes(&image_cases()[0].image),
        )
    };
    assert_eq!(post("beams=6&max_new_tokens=2").status, 400);
    assert_eq!(post("k=7&max_new_tokens=2").status, 400);
    assert_eq!(post("max_new_tokens=41").status, 400);
    let r = post("beams=5&k=6&max_new_tokens=2");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["k"], 6);
}

#[test]
fn schemathesis_finds_nothing_open_and_with_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("coco");
    import_fixture_store(&store);
    // Small limits keep generated batches and prompts short.
    let limits = [
        "--max-new-tokens",
        "4",
        "--max-beams",
        "3",
        "--max-images-per-request",
        "4",
    ];
    let (_child, addr, lines) = spawn_serve(&serve_args(&store, &limits));
    drain(lines);
    let Some((ok, text)) = schemathesis(&addr, &[]) else {
        return;
    };
    assert!(ok, "schemathesis found problems (open server):\n{text}");
    assert!(text.contains("No issues found"), "{text}");
    drop(_child);

    // With keys (and /metrics protected): the document requires the key, Schemathesis sends it,
    // and its ignored_auth check asks each operation without it.
    let mut keyed: Vec<&str> = limits.to_vec();
    keyed.extend(["--api-key", "schema-key", "--protect-metrics"]);
    let (_child, addr, lines) = spawn_serve(&serve_args(&store, &keyed));
    drain(lines);
    let (ok, text) = schemathesis(&addr, &["-H", "Authorization: Bearer schema-key"]).unwrap();
    assert!(ok, "schemathesis found problems (with keys):\n{text}");
    assert!(text.contains("No issues found"), "{text}");
}
