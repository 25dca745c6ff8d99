//! An OpenAI CLIP state dict with shape-checked access, shared by the CLIP towers
//! ([`super::clip_resnet`], [`super::clip_transformer`], [`super::clip_openai`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::error::{Error, Result};

/// A state dict with shape-checked access; errors name the file and the tensor.
pub struct Weights {
    path: PathBuf,
    map: HashMap<String, Tensor>,
}

impl Weights {
    /// Wraps the tensors read from `path`.
    pub fn new(path: &Path, map: HashMap<String, Tensor>) -> Self {
        Self {
            path: path.to_path_buf(),
            map,
        }
    }

    /// The file the tensors came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.map.get(name).map(|t| t.dims())
    }

    pub(crate) fn need_shape(&self, name: &str) -> Result<&[usize]> {
        self.shape(name)
            .ok_or_else(|| Error::checkpoint(&self.path, format!("missing tensor {name}")))
    }

    /// Tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.map.get(name).ok_or_else(|| {
            Error::checkpoint(
                &self.path,
                format!("missing tensor {name} (expected shape {shape:?})"),
            )
        })?;
        if t.dims() != shape {
            return Err(Error::checkpoint(
                &self.path,
                format!(
                    "tensor {name} has shape {:?}, but the model's sizes imply {shape:?}",
                    t.dims()
                ),
            ));
        }
        Ok(t.clone())
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}
