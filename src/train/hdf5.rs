//! The reference's HDF5 feature files (`features/{train,val}.hdf5`, written by
//! `extract_features.py`: one float dataset `[50, 768]` per key `str(cocoid)`), read through the
//! system's libhdf5 so that `smallcap features --from-hdf5` can copy them into a
//! [`FeatureStore`](super::features::FeatureStore) folder. Built with the `hdf5` feature.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use hdf5_metno::types::{FloatSize, TypeDescriptor};

use crate::error::{Error, Result};

/// An opened and validated HDF5 feature file: every member is a 2-D float dataset, all of one shape.
pub struct Hdf5Features {
    path: PathBuf,
    file: hdf5_metno::File,
    ids: Vec<String>,
    shape: [usize; 2],
}

impl Hdf5Features {
    /// Opens `path` and checks every member before anything is read.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |what: String| Error::Input(format!("{}: {what}", path.display()));
        if !path.is_file() {
            return Err(bad("no such file".into()));
        }
        let file = hdf5_metno::File::open(path)
            .map_err(|e| bad(format!("not a readable HDF5 file ({e})")))?;
        let ids = file
            .member_names()
            .map_err(|e| bad(format!("cannot list its members ({e})")))?;
        if ids.is_empty() {
            return Err(bad("holds no features (the file has no datasets)".into()));
        }
        let mut shape: Option<[usize; 2]> = None;
        for id in &ids {
            let ds = file
                .dataset(id)
                .map_err(|_| bad(format!("member {id} is not a dataset")))?;
            let dtype = ds
                .dtype()
                .and_then(|t| t.to_descriptor())
                .map_err(|e| bad(format!("dataset {id}: unreadable element type ({e})")))?;
            if !matches!(
                dtype,
                TypeDescriptor::Float(FloatSize::U4) | TypeDescriptor::Float(FloatSize::U8)
            ) {
                return Err(bad(format!(
                    "dataset {id} holds {dtype}, not 32- or 64-bit floats"
                )));
            }
            let s: [usize; 2] = ds.shape().try_into().map_err(|_| {
                bad(format!(
                    "dataset {id} has shape {:?}; features are [tokens, hidden]",
                    ds.shape()
                ))
            })?;
            match shape {
                None => shape = Some(s),
                Some(first) if first != s => {
                    return Err(bad(format!(
                        "dataset {id} has shape {s:?} but dataset {} has {first:?}",
                        ids[0]
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            ids,
            shape: shape.expect("at least one dataset was checked"),
        })
    }

    /// The image ids (dataset names), in the file's order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// `[tokens, hidden]` of every dataset.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// The features of one image as f32 `[tokens, hidden]` (64-bit floats are rounded to f32).
    pub fn read(&self, id: &str, device: &Device) -> Result<Tensor> {
        let values: Vec<f32> = self
            .file
            .dataset(id)
            .and_then(|ds| ds.read_raw())
            .map_err(|e| {
                Error::Input(format!(
                    "{}: cannot read dataset {id} ({e})",
                    self.path.display()
                ))
            })?;
        let [tokens, hidden] = self.shape;
        Ok(Tensor::from_vec(values, (tokens, hidden), device)?)
    }
}
