//! Kill -9 safety: `datastore build`, `datastore add`, `features` and `train` are SIGKILLed at
//! random moments (up to three times in a row), and after every kill nothing half-written is
//! visible (the store opens and verifies, or is absent; every checkpoint folder loads; every
//! feature file reads). The next run resumes or starts cleanly and ends with the same bytes as an
//! uninterrupted run.
//!
//! The moments are drawn from a seeded generator over the length of an uninterrupted run, so a
//! kill lands anywhere: loading, encoding, a checkpoint save, a rename. `SMALLCAP_KILL_ROUNDS`
//! (default 3) sets the rounds per command and `SMALLCAP_KILL_SEED` the seed (printed, to replay
//! a failure).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use common::fixture;
use serde_json::json;
use smallcap::Rng;

fn smallcap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smallcap"));
    c.env_remove("HF_ENDPOINT").env("HF_HUB_OFFLINE", "1");
    c
}

fn rounds() -> usize {
    std::env::var("SMALLCAP_KILL_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("SMALLCAP_KILL_ROUNDS is a number"))
        .unwrap_or(3)
}

fn rng(salt: u64) -> Rng {
    let seed = std::env::var("SMALLCAP_KILL_SEED")
        .ok()
        .map(|v| v.parse().expect("SMALLCAP_KILL_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("SMALLCAP_KILL_SEED={seed} (command {salt})");
    Rng::for_stream(seed, salt)
}

/// Runs to completion; panics with its stderr on failure. Returns how long it took.
fn finish(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// When to kill a run.
#[derive(Clone, Copy)]
enum Moment<'a> {
    /// This long after the start.
    After(Duration),
    /// As soon as this holds (polled every 100 µs): a partial file or folder exists, i.e. the
    /// run is in the middle of writing its output.
    When(&'a dyn Fn() -> bool),
}

/// Starts `cmd` and SIGKILLs it at `moment`. False when it exited on its own first (then it
/// must have succeeded).
fn kill_at(cmd: &mut Command, moment: Moment<'_>) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?} failed without being killed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return false;
        }
        let now = match moment {
            Moment::After(delay) => start.elapsed() >= delay,
            Moment::When(cond) => cond(),
        };
        if now {
            // `Child::kill` is SIGKILL on Unix.
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Kills what `cmd()` runs: once while it writes its output (`writing` holds), then up to twice
/// at random moments within `span`, checking `intact` after each kill; then runs `cmd()` to
/// completion. Returns the kills: (while writing, at random).
fn kill_and_finish(
    rng: &mut Rng,
    span: Duration,
    mut cmd: impl FnMut() -> Command,
    writing: impl Fn() -> bool,
    mut intact: impl FnMut(),
) -> (usize, usize) {
    let mut kills = (0, 0);
    if kill_at(&mut cmd(), Moment::When(&writing)) {
        kills.0 += 1;
        intact();
    }
    for _ in 0..rng.below(3) {
        if !kill_at(&mut cmd(), Moment::After(span.mul_f64(rng.uniform()))) {
            break;
        }
        kills.1 += 1;
        intact();
    }
    finish(&mut cmd());
    kills
}

/// Whether `dir` holds an entry whose name ends with `suffix`.
fn holds(dir: &Path, suffix: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(suffix))
    })
}

/// Adds up and reports the kills of a test's rounds.
#[derive(Default)]
struct Tally(usize, usize);

impl Tally {
    fn add(&mut self, (writing, random): (usize, usize)) {
        self.0 += writing;
        self.1 += random;
    }

    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} rounds, {} kills while writing, {} at random moments",
            rounds(),
            self.0,
            self.1
        );
    }
}

fn rfix(rel: &str) -> PathBuf {
    fixture("retrieval").join(rel)
}

fn build(out: &Path, captions: &Path) -> Command {
    let mut c = smallcap();
    c.args(["datastore", "build", "--captions"])
        .arg(captions)
        .arg("--encoder")
        .arg(rfix("clip_resnet.pt"))
        .arg("--out")
        .arg(out)
        .args(["--batch-size", "50"]);
    c
}

fn store_files(dir: &Path) -> BTreeMap<&'static str, Vec<u8>> {
    ["embeddings.bin", "captions.jsonl", "captions.idx"]
        .into_iter()
        .map(|f| (f, std::fs::read(dir.join(f)).unwrap()))
        .collect()
}

/// A store that is visible opens and verifies; returns its count.
fn store_count(dir: &Path) -> Option<usize> {
    if !dir.exists() {
        return None;
    }
    let store = smallcap_datastore::store::Datastore::open(dir)
        .unwrap_or_else(|e| panic!("a half-written store is visible: {e}"));
    store
        .verify()
        .unwrap_or_else(|e| panic!("a half-written store is visible: {e}"));
    Some(store.len())
}

fn all_captions() -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(rfix("datastore_captions.json")).unwrap())
        .unwrap()
}

#[test]
fn datastore_build_killed_at_random_resumes_to_the_same_store() {
    let tmp = tempfile::tempdir().unwrap();
    let captions = rfix("datastore_captions.json");
    let whole = tmp.path().join("whole");
    let span = finish(&mut build(&whole, &captions));
    let want = store_files(&whole);
    let mut rng = rng(1);
    let mut kills = Tally::default();
    for round in 0..rounds() {
        let out = tmp.path().join(format!("store{round}"));
        kills.add(kill_and_finish(
            &mut rng,
            span,
            || build(&out, &captions),
            || tmp.path().join(format!("store{round}.partial")).exists(),
            || {
                if let Some(n) = store_count(&out) {
                    assert_eq!(n, want["captions.idx"].len() / 8 - 1);
                }
            },
        ));
        assert_eq!(store_files(&out), want, "round {round}");
        assert!(!tmp.path().join(format!("store{round}.building")).exists());
    }
    kills.report("datastore build");
}

#[test]
fn datastore_add_killed_at_random_leaves_the_old_or_the_new_store() {
    let tmp = tempfile::tempdir().unwrap();
    let all = all_captions();
    let write =
        |name: &str, caps: &[String]| common::annotations::write_captions(tmp.path(), name, caps);
    let (head, tail) = (
        write("head.json", &all[..200]),
        write("tail.json", &all[200..]),
    );
    let whole = tmp.path().join("whole");
    finish(&mut build(&whole, &write("all.json", &all)));
    let want = store_files(&whole);
    let base = tmp.path().join("base");
    finish(&mut build(&base, &head));
    let add = |dir: &Path| {
        let mut c = smallcap();
        c.args(["datastore", "add"])
            .arg(dir)
            .arg("--captions")
            .arg(&tail)
            .args(["--batch-size", "50"]);
        c
    };
    let copy = |to: &Path| {
        std::fs::create_dir(to).unwrap();
        for e in std::fs::read_dir(&base).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    let span = {
        let probe = tmp.path().join("probe");
        copy(&probe);
        finish(&mut add(&probe))
    };
    let mut rng = rng(2);
    let mut kills = Tally::default();
    for round in 0..rounds() {
        let out = tmp.path().join(format!("store{round}"));
        copy(&out);
        kills.add(kill_and_finish(
            &mut rng,
            span,
            || add(&out),
            || tmp.path().join(format!("store{round}.partial")).exists(),
            || {
                let n = store_count(&out).expect("the store is always there");
                assert!(n == 200 || n == all.len(), "{n} captions after a kill");
            },
        ));
        assert_eq!(store_files(&out), want, "round {round}");
    }
    kills.report("datastore add");
}

const IMAGES: [&str; 11] = [
    "synth_0_640x480_RGB.jpg",
    "synth_1_480x640_RGB.png",
    "synth_2_224x224_RGB.png",
    "synth_3_300x301_L.png",
    "synth_4_1000x150_RGB.jpg",
    "synth_5_97x203_RGBA.png",
    "synth_6_333x250_P.png",
    "synth_7_225x224_RGB.jpg",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
];

fn features_cmd(ann: &Path, out: &Path) -> Command {
    let mut c = smallcap();
    c.arg("features")
        .arg("--images")
        .arg(fixture("images"))
        .arg("--annotations")
        .arg(ann)
        .arg("--encoder")
        .arg(fixture("model"))
        .arg("--out")
        .arg(out)
        .args(["--batch-size", "2"]);
    c
}

/// Every feature of a features folder, by image id (opening it reads every chunk's header).
fn features_of(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let store = smallcap::train::features::FeatureStore::open(dir)
        .unwrap_or_else(|e| panic!("a half-written feature file is visible: {e}"));
    (1..=IMAGES.len())
        .filter_map(|i| {
            let t = store.get(&i.to_string(), &Device::Cpu).ok()?;
            Some((i.to_string(), t.flatten_all().unwrap().to_vec1().unwrap()))
        })
        .collect()
}

#[test]
fn features_killed_at_random_resume_to_the_same_features() {
    let tmp = tempfile::tempdir().unwrap();
    let ann = common::annotations::karpathy(tmp.path(), &IMAGES, "train");
    let whole = tmp.path().join("whole");
    let span = finish(&mut features_cmd(&ann, &whole));
    let want = features_of(&whole);
    assert_eq!(want.len(), IMAGES.len());
    let mut rng = rng(3);
    let mut kills = Tally::default();
    for round in 0..rounds() {
        let out = tmp.path().join(format!("features{round}"));
        kills.add(kill_and_finish(
            &mut rng,
            span,
            || features_cmd(&ann, &out),
            // A chunk is written in well under the polling interval: kill once one is there
            // or on its way, while the next is being encoded or written.
            || holds(&out, ".partial") || holds(&out, ".safetensors"),
            || {
                if out.exists() {
                    for (id, got) in features_of(&out) {
                        assert_eq!(got, want[&id], "image {id} after a kill");
                    }
                }
            },
        ));
        assert_eq!(features_of(&out), want, "round {round}");
    }
    kills.report("features");
}

/// `checkpoint-N` folders of a training output, by step.
fn checkpoints(out: &Path) -> BTreeMap<usize, PathBuf> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| {
            let path = e.unwrap().path();
            let step = path
                .file_name()?
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()?;
            Some((step, path))
        })
        .collect()
}

#[test]
fn train_killed_at_random_resumes_from_a_whole_checkpoint_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 4;
    let ann = common::annotations::karpathy(tmp.path(), &IMAGES[..n], "train");
    let feats = tmp.path().join("features");
    finish(&mut features_cmd(&ann, &feats));
    let pool = common::cases()[0].retrieved_captions.clone().unwrap();
    let retrieved: serde_json::Map<String, serde_json::Value> = (1..=n)
        .map(|i| {
            (
                i.to_string(),
                json!(pool.iter().cycle().skip(i).take(7).collect::<Vec<_>>()),
            )
        })
        .collect();
    let ret = tmp.path().join("retrieved.json");
    std::fs::write(&ret, serde_json::Value::Object(retrieved).to_string()).unwrap();
    // 8 samples, batch 3: 3 steps and one checkpoint per epoch, 12 steps in all.
    let last = 12;
    let train = |out: &Path, resume: Option<&Path>| {
        let mut c = smallcap();
        c.arg("train")
            .arg("--annotations")
            .arg(&ann)
            .arg("--features")
            .arg(&feats)
            .arg("--retrieved")
            .arg(&ret)
            .arg("--out")
            .arg(out)
            .arg("--tokenizer")
            .arg(fixture("tokenizer"))
            .args(["--batch-size", "3", "--epochs", "4"]);
        match resume {
            Some(ck) => c.arg("--resume").arg(ck),
            None => c.arg("--init").arg(fixture("model")),
        };
        c
    };
    let whole = tmp.path().join("whole");
    let span = finish(&mut train(&whole, None));
    let weights = |out: &Path| {
        std::fs::read(out.join(format!("checkpoint-{last}/model.safetensors"))).unwrap()
    };
    let want = weights(&whole);
    let mut rng = rng(4);
    let mut kills = Tally::default();
    for round in 0..rounds() {
        let out = tmp.path().join(format!("run{round}"));
        // Each run continues from the latest whole checkpoint, or starts again without one.
        let next = || {
            let cks = checkpoints(&out);
            train(&out, cks.values().next_back().map(PathBuf::as_path))
        };
        kills.add(kill_and_finish(
            &mut rng,
            span,
            || {
                if checkpoints(&out).contains_key(&last) {
                    // Killed after the last save: nothing is left to do.
                    let mut c = smallcap();
                    c.arg("--help");
                    c
                } else {
                    next()
                }
            },
            || holds(&out, ".partial"),
            || {
                for ck in checkpoints(&out).values() {
                    smallcap::SmallCap::load_dir(ck, &Device::Cpu)
                        .unwrap_or_else(|e| panic!("a half-written checkpoint is visible: {e}"));
                    candle_core::safetensors::load(ck.join("optimizer.safetensors"), &Device::Cpu)
                        .unwrap_or_else(|e| {
                            panic!("{}: half-written optimizer state: {e}", ck.display())
                        });
                }
            },
        ));
        assert!(
            weights(&out) == want,
            "round {round}: differs from an uninterrupted run"
        );
    }
    kills.report("train");
}
