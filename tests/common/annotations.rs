//! Small training and datastore inputs written by the tests: Karpathy-style annotations and
//! caption lists.

use std::path::{Path, PathBuf};

use serde_json::json;

/// Karpathy-style annotations of `images` (image i gets cocoid i + 1 and two captions) in
/// `split`, written to `dir/ann_{split}_{n}.json`.
pub fn karpathy(dir: &Path, images: &[&str], split: &str) -> PathBuf {
    let caps = [
        ["a red square", "a square that is red"],
        ["two men riding horses", "men on horses"],
    ];
    let images: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let sentences: Vec<_> = caps[i % 2]
                .iter()
                .map(|c| json!({"tokens": c.split(' ').collect::<Vec<_>>()}))
                .collect();
            json!({"cocoid": i + 1, "filename": f, "filepath": "", "split": split,
                   "sentences": sentences})
        })
        .collect();
    let path = dir.join(format!("ann_{split}_{}.json", images.len()));
    std::fs::write(&path, json!({"images": images}).to_string()).unwrap();
    path
}

/// Writes `caps` as a JSON list to `dir/name`.
pub fn write_captions(dir: &Path, name: &str, caps: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string(caps).unwrap()).unwrap();
    p
}
