//! File-system helpers: memory-mapping, atomic file writes (temp file + rename), folder swaps.

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Memory-maps a whole file read-only. An empty file gives `None` (nothing to map).
pub(crate) fn mmap_file(path: &Path) -> Result<Option<Mmap>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the mapping is read-only; like every reader of memory-mapped files we rely on no
    // other process truncating the file while it is mapped (our writers never modify a file in
    // place: they write a new file and rename it).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Some(map))
}

/// A path with a suffix appended to its last component (`dir` → `dir.partial`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes a file atomically with the content `fill` writes ([`smallcap_util::fs::write_atomic_with`]:
/// a temporary file in the same folder is written, flushed, synced and renamed over `path`). On
/// error the temporary file is removed and `path` is untouched; I/O errors name the file they
/// happened on.
pub(crate) fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    smallcap_util::fs::write_atomic_with(path, fill, |p, e| Error::io(p, e))
}

/// Removes a stale `<dir>.partial` folder (left by an interrupted build) and creates it anew.
pub(crate) fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Write helper mapping io errors to the file path.
pub(crate) fn write_all(w: &mut impl Write, path: &Path, bytes: &[u8]) -> Result<()> {
    w.write_all(bytes).map_err(|e| Error::io(path, e))
}
