//! smallcap: SmallCap image captioning (Ramos et al., CVPR 2023) in Rust, faithful to the
//! reference implementation token for token.
//!
//! Start at [`Pipeline`]: it loads a checkpoint, its tokenizer, a retrieval encoder and named
//! datastores once, and captions images with live retrieval, given captions or none.
//!
//! The pieces, in the order an image flows through them:
//! - [`pipeline`]: image → retrieval → prompt → caption, as every front end runs it;
//! - [`retrieval`]: datastore specs, caption stores, CLIP retrieval encoders, the [`Retriever`];
//! - [`config`] and [`checkpoint`]: a checkpoint folder's `config.json` and tensors;
//! - [`models`]: the networks (CLIP vision encoder, GPT-2 with SmallCap's cross-attention, the
//!   OpenAI CLIP retrieval encoders), over the crate's CPU kernels (`src/kernels/`; their weight
//!   formats are [`WeightType`]);
//! - [`prompt`] and [`tokenizer`]: the retrieval prompt and the decoders' tokenizers (GPT-2 and
//!   OPT BPE, XGLM SentencePiece);
//! - [`generation`]: beam search and greedy decoding as transformers 4.21.1;
//! - [`captioner`]: the model and tokenizer (load once, caption many prepared images);
//! - [`hub`]: checkpoints and tokenizers from folders or the Hugging Face hub; [`device`]: where
//!   the networks run;
//! - [`train`]: features, the training loop, `pytorch_model.bin` checkpoints, with the seeded
//!   [`Rng`];
//! - [`server`]: the HTTP API and web page of `smallcap serve`, with dynamic batching.

#![deny(missing_docs)]

pub mod allocator;
pub mod captioner;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod error;
pub mod generation;
pub mod hub;
pub(crate) mod kernels;
pub mod models;
pub(crate) mod pickle_check;
pub mod pipeline;
pub mod precision;
pub mod prompt;
pub mod pytorch_writer;
pub mod retrieval;
pub mod retrieved;
pub(crate) mod rng;
pub mod server;
pub mod tokenizer;
pub mod train;

pub use config::SmallCapConfig;
pub use error::{Error, Result};
pub use generation::GenerationConfig;
pub use kernels::packed_linear::WeightType;
pub use models::SmallCap;
pub use pipeline::{ImageInput, Pipeline, PipelineCaption, PipelineOptions, PromptSource};
pub use precision::EncoderPrecision;
pub use retrieval::{DatastoreSpec, Retrieved, Retriever};
pub use rng::Rng;
pub use tokenizer::Tokenizer;
