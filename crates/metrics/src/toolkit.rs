//! Where the Java parts of the toolkit live: the `pycocoevalcap` package directory (which ships
//! `meteor/meteor-1.5.jar` with its paraphrase table and `spice/spice-1.0.jar`) and the `java`
//! executable. Nothing here is downloaded: the jars come from `pip install pycocoevalcap`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Environment variable naming the pycocoevalcap package directory.
pub const ENV_TOOLKIT_DIR: &str = "SMALLCAP_COCOEVAL_DIR";
/// Environment variable naming the Python interpreter used to locate pycocoevalcap.
pub const ENV_PYTHON: &str = "SMALLCAP_PYTHON";
/// Environment variable naming the `java` executable.
pub const ENV_JAVA: &str = "SMALLCAP_JAVA";

/// How to get the toolkit, for "unavailable" messages.
pub const INSTALL_HINT: &str =
    "install it with `pip install pycocoevalcap==1.2` (and a Java runtime, \
e.g. `apt-get install openjdk-17-jre-headless`), then set SMALLCAP_COCOEVAL_DIR to the package \
directory or SMALLCAP_PYTHON to the interpreter that has it";

/// The Python interpreter to ask: `$SMALLCAP_PYTHON`, else `python3`.
pub fn python() -> PathBuf {
    std::env::var_os(ENV_PYTHON)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// The `java` executable: `explicit`, else `$SMALLCAP_JAVA`, else `java` from `PATH`.
pub fn java(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(ENV_JAVA)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// Whether `program` names an executable file: a path that exists, or a bare name found on
/// `PATH` (checked without running it, so it costs no JVM start).
pub fn executable_exists(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Whether `java -version` runs.
pub fn java_works(java: &Path) -> bool {
    Command::new(java)
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The pycocoevalcap package directory: `explicit`, else `$SMALLCAP_COCOEVAL_DIR`, else where
/// `import pycocoevalcap` finds it with [`python`]. `None` if none of these gives a directory.
pub fn toolkit_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return Some(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os(ENV_TOOLKIT_DIR).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let out = Command::new(python())
        .args([
            "-c",
            "import os, pycocoevalcap; print(os.path.abspath(list(pycocoevalcap.__path__)[0]))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.is_dir().then_some(dir)
}
