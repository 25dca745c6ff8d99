//! `--encoder-precision`: how the CLIP image towers compute their products.
//!
//! `f32` (the default) gives f32 results through f32 GEMMs (a ResNet's 3×3 convolutions by
//! Winograd's F(2×2, 3×3), [`crate::kernels::winograd`]). `bf16` rounds the operands to bf16
//! (as torch's bf16 autocast does) and sums in f32, on AMX where the CPU has it, else AVX-512
//! BF16, else plain loops: about 4× faster on RN50x64 with AMX (against the f32 GEMMs before
//! Winograd's algorithm), with embeddings that agree with f32's to about 1e-3 relative on the
//! fixture (more on random full-size weights; see BENCHMARKS.md).
//!
//! f32 can also run on the bf16 blocks with each operand split into bf16 parts
//! ([`crate::kernels::bf16_gemm`]): three parts keep the reference's 1e-4 and top-k, but on
//! this machine's AMX (about 440 GMAC/s per core, 5.6× its f32 FMA rate) their six products
//! are no faster than f32 GEMMs and hold more memory, so they are not the default. Two
//! environment variables choose them, for measurements and tests: `SMALLCAP_F32_SPLIT` (`3` or
//! `2` parts; `off` or unset: f32 GEMMs) and `SMALLCAP_BF16_KERNEL` (`amx`, `avx512`,
//! `portable`: force a kernel level for either precision).

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
    /// f32 over NCHW tensors: 3×3 stride-1 convolutions by Winograd's F(2×2, 3×3), the others
    /// as GEMMs (candle's matmul).
    F32,
    /// The bf16 blocks on NHWC activations, operands split as given.
    Blocks(Level, Split),
}

impl EncoderPrecision {
    /// The kernel this precision takes here.
    pub(crate) fn conv_kernel(self) -> ConvKernel {
        let level = Level::detect();
        match self {
            Self::Bf16 => ConvKernel::Blocks(level, Split::One),
            Self::F32 => match std::env::var("SMALLCAP_F32_SPLIT").as_deref() {
                Ok("3") => ConvKernel::Blocks(level, Split::Three),
                Ok("2") => ConvKernel::Blocks(level, Split::Two),
                _ => ConvKernel::F32,
            },
        }
    }
}
