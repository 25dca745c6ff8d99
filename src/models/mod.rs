//! The networks, one per file: SmallCap's CLIP vision encoder ([`clip_vision`]) and GPT-2 with
//! the reduced cross-attention ([`gpt2`]), the [`smallcap`] model that joins them, and the OpenAI
//! CLIP retrieval encoders ([`clip_openai`] over [`clip_resnet`], [`clip_transformer`] and
//! [`clip_weights`]), with CLIP's BPE ([`clip_tokenizer`], [`clip_text_clean`]). The CPU kernels they run on are in [`crate::kernels`].

pub mod clip_openai;
pub mod clip_resnet;
pub mod clip_text_clean;
pub mod clip_tokenizer;
pub mod clip_transformer;
pub mod clip_vision;
pub mod clip_weights;
pub mod gpt2;
pub mod smallcap;

pub use crate::kernels::dropout::Dropout;
pub use clip_vision::ClipVision;
pub use gpt2::{Gpt2, Sequence};
pub use smallcap::SmallCap;
