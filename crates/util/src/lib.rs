//! `smallcap-util`: the small helpers that several SmallCap crates need, each written once.
//!
//! - [`fs`]: atomic file writes (temporary file in the same directory, synced, renamed over the
//!   target).
//! - [`rng`]: [`rng::SplitMix64`], the seedable generator of the k-means sampling, the benchmarks
//!   and the test data.
//! - [`stats`]: [`stats::median`] of timing samples.
//!
//! No dependencies and no unsafe code.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod fs;
pub mod rng;
pub mod stats;
