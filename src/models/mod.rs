//! The networks, one per file: the CLIP ViT ([`clip_vision`], SmallCap's encoder and every ViT
//! retrieval tower), the decoder with the reduced cross-attention ([`decoder`]) as GPT-2
//! ([`gpt2`]), OPT ([`opt`]) and XGLM ([`xglm`]) checkpoints hold it, the [`smallcap`] model that joins them; the CLIP retrieval encoders, OpenAI's ([`clip_openai`]: `clip_resnet` or
//! the ViT, and [`clip_text`] over `clip_transformer`) and Hugging Face's ([`clip_hf`]), whose
//! checkpoints `clip_layout` renames into each tower's names; CLIP's BPE ([`clip_tokenizer`],
//! with ftfy's clean-up in `clip_text_clean`). The CPU kernels they run on are in `src/kernels/`.

pub mod clip_hf;
pub(crate) mod clip_layout;
pub mod clip_openai;
pub(crate) mod clip_resnet;
pub mod clip_text;
pub(crate) mod clip_text_clean;
pub mod clip_tokenizer;
pub(crate) mod clip_transformer;
pub mod clip_vision;
pub(crate) mod clip_weights;
pub mod decoder;
pub mod gpt2;
pub mod linear;
pub mod opt;
pub mod smallcap;
pub mod xglm;

pub use crate::kernels::dropout::Dropout;
pub use clip_vision::ClipVision;
pub use decoder::{Decoder, Sequence};
pub use smallcap::SmallCap;
