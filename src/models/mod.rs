//! The networks: the CLIP vision encoder, GPT-2 with SmallCap cross-attention, and the
//! SmallCap model that joins them; the OpenAI CLIP models used as retrieval encoders; and the
//! training-only pieces they share (dropout, the frozen-weight matmul, fused operations with
//! one-pass backward passes, and the vectorised `exp` and `tanh` they use); and the linear layers
//! packed for decoding.

pub mod clip_openai;
pub mod clip_resnet;
pub mod clip_transformer;
pub mod clip_vision;
pub mod clip_weights;
pub mod dropout;
pub mod frozen_matmul;
pub mod fused;
pub mod gpt2;
pub mod kv_cache;
pub mod packed_linear;
pub mod smallcap;
pub mod vector_math;

pub use clip_vision::ClipVision;
pub use dropout::Dropout;
pub use gpt2::{Gpt2, Sequence};
pub use smallcap::SmallCap;
