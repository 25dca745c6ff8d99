//! Datastore specs: the one string form that names a caption store on every command and in the
//! library, parsed into a [`DatastoreSpec`] and opened as a [`CaptionStore`].
//!
//! The forms:
//! - `postgres://…?table=NAME` (or `postgresql://`): a store pushed to PostgreSQL + pgvector;
//! - a folder: our memory-mapped datastore format;
//! - a FAISS index file (flat or IVF-flat), its captions beside it as `<index file>_captions.json`
//!   (the hub's naming: `coco_index` + `coco_index_captions.json`);
//! - `INDEX_FILE,captions=CAPTIONS_FILE`: a FAISS index file with its captions named explicitly;
//! - `hf://OWNER/REPO[@REVISION]/FILE` (`huggingface_hub`'s file-system form): a FAISS index file
//!   in a hub repository, with `FILE_captions.json` beside it, as SmallCap's datastores are
//!   published (`hf://Yova/SmallCap7M/coco_index`). Both are fetched into the hub cache
//!   ([`crate::hub`]) when the store is opened and searched there in place, memory-mapped.
//!
//! A named spec, `NAME=SPEC` (as `serve --datastore` takes them), is read by [`NamedSpec`].

use std::fmt;
use std::path::{Path, PathBuf};

use super::CaptionStore;
use crate::error::{Error, Result};

/// What every datastore error lists: the forms a spec can take.
pub const SPEC_FORMS: &str = "a datastore folder, a FAISS index file with its captions beside it as <index>_captions.json, INDEX_FILE,captions=CAPTIONS_FILE, a FAISS file in a hub repository as hf://OWNER/REPO[@REVISION]/FILE (with FILE_captions.json beside it), or a postgres://…?table=NAME URL";

/// A parsed datastore spec (see the module documentation for the string forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreSpec {
    /// Our folder format.
    Folder(PathBuf),
    /// A FAISS index file and its captions file.
    Faiss {
        /// The index file (`IndexFlatIP` or `IndexIVFFlat`, as `faiss.write_index` writes it).
        index: PathBuf,
        /// The captions: a JSON list, or an id-keyed object, one caption per vector.
        captions: PathBuf,
    },
    /// A FAISS index file in a hub repository, its captions beside it as `<file>_captions.json`.
    Hub {
        /// `owner/name`, optionally `@revision`.
        repo: String,
        /// The index file's path in the repository.
        file: String,
    },
    /// A `postgres://` URL with `?table=NAME`.
    Postgres(String),
}

/// A hub FAISS file and its `<file>_captions.json`, from the cache or downloaded into it.
fn fetch_hub(repo: &str, file: &str) -> Result<(PathBuf, PathBuf)> {
    let index = crate::hub::repo_file(repo, file)?;
    let captions = crate::hub::repo_file(repo, &format!("{file}_captions.json"))?;
    Ok((index, captions))
}

/// `OWNER/REPO[@REVISION]/FILE` of an `hf://` spec.
fn parse_hub(spec: &str, rest: &str) -> Result<DatastoreSpec> {
    let mut parts = rest.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(owner), Some(repo), Some(file))
            if !owner.is_empty()
                && !repo.is_empty()
                && !file.is_empty()
                && !file.ends_with('/')
                && !file.split('/').any(|p| p.is_empty() || p == "..") =>
        {
            Ok(DatastoreSpec::Hub {
                repo: format!("{owner}/{repo}"),
                file: file.to_string(),
            })
        }
        _ => Err(Error::Input(format!(
            "datastore {spec}: a hub datastore is hf://OWNER/REPO[@REVISION]/FILE, e.g. hf://Yova/SmallCap7M/coco_index"
        ))),
    }
}

/// The captions file the hub keeps beside a FAISS index: `<index file name>_captions.json`.
pub fn faiss_captions_path(index: &Path) -> PathBuf {
    let mut name = index.as_os_str().to_owned();
    name.push("_captions.json");
    PathBuf::from(name)
}

impl DatastoreSpec {
    /// Parses `spec`, looking at the file system to tell a folder from an index file.
    pub fn parse(spec: &str) -> Result<Self> {
        if spec.is_empty() {
            return Err(Error::Input(format!(
                "empty datastore spec; give {SPEC_FORMS}"
            )));
        }
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            return Ok(Self::Postgres(spec.to_string()));
        }
        if let Some(rest) = spec.strip_prefix("hf://") {
            return parse_hub(spec, rest);
        }
        if let Some(scheme) = spec.split_once("://").map(|(s, _)| s) {
            return Err(Error::Input(format!(
                "datastore {spec}: unknown scheme {scheme}://; give {SPEC_FORMS}"
            )));
        }
        if let Some((index, captions)) = spec.split_once(",captions=") {
            let index = PathBuf::from(index);
            if !index.is_file() {
                return Err(Error::Input(format!(
                    "datastore {spec}: the FAISS index file {} does not exist",
                    index.display()
                )));
            }
            return Ok(Self::Faiss {
                index,
                captions: PathBuf::from(captions),
            });
        }
        let path = PathBuf::from(spec);
        if path.is_dir() {
            return Ok(Self::Folder(path));
        }
        if path.is_file() {
            let captions = faiss_captions_path(&path);
            if !captions.is_file() {
                return Err(Error::Input(format!(
                    "datastore {spec}: a file, read as a FAISS index, but its captions file {} is missing; give INDEX_FILE,captions=CAPTIONS_FILE",
                    captions.display()
                )));
            }
            return Ok(Self::Faiss {
                index: path,
                captions,
            });
        }
        Err(Error::Input(format!(
            "datastore {spec}: no such folder or file; give {SPEC_FORMS}"
        )))
    }

    /// Opens the store the spec names (captions and vectors checked to agree in count).
    pub fn open(&self) -> Result<CaptionStore> {
        match self {
            Self::Folder(dir) => Ok(CaptionStore::Datastore(
                smallcap_datastore::Datastore::open(dir)?,
            )),
            Self::Faiss { index, captions } => CaptionStore::open_faiss(index, captions),
            Self::Hub { repo, file } => {
                let (index, captions) = fetch_hub(repo, file)?;
                CaptionStore::open_faiss(&index, &captions)
            }
            Self::Postgres(url) => Ok(CaptionStore::Postgres(
                smallcap_datastore::pgvector::PgStore::connect(url)?,
            )),
        }
    }

    /// For a hub spec, its index file and `<file>_captions.json`, from the hub cache or
    /// downloaded into it; `None` for the other forms (nothing to fetch).
    pub fn fetch(&self) -> Result<Option<(PathBuf, PathBuf)>> {
        match self {
            Self::Hub { repo, file } => fetch_hub(repo, file).map(Some),
            _ => Ok(None),
        }
    }

    /// The name a store gets when none is given: the folder's or index file's name, or the
    /// PostgreSQL table.
    pub fn default_name(&self) -> Option<String> {
        let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        match self {
            Self::Folder(dir) => file_name(dir),
            Self::Faiss { index, .. } => file_name(index),
            Self::Hub { file, .. } => file_name(Path::new(file)),
            Self::Postgres(url) => url
                .split_once('?')
                .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("table=")))
                .map(str::to_string),
        }
    }
}

impl fmt::Display for DatastoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Folder(dir) => write!(f, "{}", dir.display()),
            Self::Faiss { index, captions } if *captions == faiss_captions_path(index) => {
                write!(f, "{}", index.display())
            }
            Self::Faiss { index, captions } => {
                write!(f, "{},captions={}", index.display(), captions.display())
            }
            Self::Hub { repo, file } => write!(f, "hf://{repo}/{file}"),
            Self::Postgres(url) => f.write_str(url),
        }
    }
}

/// `[NAME=]SPEC`: a datastore and the name requests choose it by (default: the spec's
/// [`DatastoreSpec::default_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSpec {
    /// The name (`coco`, `flickr30k`, …).
    pub name: String,
    /// The store.
    pub spec: DatastoreSpec,
}

impl NamedSpec {
    /// Parses `NAME=SPEC` or `SPEC`. A `NAME` holds no `/` and is not empty (so `a=b/c` names the
    /// store `a`, and a URL's `?table=` is never read as a name).
    pub fn parse(text: &str) -> Result<Self> {
        if let Some((name, rest)) = text.split_once('=') {
            let is_name =
                !name.is_empty() && !name.contains(['/', ':', ',', '?']) && !rest.starts_with('=');
            if is_name {
                return Ok(Self {
                    name: name.to_string(),
                    spec: DatastoreSpec::parse(rest)?,
                });
            }
        }
        let spec = DatastoreSpec::parse(text)?;
        let name = spec.default_name().ok_or_else(|| {
            Error::Input(format!(
                "datastore {text}: no name can be taken from it; give NAME={text}"
            ))
        })?;
        Ok(Self { name, spec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("coco_index");
        std::fs::write(&index, b"x").unwrap();
        // Without its captions file the index is refused, naming the missing file.
        let e = DatastoreSpec::parse(index.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("coco_index_captions.json"), "{e}");
        std::fs::write(dir.path().join("coco_index_captions.json"), b"[]").unwrap();
        assert_eq!(
            DatastoreSpec::parse(index.to_str().unwrap()).unwrap(),
            DatastoreSpec::Faiss {
                index: index.clone(),
                captions: dir.path().join("coco_index_captions.json"),
            }
        );
        let explicit = format!("{},captions=/x/caps.json", index.display());
        assert_eq!(
            DatastoreSpec::parse(&explicit).unwrap(),
            DatastoreSpec::Faiss {
                index: index.clone(),
                captions: PathBuf::from("/x/caps.json"),
            }
        );
        assert_eq!(
            DatastoreSpec::parse(dir.path().to_str().unwrap()).unwrap(),
            DatastoreSpec::Folder(dir.path().to_path_buf())
        );
        let url = "postgres://u@h:5/db?table=coco";
        assert_eq!(
            DatastoreSpec::parse(url).unwrap(),
            DatastoreSpec::Postgres(url.into())
        );
        let hub = "hf://Yova/SmallCap7M@v1/indexes/coco_index";
        let parsed = DatastoreSpec::parse(hub).unwrap();
        assert_eq!(
            parsed,
            DatastoreSpec::Hub {
                repo: "Yova/SmallCap7M@v1".into(),
                file: "indexes/coco_index".into(),
            }
        );
        assert_eq!(parsed.to_string(), hub);
        assert_eq!(parsed.default_name().as_deref(), Some("coco_index"));
        for bad in [
            "hf://Yova/SmallCap7M",
            "hf://Yova//x",
            "hf://a/b/../x",
            "hf://a/b/x/",
        ] {
            let e = DatastoreSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("hf://OWNER/REPO[@REVISION]/FILE"), "{bad}: {e}");
        }
        for bad in ["", "/no/such/store", "s3://bucket/x"] {
            let e = DatastoreSpec::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("postgres://") && e.contains("_captions.json") && e.contains("hf://"),
                "{e}"
            );
        }
    }

    #[test]
    fn names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let named = NamedSpec::parse(&format!("flickr={d}")).unwrap();
        assert_eq!(named.name, "flickr");
        let plain = NamedSpec::parse(d).unwrap();
        assert_eq!(
            plain.name,
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let pg = NamedSpec::parse("postgres://u@h/db?sslmode=disable&table=coco").unwrap();
        assert_eq!(pg.name, "coco");
        let pg = NamedSpec::parse("c2=postgres://u@h/db?table=coco").unwrap();
        assert_eq!(pg.name, "c2");
    }
}
