//! Retrieved-caption files as the reference writes them (`retrieved_caps_*.json`):
//! a JSON object mapping an image id to its list of retrieved captions, looked up by the image's
//! file name, its stem, or the integer in its name (COCO ids).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A retrieved-captions file: image id to captions.
#[derive(Debug, Clone)]
pub struct RetrievedCaptions {
    path: PathBuf,
    map: HashMap<String, Vec<String>>,
}

impl RetrievedCaptions {
    /// Reads a `retrieved_caps_*.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let map: HashMap<String, Vec<String>> = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Input(format!(
                "{}: not a JSON object of image id → list of captions: {e}",
                path.display()
            ))
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }

    /// Wraps a map held in memory.
    pub fn from_map(map: HashMap<String, Vec<String>>) -> Self {
        Self {
            path: PathBuf::from("<memory>"),
            map,
        }
    }

    /// The file this map was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The captions stored under `key` (an image id), or an error naming the file and the key.
    pub fn get(&self, key: &str) -> Result<&[String]> {
        self.map.get(key).map(Vec::as_slice).ok_or_else(|| {
            Error::Input(format!(
                "{}: no retrieved captions for image {key}",
                self.path.display()
            ))
        })
    }

    /// The captions of `image`: by file name, then stem, then the integer in its name.
    pub fn lookup(&self, image: &Path) -> Result<&[String]> {
        let name = image.file_name().map(|s| s.to_string_lossy().to_string());
        let stem = image.file_stem().map(|s| s.to_string_lossy().to_string());
        let id = image_id(image).map(|i| i.to_string());
        [name, stem, id]
            .into_iter()
            .flatten()
            .find_map(|key| self.map.get(&key))
            .map(Vec::as_slice)
            .ok_or_else(|| {
                Error::Input(format!(
                    "{}: no retrieved captions for {} (looked up by file name, stem and id)",
                    self.path.display(),
                    image.display()
                ))
            })
    }
}

/// The integer in an image's file name (the last run of digits), as COCO names carry their id:
/// `COCO_val2014_000000391895.jpg` → 391895.
pub fn image_id(image: &Path) -> Option<u64> {
    let stem = image.file_stem()?.to_string_lossy();
    let digits: String = stem
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .to_string();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coco_names_give_their_integer_id() {
        assert_eq!(
            image_id(Path::new("a/COCO_val2014_000000391895.jpg")),
            Some(391895)
        );
        assert_eq!(image_id(Path::new("000000000042.png")), Some(42));
        assert_eq!(image_id(Path::new("cat.png")), None);
    }

    #[test]
    fn lookup_by_name_stem_or_id() {
        let mut m = HashMap::new();
        m.insert("391895".to_string(), vec!["by id".to_string()]);
        m.insert("dog".to_string(), vec!["by stem".to_string()]);
        m.insert("cat.png".to_string(), vec!["by name".to_string()]);
        let r = RetrievedCaptions::from_map(m);
        assert_eq!(
            r.lookup(Path::new("x/COCO_val2014_000000391895.jpg"))
                .unwrap()[0],
            "by id"
        );
        assert_eq!(r.lookup(Path::new("dog.jpg")).unwrap()[0], "by stem");
        assert_eq!(r.lookup(Path::new("cat.png")).unwrap()[0], "by name");
        assert!(r.lookup(Path::new("bird.png")).is_err());
    }
}
