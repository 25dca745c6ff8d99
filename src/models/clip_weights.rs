//! An OpenAI CLIP state dict with shape-checked access, shared by the CLIP towers
//! ([`super::clip_resnet`], [`super::clip_transformer`], [`super::clip_openai`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::checkpoint::PytorchArchive;
use crate::error::{Error, Result};

/// A state dict with shape-checked access; errors name the file and the tensor.
pub struct Weights {
    path: PathBuf,
    source: Source,
}

enum Source {
    /// Tensors already read.
    Tensors(HashMap<String, Tensor>),
    /// A PyTorch archive whose tensors are read when asked for, so that a model whose layers
    /// repack their weights (the bf16 kernels) never holds the whole f32 state dict.
    Archive(PytorchArchive, Device),
}

impl Weights {
    /// Wraps the tensors read from `path`.
    pub fn new(path: &Path, map: HashMap<String, Tensor>) -> Self {
        Self {
            path: path.to_path_buf(),
            source: Source::Tensors(map),
        }
    }

    /// The weights in the file at `path` (see [`crate::checkpoint::read_state_dict`] for the
    /// formats), on `device`. A PyTorch archive's tensors are read as they are asked for.
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "safetensors") {
            let map = crate::checkpoint::read_state_dict(path, device)?;
            return Ok(Self::new(path, map));
        }
        let archive = PytorchArchive::open(path)?;
        if archive.names().next().is_none() {
            return Err(Error::checkpoint(path, "the file holds no tensors"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            source: Source::Archive(archive, device.clone()),
        })
    }

    /// The file the tensors came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        match &self.source {
            Source::Tensors(map) => map.get(name).map(|t| t.dims()),
            Source::Archive(archive, _) => archive.dims(name),
        }
    }

    pub(crate) fn need_shape(&self, name: &str) -> Result<&[usize]> {
        self.shape(name)
            .ok_or_else(|| Error::checkpoint(&self.path, format!("missing tensor {name}")))
    }

    /// Checks that tensor `name` is present with `shape`.
    fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        let dims = self.shape(name).ok_or_else(|| {
            Error::checkpoint(
                &self.path,
                format!("missing tensor {name} (expected shape {shape:?})"),
            )
        })?;
        if dims != shape {
            return Err(Error::checkpoint(
                &self.path,
                format!("tensor {name} has shape {dims:?}, but the model's sizes imply {shape:?}"),
            ));
        }
        Ok(())
    }

    /// Tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.check(name, shape)?;
        match &self.source {
            Source::Tensors(map) => Ok(map[name].clone()),
            Source::Archive(archive, device) => archive.tensor(name, device),
        }
    }

    /// The values of tensor `name` (which must have `shape`) as f32 in row-major order:
    /// borrowed from a mapped archive where it stores them so, copied otherwise.
    pub(crate) fn values(&self, name: &str, shape: &[usize]) -> Result<Cow<'_, [f32]>> {
        self.check(name, shape)?;
        match &self.source {
            Source::Tensors(map) => Ok(Cow::Owned(map[name].flatten_all()?.to_vec1::<f32>()?)),
            Source::Archive(archive, _) => Ok(archive.f32_values(name)?.0),
        }
    }

    pub(crate) fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.source {
            Source::Tensors(map) => Box::new(map.keys().map(String::as_str)),
            Source::Archive(archive, _) => Box::new(archive.names()),
        }
    }
}
