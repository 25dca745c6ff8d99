//! The SmallCap caption datastore, model-free core.
//!
//! * [`faiss`]: read (memory-mapped) and write FAISS `IndexFlatIP` and `IndexIVFFlat` files.
//! * [`ivf`]: `nprobe` search over an IVF-flat index, as FAISS computes it, and building one.
//! * [`kmeans`]: spherical k-means (the IVF coarse quantizer's training).
//! * [`store`]: our own folder format (manifest + aligned embeddings + captions), conversion to and
//!   from FAISS, atomic append.
//! * [`pgvector`] (feature `pgvector`, on by default): the datastore on a PostgreSQL + pgvector
//!   server (`push`, exact and HNSW search); `pg_local` (feature `test-support`): a throwaway local server for tests.
//! * [`search`]: exact inner-product top-k (batched GEMM, multi-threaded), identical ids to
//!   FAISS `IndexFlatIP`.
//! * [`captions`]: caption-file readers (text, JSON list/dict, COCO annotations, Karpathy).
//!
//! Unsafe code is confined to memory-mapping (`fsutil`) and the search kernels ([`search`]:
//! viewing stored bytes as floats, the GEMM call, AVX-512); every unsafe block says why it is
//! sound (`// SAFETY:`, checked by clippy's `undocumented_unsafe_blocks`).
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod captions;
pub mod error;
pub mod faiss;
mod fsutil;
pub mod ivf;
pub mod kmeans;
#[cfg(feature = "pgvector")]
#[cfg(feature = "test-support")]
pub mod pg_local;
#[cfg(feature = "pgvector")]
pub mod pgvector;
pub mod search;
pub mod store;

pub use captions::{CaptionList, CaptionRecord};
pub use error::{Error, Result};
pub use faiss::{FaissIndex, FlatIndex, IvfFlatIndex, Metric};
pub use search::{recall_at_k, top_k, Dtype, VectorSet};
pub use store::{captions_digest, AddRecord, Datastore, Manifest};

#[cfg(target_endian = "big")]
compile_error!("smallcap-datastore reads little-endian files by viewing them in place; big-endian targets are not supported");
