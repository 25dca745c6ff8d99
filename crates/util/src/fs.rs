//! Atomic file writes: the new content goes to a temporary file in the target's directory, which
//! is flushed, synced to disk and renamed over the target. A reader sees the old file or the new
//! one, never a partial one; on any error the temporary file is removed and the target is left
//! as it was.
//!
//! The temporary file is `.<name>.tmp.<pid>.<counter>` next to the target (hidden, unique per
//! process and call, created with `create_new` so that it never clobbers another writer's file).
//! The target's directory is not created: writing into a missing directory is an error. After the
//! rename the directory is synced too on Unix (best effort), so that the rename itself survives a
//! crash.
//!
//! [`exchange`] swaps two folders in one step, for replacing a whole folder atomically.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Capacity of the writer handed to [`write_atomic_with`]'s `fill`.
const BUFFER: usize = 1 << 20;

/// How many fresh temporary names are tried when one already exists (a stale file left by a
/// killed process of the same id).
const ATTEMPTS: usize = 16;

/// Writes `bytes` to `path` atomically (see the module note).
///
/// Errors are the plain [`io::Error`] of the step that failed; callers add the path to their own
/// error. A `path` without a file name (`/`, `..`) is an [`io::ErrorKind::InvalidInput`] error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(
        path,
        |_, mut file| {
            file.write_all(bytes)?;
            Ok(file)
        },
        |_, e| e,
    )
}

/// Writes `path` atomically (see the module note) with the content that `fill` writes into a
/// buffered writer, for content too large to build in memory first.
///
/// An I/O error of the helper itself is turned into the caller's error type by
/// `io_error(file, error)`, where `file` is the file the failed step was on: the temporary file
/// for its creation, writing, flushing and syncing, `path` for the rename (and for a `path`
/// without a file name). Errors of `fill` are returned as they are.
pub fn write_atomic_with<E>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
    io_error: impl Fn(&Path, io::Error) -> E,
) -> Result<(), E> {
    replace(
        path,
        |tmp, file| {
            let mut w = BufWriter::with_capacity(BUFFER, file);
            fill(&mut w)?;
            w.flush().map_err(|e| io_error(tmp, e))?;
            w.into_inner().map_err(|e| io_error(tmp, e.into_error()))
        },
        &io_error,
    )
}

/// The common part: creates the temporary file, lets `write` fill it (`write` gets the
/// temporary path for its errors and returns the file), syncs, renames, syncs the directory.
fn replace<E>(
    path: &Path,
    write: impl FnOnce(&Path, File) -> Result<File, E>,
    io_error: impl Fn(&Path, io::Error) -> E,
) -> Result<(), E> {
    let name = path.file_name().ok_or_else(|| {
        io_error(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (tmp, file) = create_temp(dir, name).map_err(|(tmp, e)| io_error(&tmp, e))?;
    // From here on the temporary file is ours: remove it on every error.
    let result = write(&tmp, file).and_then(|file| {
        file.sync_all().map_err(|e| io_error(&tmp, e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| io_error(path, e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(dir);
    Ok(())
}

/// Creates a new, empty temporary file `.<name>.tmp.<pid>.<counter>` in `dir`. On error, the
/// path that could not be created.
fn create_temp(
    dir: &Path,
    name: &std::ffi::OsStr,
) -> Result<(PathBuf, File), (PathBuf, io::Error)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut attempt = 0;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp.{}.{n}", std::process::id()));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err((tmp, e)),
        }
    }
}

/// Syncs the directory `dir` so that a rename in it is durable. Best effort: some file systems
/// cannot sync a directory, and the new file is in place whatever happens here.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Swaps the names of two existing paths (files or folders) in one step, where the OS can
/// (Linux's `renameat2` with `RENAME_EXCHANGE`): a process killed at any moment leaves each name
/// holding one of the two, never neither. `Ok(false)` where the exchange is not available (another
/// OS, or a file system without it): nothing was changed and the caller falls back to renames.
pub fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
            Ok(()) => Ok(true),
            Err(
                rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP,
            ) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_atomic(&path, b"[1, 2]").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"[1, 2]");
        assert_eq!(names(dir.path()), ["out.json"]);
    }

    #[test]
    fn replaces_an_existing_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        fs::write(&path, b"old content, longer than the new one").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        write_atomic(&path, b"").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"");
        assert_eq!(names(dir.path()), ["out.json"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("out.json");
        let e = write_atomic(&path, b"data").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(!path.exists());
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn a_path_without_a_file_name_is_an_error() {
        let e = write_atomic(Path::new("/"), b"data").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_failed_rename_removes_the_temporary_file_and_keeps_the_target() {
        // A directory in the target's place: the rename fails after the data are written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_atomic(&path, b"data").is_err());
        assert!(path.is_dir());
        assert_eq!(names(dir.path()), ["taken"]);
    }

    #[test]
    fn streaming_write_and_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        let io_err = |p: &Path, e: io::Error| format!("{}: {e}", p.display());
        write_atomic_with(
            &path,
            |w| {
                for i in 0..1000u32 {
                    w.write_all(&i.to_le_bytes()).map_err(|e| e.to_string())?;
                }
                Ok(())
            },
            io_err,
        )
        .unwrap();
        assert_eq!(fs::read(&path).unwrap().len(), 4000);

        // An error of `fill` is returned as it is; the old file stays, no temporary file is left.
        let e = write_atomic_with(
            &path,
            |w| {
                w.write_all(b"partial").unwrap();
                Err("fill failed".to_string())
            },
            io_err,
        )
        .unwrap_err();
        assert_eq!(e, "fill failed");
        assert_eq!(fs::read(&path).unwrap().len(), 4000);
        assert_eq!(names(dir.path()), ["big.bin"]);

        // A helper error names the file it happened on.
        let missing = dir.path().join("missing").join("x.bin");
        let e = write_atomic_with(&missing, |_| Ok(()), io_err).unwrap_err();
        assert!(e.contains(".x.bin.tmp."), "{e}");
    }

    #[test]
    fn concurrent_writers_do_not_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, &[t; 4096]).unwrap();
                    }
                });
            }
        });
        let content = fs::read(&path).unwrap();
        assert_eq!(content.len(), 4096);
        assert!(content.iter().all(|&b| b == content[0]));
        assert_eq!(names(dir.path()), ["shared"]);
    }

    #[test]
    fn exchange_swaps_two_folders_or_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("x"), "old").unwrap();
        fs::write(b.join("x"), "new").unwrap();
        let swapped = exchange(&b, &a).unwrap();
        let (in_a, in_b) = (
            fs::read_to_string(a.join("x")).unwrap(),
            fs::read_to_string(b.join("x")).unwrap(),
        );
        if swapped {
            assert_eq!((in_a.as_str(), in_b.as_str()), ("new", "old"));
        } else {
            assert_eq!((in_a.as_str(), in_b.as_str()), ("old", "new"));
        }
        #[cfg(target_os = "linux")]
        assert!(swapped, "tmpfs and ext4 support RENAME_EXCHANGE");
        // A missing side is an error, not a rename.
        assert!(exchange(&a, &dir.path().join("missing")).is_err());
        assert!(a.is_dir());
    }
}
