//! CPU kernels under the networks of [`crate::models`]: the decoder's frozen weights packed for
//! decoding ([`packed_linear`], an AVX-512 small-batch GEMM for f32, f16 and bf16), the KV cache
//! ([`kv_cache`]), and the training operations (fused gelu/LayerNorm/attention softmax with
//! one-pass backward passes in [`fused`], the frozen-weight matmul and linear of
//! [`frozen_matmul`] (and in bf16 on the matrix units, [`bf16_linear`]), [`dropout`], the vectorised `exp`/`tanh` of [`vector_math`]), and the
//! causal attention of CLIP's text tower over captions packed end to end ([`packed_attention`]), and
//! the f32 ResNet's 3×3 convolutions by Winograd's F(2×2, 3×3) ([`winograd`]). Each checks the CPU
//! at run time and falls back to candle's operations elsewhere.

pub mod amx;
pub mod bf16_gemm;
pub mod bf16_linear;
pub mod conv_bf16;
pub mod decode_attention;
pub mod dropout;
pub mod frozen_matmul;
pub mod fused;
pub mod kv_cache;
pub mod packed_attention;
pub mod packed_linear;
pub mod vector_math;
pub mod winograd;
