//! Training SmallCap as the reference's `train.py` does: precomputed image features, samples
//! and prompts from Karpathy annotations and retrieved captions, the trainable cross-attention,
//! HF AdamW with a linear schedule and clipping, checkpoints in the hub layout, and resuming.

pub mod dataset;
pub mod features;
#[cfg(feature = "hdf5")]
pub mod hdf5;
pub mod init;
pub mod model;
pub mod optimizer;
pub mod trainer;

pub use dataset::{Annotations, Sample, TrainDataset};
pub use model::{Batch, TrainModel, TrainPrecision, Trainable};
pub use optimizer::{clip_grad_norm, linear_lr, AdamW, AdamWConfig};
