//! The image-feature store training reads instead of running the encoder (the reference's
//! `features/{train,val}.hdf5`): a folder of `*.safetensors` files, each holding one tensor per
//! image, named by its id (`str(cocoid)`), of the vision tower's `last_hidden_state`
//! `[tokens, hidden]` in f32 or f16. Any number of files; the writer adds one file per chunk of
//! images, each written atomically, so an interrupted extraction resumes where it stopped.
//!
//! The reference's HDF5 files are imported by `smallcap features --from-hdf5` (built with the
//! `hdf5` feature; see `src/train/hdf5.rs`). Without it, one line of Python converts them:
//! `python -c "import h5py,sys; from safetensors.numpy import save_file; f=h5py.File(sys.argv[1]); save_file({k: f[k][()] for k in f.keys()}, sys.argv[2])" train.hdf5 features/train.safetensors`

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// A folder of encoder states per image id (what `smallcap features` writes and training reads).
pub struct FeatureStore {
    dir: PathBuf,
    files: Option<MmapedSafetensors>,
    /// Image id → shape.
    shapes: HashMap<String, Vec<usize>>,
}

/// The `*.safetensors` files of a folder, sorted by name.
fn feature_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl FeatureStore {
    /// Opens a feature folder (an empty or new folder holds no features).
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "{}: the features folder does not exist",
                dir.display()
            )));
        }
        let files = feature_files(dir)?;
        let mut shapes = HashMap::new();
        let st = if files.is_empty() {
            None
        } else {
            // SAFETY: the maps are read-only. Memory-mapping is sound as long as the files are
            // not truncated or rewritten while mapped: our writer (`write_chunk`) only ever
            // creates a new file under a `.partial` name and renames it into place, it never
            // modifies an existing one, and as every reader of memory-mapped files we rely on
            // no other process doing so. safetensors checks each header against the file length,
            // so every tensor view lies inside its map.
            let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
                Error::Input(format!(
                    "{}: a features file is not valid safetensors: {e}",
                    dir.display()
                ))
            })?;
            for (name, view) in st.tensors() {
                if !matches!(
                    view.dtype(),
                    safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
                ) {
                    return Err(Error::Input(format!(
                        "{}: features of image {name} are {:?}, not f32 or f16",
                        dir.display(),
                        view.dtype()
                    )));
                }
                shapes.insert(name, view.shape().to_vec());
            }
            Some(st)
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            files: st,
            shapes,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of images stored.
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    /// Whether no image is stored.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }

    /// Whether image `id` is stored.
    pub fn contains(&self, id: &str) -> bool {
        self.shapes.contains_key(id)
    }

    /// Checks that every image in `ids` has features of shape `[tokens, hidden]`.
    pub fn check<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
        tokens: usize,
        hidden: usize,
    ) -> Result<()> {
        for id in ids {
            match self.shapes.get(id) {
                None => {
                    return Err(Error::Input(format!(
                        "{}: no features for image {id}",
                        self.dir.display()
                    )))
                }
                Some(s) if s.as_slice() != [tokens, hidden] => {
                    return Err(Error::Input(format!(
                        "{}: features of image {id} have shape {s:?}; the model needs [{tokens}, {hidden}]",
                        self.dir.display()
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The features of one image as f32 `[tokens, hidden]`.
    pub fn get(&self, id: &str, device: &Device) -> Result<Tensor> {
        let st = self
            .files
            .as_ref()
            .filter(|_| self.contains(id))
            .ok_or_else(|| {
                Error::Input(format!(
                    "{}: no features for image {id}",
                    self.dir.display()
                ))
            })?;
        Ok(st.load(id, device)?.to_dtype(DType::F32)?)
    }

    /// The features of several images stacked: `[n, tokens, hidden]`.
    pub fn stack(&self, ids: &[&str], device: &Device) -> Result<Tensor> {
        let ts = ids
            .iter()
            .map(|id| self.get(id, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&ts, 0)?)
    }
}

/// Writes features in chunk files `features-NNNNNN.safetensors` (temp file + rename each).
pub struct FeatureWriter {
    dir: PathBuf,
    next: usize,
    f16: bool,
}

impl FeatureWriter {
    /// Appends to `dir` (created if needed) after its existing chunk files.
    pub fn new(dir: &Path, f16: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let next = feature_files(dir)?
            .iter()
            .filter_map(|p| {
                p.file_stem()?
                    .to_str()?
                    .strip_prefix("features-")?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |n| n + 1);
        Ok(Self {
            dir: dir.to_path_buf(),
            next,
            f16,
        })
    }

    /// Writes one chunk: `(image id, [tokens, hidden])` pairs.
    pub fn write_chunk(&mut self, items: &[(String, Tensor)]) -> Result<PathBuf> {
        let dtype = if self.f16 { DType::F16 } else { DType::F32 };
        let mut map = HashMap::new();
        for (id, t) in items {
            map.insert(id.clone(), t.to_dtype(dtype)?.to_device(&Device::Cpu)?);
        }
        let path = self
            .dir
            .join(format!("features-{:06}.safetensors", self.next));
        let tmp = self
            .dir
            .join(format!(".features-{:06}.safetensors.partial", self.next));
        candle_core::safetensors::save(&map, &tmp).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::Input(format!("cannot write {}: {e}", tmp.display()))
        })?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        self.next += 1;
        Ok(path)
    }
}
