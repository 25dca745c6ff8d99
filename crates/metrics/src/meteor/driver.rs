//! METEOR 1.5 through the jar that pycocoevalcap ships, driven exactly as pycocoevalcap 1.2's
//! `meteor.py` drives it: one long-lived `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`
//! process (working directory: the jar's, so it finds `data/paraphrase-en.gz`); for each image a
//! line `SCORE ||| ref1 ||| … ||| refN ||| hyp` (the hypothesis with `|||` removed and double
//! spaces collapsed once, as the toolkit does) answered by a statistics line; then one
//! `EVAL ||| stats1 ||| … ||| statsM` line answered by M per-image scores and the corpus score.
//!
//! The SCORE lines are written by a second thread while the answers are read, so the process
//! never waits on a round trip; the bytes exchanged are the same as the toolkit's.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{DetailedScores, MeteorScores, METEOR_JAR, PARAPHRASE_TABLE};
use crate::ngrams::check_inputs;
use crate::pycompat::is_py_space;
use crate::toolkit::INSTALL_HINT;
use crate::EvalError;

/// A running METEOR 1.5 process.
pub struct Meteor {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
}

/// Why METEOR cannot run here, with how to fix it.
pub fn unavailable_reason(java: &Path, toolkit_dir: Option<&Path>) -> Option<String> {
    let Some(dir) = toolkit_dir else {
        return Some(format!(
            "METEOR unavailable: pycocoevalcap (which ships meteor-1.5.jar) was not found; {INSTALL_HINT}"
        ));
    };
    for rel in [METEOR_JAR, PARAPHRASE_TABLE] {
        let path = dir.join(rel);
        if !path.is_file() {
            return Some(format!(
                "METEOR unavailable: {} is missing; {INSTALL_HINT}",
                path.display()
            ));
        }
    }
    if !crate::toolkit::executable_exists(java) {
        return Some(format!(
            "METEOR unavailable: cannot run Java ({}); install a Java runtime (e.g. `apt-get install \
openjdk-17-jre-headless`) or set SMALLCAP_JAVA",
            java.display()
        ));
    }
    None
}

const STDERR_TAIL: usize = 4096;

impl Meteor {
    /// Starts the METEOR process (it loads its resources in the background while the caller
    /// does other work). Fails with [`EvalError::Meteor`] if the process cannot be started.
    pub fn start(java: &Path, toolkit_dir: &Path) -> Result<Meteor, EvalError> {
        let jar: PathBuf = toolkit_dir.join(METEOR_JAR);
        let cwd = jar
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| toolkit_dir.to_path_buf());
        let mut child = Command::new(java)
            .args([
                "-jar",
                "-Xmx2G",
                "meteor-1.5.jar",
                "-",
                "-",
                "-stdio",
                "-l",
                "en",
                "-norm",
            ])
            .current_dir(&cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| EvalError::Meteor(format!("cannot start {}: {e}", java.display())))?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(EvalError::Meteor("the process has no pipes".into()));
        };
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::clone(&stderr_tail);
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                t.extend_from_slice(&buf[..n]);
                if t.len() > STDERR_TAIL {
                    let cut = t.len() - STDERR_TAIL;
                    t.drain(..cut);
                }
            }
        });
        Ok(Meteor {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            stderr_tail,
            stderr_thread: Some(stderr_thread),
        })
    }

    fn failure(&mut self, what: &str) -> EvalError {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => format!(" (process exited: {s})"),
            _ => String::new(),
        };
        let tail = self
            .stderr_tail
            .lock()
            .map(|t| String::from_utf8_lossy(&t).trim().to_owned())
            .unwrap_or_default();
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!("; its stderr ends with: {tail}")
        };
        EvalError::Meteor(format!("{what}{status}{tail}"))
    }

    fn read_line(&mut self) -> Result<String, EvalError> {
        let mut buf = Vec::new();
        match self.stdout.read_until(b'\n', &mut buf) {
            Ok(0) => Err(self.failure("the process closed its output")),
            Ok(_) => Ok(String::from_utf8_lossy(&buf)
                .trim_matches(is_py_space)
                .to_owned()),
            Err(e) => Err(self.failure(&format!("reading its output failed: {e}"))),
        }
    }

    fn read_float(&mut self) -> Result<f64, EvalError> {
        let line = self.read_line()?;
        line.parse::<f64>()
            .map_err(|_| self.failure(&format!("expected a score, got {line:?}")))
    }

    /// METEOR of `hyps[i]` against `refs[i]` (`Meteor.compute_score`).
    pub fn compute(
        &mut self,
        refs: &[Vec<String>],
        hyps: &[String],
    ) -> Result<MeteorScores, EvalError> {
        self.compute_detailed(refs, hyps).map(|d| d.scores)
    }

    /// [`Meteor::compute`] with the statistics lines the jar answered each `SCORE` line with.
    pub fn compute_detailed(
        &mut self,
        refs: &[Vec<String>],
        hyps: &[String],
    ) -> Result<DetailedScores, EvalError> {
        check_inputs(refs, hyps)?;
        let mut stdin = self
            .stdin
            .take()
            .ok_or_else(|| EvalError::Meteor("the process input is closed".into()))?;
        let lines: Vec<String> = refs
            .iter()
            .zip(hyps)
            .map(|(r, h)| score_line(r, h))
            .collect();
        let writer = std::thread::spawn(move || -> (ChildStdin, std::io::Result<()>) {
            let mut result = Ok(());
            {
                let mut w = std::io::BufWriter::new(&mut stdin);
                for line in &lines {
                    if let Err(e) = w.write_all(line.as_bytes()) {
                        result = Err(e);
                        break;
                    }
                }
                if result.is_ok() {
                    result = w.flush();
                }
            }
            (stdin, result)
        });
        let mut eval_line = String::from("EVAL");
        let mut stats_lines = Vec::with_capacity(hyps.len());
        let mut read_err = None;
        for _ in 0..hyps.len() {
            match self.read_line() {
                Ok(stat) => {
                    eval_line.push_str(" ||| ");
                    eval_line.push_str(&stat);
                    stats_lines.push(stat);
                }
                Err(e) => {
                    read_err = Some(e);
                    break;
                }
            }
        }
        let (mut stdin, write_result) = writer
            .join()
            .map_err(|_| EvalError::Meteor("the writer thread panicked".into()))?;
        if let Some(e) = read_err {
            return Err(e);
        }
        if let Err(e) = write_result {
            return Err(self.failure(&format!("writing to the process failed: {e}")));
        }
        eval_line.push('\n');
        if let Err(e) = stdin
            .write_all(eval_line.as_bytes())
            .and_then(|()| stdin.flush())
        {
            return Err(self.failure(&format!("writing to the process failed: {e}")));
        }
        self.stdin = Some(stdin);
        let per_image = (0..hyps.len())
            .map(|_| self.read_float())
            .collect::<Result<Vec<_>, _>>()?;
        let corpus = self.read_float()?;
        Ok(DetailedScores {
            scores: MeteorScores { corpus, per_image },
            stats_lines,
        })
    }
}

/// The toolkit's `SCORE` line for one image, newline included.
pub fn score_line(refs: &[String], hyp: &str) -> String {
    let hyp = hyp.replace("|||", "").replace("  ", " ");
    let mut line = String::from("SCORE ||| ");
    line.push_str(&refs.join(" ||| "));
    line.push_str(" ||| ");
    line.push_str(&hyp);
    line.push('\n');
    line
}

impl Drop for Meteor {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_line_is_the_toolkits() {
        let refs = vec!["a dog".to_owned(), "the dog".to_owned()];
        assert_eq!(
            score_line(&refs, "a  |||dog   x"),
            "SCORE ||| a dog ||| the dog ||| a dog  x\n"
        );
    }

    #[test]
    fn missing_jar_is_reported_with_instructions() {
        let dir = std::env::temp_dir().join("smallcap-metrics-no-toolkit");
        let why = unavailable_reason(Path::new("java"), Some(&dir)).expect("unavailable");
        assert!(
            why.contains("meteor-1.5.jar is missing") && why.contains("pip install pycocoevalcap")
        );
        let why = unavailable_reason(Path::new("java"), None).expect("unavailable");
        assert!(why.contains("pip install pycocoevalcap"), "{why}");
    }

    #[test]
    fn missing_java_is_reported_with_instructions() {
        let dir = std::env::temp_dir().join(format!("smallcap-meteor-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("meteor/data")).expect("mkdir");
        std::fs::write(dir.join(METEOR_JAR), b"placeholder").expect("write");
        std::fs::write(dir.join(PARAPHRASE_TABLE), b"placeholder").expect("write");
        let why = unavailable_reason(Path::new("/nonexistent/bin/java"), Some(&dir))
            .expect("unavailable");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            why.contains("cannot run Java") && why.contains("SMALLCAP_JAVA"),
            "{why}"
        );
    }
}
