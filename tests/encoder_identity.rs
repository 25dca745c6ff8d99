//! The encoder a datastore records: by OpenAI name or hub id, or a path relative to the store,
//! plus the SHA256 of its weights; never an absolute path. A store moved together with its
//! encoder still finds it; a store opened with other weights of the same model (one description,
//! one dimension) is refused by SHA256; a file that is one of the published CLIP files is
//! recorded by its name; stores of earlier versions (an absolute path, no SHA256) still open.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smallcap-tiny")
        .join(rel)
}

fn sha256_hex(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

fn smallcap(clip_cache: &Path, mirror: Option<&Path>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smallcap"));
    c.env("SMALLCAP_CLIP_CACHE", clip_cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("SMALLCAP_CLIP_MODELS");
    if let Some(m) = mirror {
        c.env("SMALLCAP_CLIP_MODELS", m);
    }
    c
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn failed(out: Output) -> String {
    assert!(!out.status.success(), "the command should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A folder with the fixture CLIP (and its `clip_dims.json`) in `clip/` and captions.
fn setup(root: &Path) -> PathBuf {
    let clip = root.join("clip");
    std::fs::create_dir_all(&clip).unwrap();
    std::fs::copy(
        fixture("retrieval/clip_resnet.pt"),
        clip.join("clip_resnet.pt"),
    )
    .unwrap();
    std::fs::copy(
        fixture("retrieval/clip_dims.json"),
        clip.join("clip_dims.json"),
    )
    .unwrap();
    let lines: Vec<String> = (0..12)
        .map(|i| format!("caption {i} of a {} dog", ["red", "small"][i % 2]))
        .collect();
    std::fs::write(root.join("captions.txt"), lines.join("\n")).unwrap();
    clip.join("clip_resnet.pt")
}

fn build(c: &mut Command, root: &Path, encoder: &str) {
    ok(c.args(["datastore", "build", "--captions"])
        .arg(root.join("captions.txt"))
        .args(["--encoder", encoder, "--out"])
        .arg(root.join("store"))
        .output()
        .unwrap());
}

fn recorded(store: &Path) -> String {
    let m: Value =
        serde_json::from_slice(&std::fs::read(store.join("manifest.json")).unwrap()).unwrap();
    m["encoder"].as_str().unwrap().to_string()
}

fn retrieve(c: &mut Command, store: &Path, extra: &[&str]) -> Output {
    c.args(["retrieve", "--datastore"])
        .arg(store)
        .args(["--k", "2", "--text", "a red dog"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_store_moved_with_its_encoder_finds_it_and_other_weights_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let clip = setup(&a);
    let cache = tmp.path().join("cache");
    build(&mut smallcap(&cache, None), &a, clip.to_str().unwrap());
    let identity = recorded(&a.join("store"));
    assert!(
        identity.ends_with(&format!(
            " @ ../clip/clip_resnet.pt sha256:{}",
            sha256_hex(&clip)
        )),
        "{identity}"
    );
    assert!(
        !identity.contains(tmp.path().to_str().unwrap()),
        "{identity}"
    );
    let before = ok(retrieve(&mut smallcap(&cache, None), &a.join("store"), &[])).stdout;

    // Moved, store and encoder together: the recorded relative path still leads to it.
    let b = tmp.path().join("b");
    std::fs::rename(&a, &b).unwrap();
    let after = ok(retrieve(&mut smallcap(&cache, None), &b.join("store"), &[])).stdout;
    assert_eq!(before, after);

    // The fp16 archive of the same model: the same description and dimension, other weights.
    let other = fixture("retrieval/clip_resnet_jit_fp16.pt");
    let e = failed(retrieve(
        &mut smallcap(&cache, None),
        &b.join("store"),
        &["--encoder", other.to_str().unwrap()],
    ));
    assert!(
        e.contains("SHA256") && e.contains(&sha256_hex(&other)),
        "{e}"
    );

    // A store of an earlier version (an absolute path, no SHA256) still opens.
    let manifest = b.join("store/manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let description = identity.split(" @ ").next().unwrap().to_string();
    m["encoder"] = format!(
        "{description} @ {}",
        b.join("clip/clip_resnet.pt").display()
    )
    .into();
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let old = ok(retrieve(&mut smallcap(&cache, None), &b.join("store"), &[])).stdout;
    assert_eq!(before, old);
}

#[test]
fn a_published_file_given_by_path_is_recorded_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("work");
    let clip = setup(&root);
    // A mirror whose RN50x64 is the fixture file: that file is then "the" RN50x64.
    let mirror = tmp.path().join("mirror.json");
    let url = format!(
        "http://127.0.0.1:9/clip/models/{}/RN50x64.pt",
        sha256_hex(&clip)
    );
    std::fs::write(&mirror, serde_json::json!({ "RN50x64": url }).to_string()).unwrap();
    let cache = tmp.path().join("cache");
    build(
        &mut smallcap(&cache, Some(&mirror)),
        &root,
        clip.to_str().unwrap(),
    );
    let identity = recorded(&root.join("store"));
    assert!(
        identity.ends_with(&format!(" @ RN50x64 sha256:{}", sha256_hex(&clip))),
        "{identity}"
    );
    // Found again by name in the CLIP cache, wherever the store is and the file was.
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(&clip, cache.join("RN50x64.pt")).unwrap();
    std::fs::copy(
        fixture("retrieval/clip_dims.json"),
        cache.join("clip_dims.json"),
    )
    .unwrap();
    std::fs::remove_dir_all(root.join("clip")).unwrap();
    let moved = tmp.path().join("elsewhere");
    std::fs::rename(root.join("store"), &moved).unwrap();
    ok(retrieve(&mut smallcap(&cache, Some(&mirror)), &moved, &[]));
}
