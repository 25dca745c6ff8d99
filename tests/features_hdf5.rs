//! `smallcap features --from-hdf5`: the reference's HDF5 feature files, written here by h5py as
//! the reference's `extract_features.py` writes them, become a feature folder holding the same
//! values; importing resumes, and every malformed file is refused with an error naming it.
//! Needs the `hdf5` feature (scripts/test builds with it) and h5py in `$SMALLCAP_PYTHON`.
#![cfg_attr(not(feature = "hdf5"), allow(dead_code, unused_imports))]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device, IndexOp, Tensor};
use common::fixture;

fn smallcap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smallcap"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a Python script with h5py and numpy (`$SMALLCAP_PYTHON`, set up by scripts/test).
fn python(script: &str, args: &[&str]) {
    let python = std::env::var("SMALLCAP_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{python} is needed for this test ({e}); scripts/test sets it up")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fixture batch's encoder states `[4, 50, 64]` (the reference's vision `last_hidden_state`).
fn fixture_states() -> Tensor {
    candle_core::safetensors::load(fixture("train/batch.safetensors"), &Device::Cpu).unwrap()
        ["encoder_hidden"]
        .clone()
}

/// Reads the fixture batch's encoder states with numpy and writes them with h5py as the
/// reference's `encode_split` does (`create_dataset(str(cocoid), (50, 768), data=encoding)`, here
/// with the fixture's width), for cocoids 1..=`n`.
const WRITE_REFERENCE_FILE: &str = r#"
import sys, json, struct, numpy as np, h5py
raw = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
meta = json.loads(raw[8:8 + n])['encoder_hidden']
a, b = meta['data_offsets']
enc = np.frombuffer(raw[8 + n + a:8 + n + b], dtype='<f4').reshape(meta['shape'])
count = int(sys.argv[3])
h5py_file = h5py.File(sys.argv[2], 'w')
for cocoid, encoding in zip(range(1, count + 1), enc[:count]):
    h5py_file.create_dataset(str(cocoid), enc.shape[1:], data=encoding)
h5py_file.close()
"#;

fn reference_file(dir: &Path, name: &str, n: usize) -> std::path::PathBuf {
    let path = dir.join(name);
    python(
        WRITE_REFERENCE_FILE,
        &[
            s(&fixture("train/batch.safetensors")),
            s(&path),
            &n.to_string(),
        ],
    );
    path
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[cfg(feature = "hdf5")]
#[test]
fn the_reference_hdf5_file_imports_bit_for_bit_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let states = fixture_states();
    let out = tmp.path().join("features");
    // Two images first, then the whole file: only the other two are added.
    let two = reference_file(tmp.path(), "two.hdf5", 2);
    let all = reference_file(tmp.path(), "train.hdf5", 4);
    let o = smallcap(&["features", "--from-hdf5", s(&two), "--out", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = smallcap(&[
        "features",
        "--from-hdf5",
        s(&all),
        "--out",
        s(&out),
        "--chunk",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("wrote features of 2 images") && stderr(&o).contains("2 were already"),
        "{}",
        stderr(&o)
    );
    let store = smallcap::train::features::FeatureStore::open(&out).unwrap();
    assert_eq!(store.len(), 4);
    store.check(["1", "2", "3", "4"], 50, 64).unwrap();
    for i in 0..4 {
        let got = store.get(&(i + 1).to_string(), &Device::Cpu).unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            states.i(i).unwrap().to_vec2::<f32>().unwrap(),
            "image {}: imported features differ",
            i + 1
        );
    }
    let o = smallcap(&["features", "--from-hdf5", s(&all), "--out", s(&out)]);
    assert!(
        o.status.success() && stderr(&o).contains("all 4 images already have features"),
        "{}",
        stderr(&o)
    );

    // --f16 stores the f32 values rounded to f16.
    let half = tmp.path().join("half");
    let o = smallcap(&[
        "features",
        "--from-hdf5",
        s(&all),
        "--out",
        s(&half),
        "--f16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let file = std::fs::read_dir(&half).unwrap().next().unwrap().unwrap();
    let stored = candle_core::safetensors::load(file.path(), &Device::Cpu).unwrap();
    // Round to nearest even, by the half crate's conversion.
    let rounded: Vec<Vec<half::f16>> = states
        .i(2)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|row| row.iter().map(|&v| half::f16::from_f32(v)).collect())
        .collect();
    assert_eq!(stored["3"].dtype(), DType::F16);
    assert_eq!(stored["3"].to_vec2::<half::f16>().unwrap(), rounded);
}

#[cfg(feature = "hdf5")]
#[test]
fn malformed_hdf5_files_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    python(
        r#"
import sys, numpy as np, h5py
d = sys.argv[1]
with h5py.File(d + '/group.hdf5', 'w') as f:
    f.create_dataset('1', (50, 64), dtype='f4')
    f.create_group('extra')
with h5py.File(d + '/ints.hdf5', 'w') as f:
    f.create_dataset('7', (50, 64), dtype='i4')
with h5py.File(d + '/rank.hdf5', 'w') as f:
    f.create_dataset('8', (1, 50, 64), dtype='f4')
with h5py.File(d + '/shapes.hdf5', 'w') as f:
    f.create_dataset('1', (50, 64), dtype='f4')
    f.create_dataset('2', (50, 32), dtype='f4')
with h5py.File(d + '/empty.hdf5', 'w') as f:
    pass
with h5py.File(d + '/f64.hdf5', 'w') as f:
    f.create_dataset('5', data=np.arange(6, dtype='f8').reshape(2, 3) / 3, compression='gzip')
open(d + '/text.hdf5', 'w').write('not hdf5')
"#,
        &[s(dir)],
    );
    for (file, want) in [
        ("group.hdf5", "member extra is not a dataset"),
        ("ints.hdf5", "dataset 7 holds"),
        ("rank.hdf5", "dataset 8 has shape [1, 50, 64]"),
        (
            "shapes.hdf5",
            "dataset 2 has shape [50, 32] but dataset 1 has [50, 64]",
        ),
        ("empty.hdf5", "holds no features"),
        ("text.hdf5", "not a readable HDF5 file"),
        ("missing.hdf5", "no such file"),
    ] {
        let out = dir.join(format!("out-{file}"));
        let o = smallcap(&[
            "features",
            "--from-hdf5",
            s(&dir.join(file)),
            "--out",
            s(&out),
        ]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{file} was accepted");
        assert!(
            err.contains(file) && err.contains(want) && !err.contains("panicked"),
            "{file}: {err}"
        );
        assert!(
            !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
            "{file}: output written"
        );
    }
    // 64-bit floats (here gzip-compressed) are accepted and rounded to f32.
    let out = dir.join("out-f64");
    let o = smallcap(&[
        "features",
        "--from-hdf5",
        s(&dir.join("f64.hdf5")),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let store = smallcap::train::features::FeatureStore::open(&out).unwrap();
    let got = store
        .get("5", &Device::Cpu)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let want: Vec<Vec<f32>> = (0..2)
        .map(|r| (0..3).map(|c| ((r * 3 + c) as f64 / 3.0) as f32).collect())
        .collect();
    assert_eq!(got, want);
}

#[cfg(not(feature = "hdf5"))]
#[test]
fn without_the_hdf5_feature_the_import_says_how_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("train.hdf5");
    let o = smallcap(&[
        "features",
        "--from-hdf5",
        s(&file),
        "--out",
        s(&tmp.path().join("f")),
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("train.hdf5")
            && err.contains("--features hdf5")
            && err.contains("features --help"),
        "{err}"
    );
}
