//! smallcap: SmallCap image captioning (Ramos et al., CVPR 2023) in Rust, faithful to the
//! reference implementation token for token.
//!
//! The pieces, in the order an image flows through them:
//! - [`config`] and [`checkpoint`]: a checkpoint folder's `config.json` and tensors;
//! - [`models`]: the CLIP vision encoder and GPT-2 with SmallCap's cross-attention;
//! - [`prompt`] and [`tokenizer`]: the retrieval prompt and GPT-2 BPE;
//! - [`generation`]: beam search and greedy decoding as transformers 4.21.1;
//! - [`captioner`]: the API that ties them together (load once, caption many);
//! - [`hub`]: checkpoints and tokenizers from folders or the Hugging Face hub;
//! - [`retrieval`]: CLIP retrieval encoders and live caption retrieval from a datastore;
//! - [`train`]: features, the training loop, checkpoints ([`pytorch_writer`]) and [`rng`].
//! - [`server`]: the HTTP API and web page of `smallcap serve`, with dynamic batching;

pub mod captioner;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod error;
pub mod generation;
pub mod hub;
pub mod models;
pub mod pipeline;
pub mod prompt;
pub mod pytorch_writer;
pub mod retrieval;
pub mod retrieved;
pub mod rng;
pub mod server;
pub mod tokenizer;
pub mod train;

pub use config::SmallCapConfig;
pub use error::{Error, Result};
pub use generation::GenerationConfig;
pub use models::SmallCap;
pub use pipeline::{ImageInput, Pipeline, PipelineCaption, PipelineOptions, PromptSource};
pub use retrieval::{DatastoreSpec, Retrieved, Retriever};
pub use tokenizer::Gpt2Tokenizer;
