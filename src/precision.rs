//! `--encoder-precision`: how the CLIP image towers compute their products.
//!
//! `f32` (the default) gives f32 results: where the CPU has AMX the products run on its tile
//! unit with each f32 operand split into bf16 parts ([`crate::kernels::bf16_gemm`]), elsewhere as
//! plain f32 GEMMs. `bf16` rounds the operands to bf16 (as torch's bf16 autocast does) and sums
//! in f32: faster, with results that agree with f32's to about 1e-2 relative.
//!
//! Two environment variables exist for measurements and tests: `SMALLCAP_BF16_KERNEL`
//! (`amx`, `avx512`, `portable`: force a kernel level, which also routes `f32` through the
//! split products on that level) and `SMALLCAP_F32_SPLIT` (`2` or `3` parts for `f32`, `off` for
//! the plain f32 GEMMs).

use std::fmt;
use std::str::FromStr;

use crate::kernels::bf16_gemm::{Level, Split};

/// How the CLIP image towers (the retrieval encoder's ResNet) compute their products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderPrecision {
    /// f32 results (the reference's query embeddings to 1e-4, its top-k).
    #[default]
    F32,
    /// bf16 operands, f32 sums.
    Bf16,
}

impl FromStr for EncoderPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(format!(
                "unknown encoder precision {s:?} (expected f32 or bf16)"
            )),
        }
    }
}

impl fmt::Display for EncoderPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

/// How a convolution tower runs for a precision on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvKernel {
    /// f32 GEMMs over NCHW tensors (candle's matmul).
    F32,
    /// The bf16 blocks on NHWC activations, operands split as given.
    Blocks(Level, Split),
}

impl EncoderPrecision {
    /// The kernel this precision takes here.
    pub(crate) fn conv_kernel(self) -> ConvKernel {
        let forced = std::env::var_os("SMALLCAP_BF16_KERNEL").is_some();
        let level = Level::detect();
        match self {
            Self::Bf16 => ConvKernel::Blocks(level, Split::One),
            Self::F32 if level == Level::Amx || forced => {
                match std::env::var("SMALLCAP_F32_SPLIT").as_deref() {
                    Ok("off") => ConvKernel::F32,
                    Ok("2") => ConvKernel::Blocks(level, Split::Two),
                    _ => ConvKernel::Blocks(level, Split::Three),
                }
            }
            Self::F32 => ConvKernel::F32,
        }
    }
}
