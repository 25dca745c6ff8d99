//! `smallcap-util`: the small helpers that several SmallCap crates need, each written once.
//!
//! - [`fs`]: atomic file writes (temporary file in the same directory, synced, renamed over the
//!   target) and folder exchange.
//! - [`rng`]: [`rng::SplitMix64`], the seedable generator of the k-means sampling, the benchmarks
//!   and the test data.
//! - [`stats`]: [`stats::median`] of timing samples.
//!
//! No unsafe code; one dependency (rustix, for Linux's folder exchange).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod fs;
pub mod rng;
pub mod stats;
