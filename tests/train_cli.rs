//! `smallcap features` and `smallcap train` on the tiny fixture: features equal to the
//! reference's encoder states, checkpoints loadable from both weight files, resuming identical
//! to an uninterrupted run, and every bad input with a clear error and no partial output.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use common::{cases, expected_tensors, fixture, max_abs, max_diff, rel_err};
use serde_json::json;

const IMAGES: [&str; 5] = [
    "synth_0_640x480_RGB.jpg",
    "synth_1_480x640_RGB.png",
    "synth_2_224x224_RGB.png",
    "chelsea.png",
    "coffee.png",
];

fn smallcap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smallcap"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = smallcap(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "smallcap {args:?} failed:\n{err}");
    err
}

fn fails(args: &[&str]) -> String {
    let out = smallcap(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "smallcap {args:?} should fail");
    assert!(
        !err.contains("panicked"),
        "panic instead of an error:\n{err}"
    );
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Annotations: image i (cocoid i+1) of `IMAGES[..n]`, two captions each, in `split`.
fn annotations(dir: &Path, n: usize, split: &str) -> PathBuf {
    common::annotations::karpathy(dir, &IMAGES[..n], split)
}

fn retrieved(dir: &Path, n: usize) -> PathBuf {
    let pool = cases()[0].retrieved_captions.clone().unwrap();
    let map: serde_json::Map<String, serde_json::Value> = (1..=n)
        .map(|i| {
            (
                i.to_string(),
                json!(pool.iter().cycle().skip(i).take(7).collect::<Vec<_>>()),
            )
        })
        .collect();
    let path = dir.join(format!("retrieved_{n}.json"));
    std::fs::write(&path, serde_json::Value::Object(map).to_string()).unwrap();
    path
}

/// Features of the first `n` images, made with `smallcap features` from the fixture model.
fn features(dir: &Path, n: usize) -> PathBuf {
    let out = dir.join("features");
    let ann = annotations(dir, n, "train");
    let images = fixture("images");
    ok(&[
        "features",
        "--images",
        s(&images),
        "--annotations",
        s(&ann),
        "--encoder",
        s(&fixture("model")),
        "--out",
        s(&out),
        "--batch-size",
        "2",
    ]);
    out
}

fn train_args<'a>(ann: &'a Path, feats: &'a Path, ret: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--annotations",
        s(ann),
        "--features",
        s(feats),
        "--retrieved",
        s(ret),
        "--out",
        s(out),
        "--init",
        fixture_model(),
        "--tokenizer",
        fixture_tokenizer(),
        "--batch-size",
        "3",
        "--epochs",
        "2",
    ]
}

fn fixture_model() -> &'static str {
    Box::leak(
        fixture("model")
            .to_string_lossy()
            .to_string()
            .into_boxed_str(),
    )
}

fn fixture_tokenizer() -> &'static str {
    Box::leak(
        fixture("tokenizer")
            .to_string_lossy()
            .to_string()
            .into_boxed_str(),
    )
}

#[test]
fn features_equal_the_reference_encoder_states_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let out = features(tmp.path(), 3);
    let store = smallcap::train::features::FeatureStore::open(&out).unwrap();
    assert_eq!(store.len(), 3);
    let want = expected_tensors();
    let mut checked = 0;
    for case in cases() {
        let name = Path::new(&case.image)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        if let Some(i) = IMAGES[..3].iter().position(|f| *f == name) {
            let got = store.get(&(i + 1).to_string(), &Device::Cpu).unwrap();
            let e = rel_err(&got, &want[&format!("{}.encoder_hidden", case.id)]);
            assert!(
                e < 1e-4,
                "{}: features differ from the reference by {e:e}",
                case.image
            );
            checked += 1;
        }
    }
    assert!(checked >= 3);
    // Resuming: the three are skipped, two more are added in a new file.
    let ann5 = annotations(tmp.path(), 5, "train");
    let err = ok(&[
        "features",
        "--images",
        s(&fixture("images")),
        "--annotations",
        s(&ann5),
        "--encoder",
        fixture_model(),
        "--out",
        s(&out),
        "--f16",
    ]);
    assert!(
        err.contains("wrote features of 2 images") && err.contains("3 were already there"),
        "{err}"
    );
    let store = smallcap::train::features::FeatureStore::open(&out).unwrap();
    assert_eq!(store.len(), 5);
    let err = ok(&[
        "features",
        "--images",
        s(&fixture("images")),
        "--annotations",
        s(&ann5),
        "--encoder",
        fixture_model(),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("all 5 images already have features"), "{err}");
}

#[test]
fn checkpoints_load_from_both_weight_files_and_resume_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let feats = features(tmp.path(), 4);
    let ann = annotations(tmp.path(), 4, "train");
    let ret = retrieved(tmp.path(), 4);
    // 8 samples, batch 3: 3 steps per epoch, 6 in all; dropout and shuffling on.
    let full = tmp.path().join("full");
    ok(&train_args(&ann, &feats, &ret, &full));
    for c in ["checkpoint-3", "checkpoint-6"] {
        assert!(full.join(c).join("pytorch_model.bin").is_file(), "{c}");
    }
    let log = std::fs::read_to_string(full.join("train.log")).unwrap();
    assert_eq!(log.lines().count(), 6);
    assert!(
        log.contains("\"loss\"")
            && log.contains("\"learning_rate\"")
            && log.contains("\"samples_per_second\"")
    );

    let part = tmp.path().join("part");
    let mut a = train_args(&ann, &feats, &ret, &part);
    a.extend(["--steps", "4"]);
    ok(&a);
    assert!(part.join("checkpoint-4").is_dir());
    let mut a = train_args(&ann, &feats, &ret, &part);
    let resume = part.join("checkpoint-4");
    let pos = a.iter().position(|x| *x == "--init").unwrap();
    a.drain(pos..pos + 2);
    a.extend(["--resume", s(&resume)]);
    ok(&a);
    let bytes = |p: PathBuf| std::fs::read(p).unwrap();
    assert!(
        bytes(full.join("checkpoint-6/model.safetensors"))
            == bytes(part.join("checkpoint-6/model.safetensors")),
        "a resumed run differs from an uninterrupted one"
    );
    assert!(
        bytes(full.join("checkpoint-6/optimizer.safetensors"))
            == bytes(part.join("checkpoint-6/optimizer.safetensors"))
    );

    // The checkpoint loads from model.safetensors and from pytorch_model.bin alike.
    let ck = full.join("checkpoint-6");
    // Every file is as readable as a plainly written one (config.json).
    let mode = |f: &str| std::fs::metadata(ck.join(f)).unwrap().permissions();
    for f in [
        "model.safetensors",
        "pytorch_model.bin",
        "optimizer.safetensors",
    ] {
        assert_eq!(mode(f), mode("config.json"), "{f}");
    }
    let cfg = smallcap::SmallCapConfig::from_file(&ck.join("config.json")).unwrap();
    let a = smallcap::checkpoint::StateDict::load_file(
        &ck.join("model.safetensors"),
        &cfg,
        &Device::Cpu,
    )
    .unwrap();
    let b = smallcap::checkpoint::StateDict::load_file(
        &ck.join("pytorch_model.bin"),
        &cfg,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        assert_eq!(t.dims(), u.dims());
        let d = max_diff(t, u);
        assert_eq!(d, 0.0, "{name}");
    }
    // Cross-attention moved, the rest did not.
    let init =
        smallcap::checkpoint::StateDict::load_dir(&fixture("model"), &cfg, &Device::Cpu).unwrap();
    for (name, t) in &a.tensors {
        let d = max_diff(t, &init.tensors[name]);
        assert_eq!(
            d > 0.0,
            name.contains("crossattention"),
            "{name} changed: {d}"
        );
    }
    // And `smallcap caption` runs with it.
    let img = fixture("images/chelsea.png");
    ok(&[
        "caption",
        "--model",
        s(&ck),
        "--tokenizer",
        fixture_tokenizer(),
        "--no-retrieval",
        "--max-new-tokens",
        "3",
        s(&img),
    ]);
    python_reads_pickle(&ck.join("pytorch_model.bin"), &a.tensors);
}

/// Python's own unpickler (torch stubbed: `_rebuild_tensor_v2` and the storage classes are
/// recorded, not run) reads the pickle: every key, shape, stride and storage size.
fn python_reads_pickle(
    path: &Path,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) {
    let python = std::env::var("SMALLCAP_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import sys, zipfile, pickle, json, collections
z = zipfile.ZipFile(sys.argv[1])
names = z.namelist()
pkl = [n for n in names if n.endswith('data.pkl')][0]
prefix = pkl[:-len('data.pkl')]
assert z.read(prefix + 'version').strip() == b'3'
class Storage:
    def __init__(self, kind): self.kind = kind
def rebuild(storage, offset, shape, stride, requires_grad, hooks):
    return {'storage': storage, 'offset': offset, 'shape': list(shape), 'stride': list(stride)}
class U(pickle.Unpickler):
    def find_class(self, mod, name):
        if (mod, name) == ('collections', 'OrderedDict'): return collections.OrderedDict
        if (mod, name) == ('torch._utils', '_rebuild_tensor_v2'): return rebuild
        if mod == 'torch' and name.endswith('Storage'): return Storage(name)
        raise pickle.UnpicklingError(mod + '.' + name)
    def persistent_load(self, pid):
        kind, cls, key, loc, numel = pid
        assert kind == 'storage' and loc == 'cpu'
        size = len(z.read(prefix + 'data/' + key))
        item = {'FloatStorage': 4, 'LongStorage': 8, 'ByteStorage': 1}[cls.kind]
        assert size == numel * item, (key, size, numel)
        return cls.kind
sd = U(z.open(pkl)).load()
print(json.dumps({k: [v['shape'], v['storage']] for k, v in sd.items()}))
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(path)
        .output();
    let Ok(out) = out else {
        panic!("{python} is needed for this check (scripts/test installs it)");
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shapes: std::collections::HashMap<String, (Vec<usize>, String)> =
        serde_json::from_slice(&out.stdout).unwrap();
    for (name, t) in tensors {
        assert_eq!(shapes[name].0.as_slice(), t.dims(), "{name}");
        assert_eq!(shapes[name].1, "FloatStorage", "{name}");
    }
    // Besides the weights, the reference's buffers (fixture model: 2 blocks, 1024 positions,
    // 7×7 patches + the class token).
    let mut buffers = vec![(
        "encoder.embeddings.position_ids".to_string(),
        (vec![1, 50], "LongStorage".to_string()),
    )];
    for i in 0..2 {
        for m in ["attn", "crossattention"] {
            let p = format!("decoder.transformer.h.{i}.{m}");
            buffers.push((
                format!("{p}.bias"),
                (vec![1, 1, 1024, 1024], "ByteStorage".into()),
            ));
            buffers.push((format!("{p}.masked_bias"), (vec![], "FloatStorage".into())));
        }
    }
    assert_eq!(shapes.len(), tensors.len() + buffers.len());
    for (name, want) in &buffers {
        assert_eq!(&shapes[name], want, "{name}");
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let feats = features(tmp.path(), 3);
    let ret = retrieved(tmp.path(), 4);
    let out = tmp.path().join("out");

    // Features missing for an image (image 4 has none).
    let ann4 = annotations(tmp.path(), 4, "train");
    let err = fails(&train_args(&ann4, &feats, &ret, &out));
    assert!(err.contains("no features for image 4"), "{err}");
    assert!(!out.join("checkpoint-1").exists());

    // A feature of the wrong shape.
    let bad_feats = tmp.path().join("bad_features");
    std::fs::create_dir(&bad_feats).unwrap();
    for f in std::fs::read_dir(&feats).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, bad_feats.join(f.file_name().unwrap())).unwrap();
    }
    let wrong =
        candle_core::Tensor::zeros((49, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &[("3".to_string(), wrong)].into_iter().collect(),
        bad_feats.join("zz.safetensors"),
    )
    .unwrap();
    let ann3 = annotations(tmp.path(), 3, "train");
    let err = fails(&train_args(&ann3, &bad_feats, &ret, &out));
    assert!(
        err.contains("image 3") && err.contains("[49, 64]") && err.contains("[50, 64]"),
        "{err}"
    );

    // A retrieved file without an image.
    let ret2 = retrieved(tmp.path(), 2);
    let err = fails(&train_args(&ann3, &feats, &ret2, &out));
    assert!(
        err.contains("no retrieved captions for image 3") && err.contains("retrieved_2.json"),
        "{err}"
    );

    // Annotations without a train split.
    let val_only = annotations(tmp.path(), 3, "val");
    let err = fails(&train_args(&val_only, &feats, &ret, &out));
    assert!(err.contains("no image in split train or restval"), "{err}");

    // An unwritable output folder (below a file).
    let file = tmp.path().join("a_file");
    std::fs::write(&file, "x").unwrap();
    let under = file.join("out");
    let err = fails(&train_args(&ann3, &feats, &ret, &under));
    assert!(
        err.contains("cannot create the output folder") && err.contains("a_file"),
        "{err}"
    );

    // A checkpoint of another reduce factor passed to --init.
    let mut a = train_args(&ann3, &feats, &ret, &out);
    a.extend(["--attention-size", "14"]);
    let err = fails(&a);
    assert!(
        err.contains("reduce factor 4") && err.contains("reduce factor 2"),
        "{err}"
    );
    assert!(!out.join("checkpoint-2").exists());
}

#[test]
fn a_full_disk_while_saving_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let feats = features(tmp.path(), 3);
    let ann = annotations(tmp.path(), 3, "train");
    let ret = retrieved(tmp.path(), 3);
    let out = tmp.path().join("out");
    let mut a = train_args(&ann, &feats, &ret, &out);
    a.extend(["--steps", "2"]);
    ok(&a);
    let first = out.join("checkpoint-2");
    let before: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&first)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    // Resume with files limited to 1 MiB: writing the next checkpoint fails as on a full disk
    // (EFBIG; SIGXFSZ is ignored so the write returns an error).
    let mut a = train_args(&ann, &feats, &ret, &out);
    let pos = a.iter().position(|x| *x == "--init").unwrap();
    a.drain(pos..pos + 2);
    a.extend(["--resume", s(&first)]);
    let quoted: Vec<String> = a.iter().map(|x| format!("'{x}'")).collect();
    let cmd = format!(
        "trap '' XFSZ; ulimit -f 1024; exec '{}' {}",
        env!("CARGO_BIN_EXE_smallcap"),
        quoted.join(" ")
    );
    let res = Command::new("bash").arg("-c").arg(&cmd).output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "saving should fail:\n{err}");
    assert!(
        err.contains("checkpoint-4") && !err.contains("panicked"),
        "{err}"
    );
    for (p, b) in before {
        assert!(std::fs::read(&p).unwrap() == b, "{} changed", p.display());
    }
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        !left
            .iter()
            .any(|n| n.contains("partial") || n == "checkpoint-4"),
        "{left:?}"
    );
}

#[test]
fn micro_batches_give_the_whole_batch_update() {
    let tmp = tempfile::tempdir().unwrap();
    let feats = features(tmp.path(), 3);
    let ret = retrieved(tmp.path(), 3);
    let ann = annotations(tmp.path(), 3, "train");
    let run =
        |name: &str, extra: &[&str]| -> std::collections::HashMap<String, candle_core::Tensor> {
            let out = tmp.path().join(name);
            let mut a = train_args(&ann, &feats, &ret, &out);
            a.extend(["--steps", "2", "--dropout", "0", "--no-shuffle"]);
            a.extend(extra);
            ok(&a);
            candle_core::safetensors::load(out.join("checkpoint-2/model.safetensors"), &Device::Cpu)
                .unwrap()
        };
    let whole = run("whole", &[]);
    let micro = run("micro", &["--micro-batch", "1"]);
    for (name, t) in &whole {
        let d = max_diff(t, &micro[name]);
        let scale = max_abs(t);
        // Only the order of float additions differs.
        assert!(d <= 1e-5 * scale.max(1e-3), "{name}: differs by {d}");
    }
    let err = fails(&[
        "train",
        "--micro-batch",
        "0",
        "--annotations",
        s(&ann),
        "--out",
        s(&tmp.path().join("x")),
    ]);
    assert!(err.contains("--micro-batch"), "{err}");
}

/// `--precision bf16`: recorded in the run's state, kept by a resumed run (which ends where an
/// uninterrupted one does), and effective (the weights differ from f32's, by bf16's rounding
/// and not more); an unknown precision is refused by name.
#[test]
fn bf16_precision_is_kept_on_resume_and_changes_the_products() {
    let tmp = tempfile::tempdir().unwrap();
    let feats = features(tmp.path(), 3);
    let ret = retrieved(tmp.path(), 3);
    let ann = annotations(tmp.path(), 3, "train");
    // 6 samples, batch 3: 2 steps per epoch, 4 in all.
    let run = |name: &str, extra: &[&str]| -> PathBuf {
        let out = tmp.path().join(name);
        let mut a = train_args(&ann, &feats, &ret, &out);
        a.extend(["--dropout", "0", "--no-shuffle"]);
        a.extend(extra);
        ok(&a);
        out
    };
    let weights = |dir: &Path| {
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let f32_run = run("f32", &[]);
    let bf16_run = run("bf16", &["--precision", "bf16"]);
    let state = std::fs::read_to_string(bf16_run.join("checkpoint-4/trainer_state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["options"]["precision"], "bf16");

    let part = run("part", &["--precision", "bf16", "--steps", "2"]);
    let mut a = train_args(&ann, &feats, &ret, &part);
    let pos = a.iter().position(|x| *x == "--init").unwrap();
    a.drain(pos..pos + 2);
    let resume = part.join("checkpoint-2");
    a.extend(["--dropout", "0", "--no-shuffle", "--resume", s(&resume)]);
    ok(&a);
    let (whole, resumed) = (
        weights(&bf16_run.join("checkpoint-4")),
        weights(&part.join("checkpoint-4")),
    );
    let exact = weights(&f32_run.join("checkpoint-4"));
    let mut changed = 0;
    for (name, t) in &whole {
        assert_eq!(
            max_diff(t, &resumed[name]),
            0.0,
            "{name}: resumed run differs"
        );
        let d = max_diff(t, &exact[name]);
        changed += usize::from(d > 0.0);
        // Four updates of at most the learning rate (1e-4) each, bf16 or not.
        assert!(d <= 8e-4, "{name}: bf16 and f32 runs differ by {d}");
    }
    assert!(changed > 0, "--precision bf16 changed nothing");

    let x = tmp.path().join("x");
    let mut a = train_args(&ann, &feats, &ret, &x);
    a.extend(["--precision", "fp8"]);
    let err = fails(&a);
    assert!(
        err.contains("--precision") && err.contains("expected f32 or bf16"),
        "{err}"
    );
}
