//! Helpers shared by the integration tests: locating the Java toolkit (pycocoevalcap's jars and
//! Python), the "fail in CI, skip locally" policy, fixture paths and a deterministic PRNG.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use smallcap_metrics::toolkit;
use smallcap_util::rng::SplitMix64;

/// Path of a file in the eval-dev fixture pack.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/eval-dev"
    ))
    .join(name)
}

/// The external tools a comparison test needs.
pub struct Tools {
    pub java: PathBuf,
    pub python: PathBuf,
    pub toolkit_dir: PathBuf,
}

/// The toolkit if Java, Python and pycocoevalcap are all present. Otherwise: a panic when `CI`
/// is set (CI installs them, so their absence is a failure), else `None` after printing why the
/// test is skipped.
pub fn tools(test: &str) -> Option<Tools> {
    let java = toolkit::java(None);
    let python = toolkit::python();
    let problem = if !toolkit::java_works(&java) {
        Some(format!("cannot run Java ({})", java.display()))
    } else {
        match toolkit::toolkit_dir(None) {
            None => Some(format!(
                "pycocoevalcap not found (set SMALLCAP_COCOEVAL_DIR, or SMALLCAP_PYTHON to a \
                 Python with `pip install pycocoevalcap==1.2`; tried {})",
                python.display()
            )),
            Some(dir) => {
                let ok = Command::new(&python)
                    .args(["-c", "import pycocoevalcap, numpy"])
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    return Some(Tools {
                        java,
                        python,
                        toolkit_dir: dir,
                    });
                }
                Some(format!("{} cannot import pycocoevalcap", python.display()))
            }
        }
    };
    let problem = problem.unwrap_or_default();
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {problem}; CI must provide Java and pycocoevalcap");
    }
    // Written to the real stderr (not the test harness's captured output) so it shows.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {problem}");
    None
}

/// Deterministic test data from [`SplitMix64`]: the field is the generator's state (`Rng(seed)`).
/// `below` is a plain modulo, not the generator's multiply-shift, so that every seed gives the
/// same test data as before.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut g = SplitMix64(self.0);
        let x = g.next_u64();
        self.0 = g.0;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn pick_str(&mut self, items: &[&'static str]) -> &'static str {
        items[self.below(items.len())]
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// A unique scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "smallcap-metrics-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
