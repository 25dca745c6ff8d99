//! The fuzz targets' checks (`fuzz/src/lib.rs`, included here) on every input the fuzzers found a
//! fault with (minimised, in `fuzz/regressions/<target>/`, named after the fault), so that each
//! finding stays fixed, and on the committed seed corpora (`fuzz/seeds/<target>/`: valid inputs
//! of every format, made by the tools that define them), so that the checks themselves pass on
//! what is right. Runs without libFuzzer, in the normal test build.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

#[test]
fn every_regression_and_seed_input_passes_its_target_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, check) in checks::TARGETS {
        for kind in ["regressions", "seeds"] {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| check(&data)).is_err() {
                    failures.push(path.display().to_string());
                }
                replayed += 1;
            }
        }
    }
    assert!(
        replayed >= 50,
        "only {replayed} inputs found under {}",
        root.display()
    );
    assert!(failures.is_empty(), "the checks fail on: {failures:#?}");
}
