//! Intel AMX (Advanced Matrix Extensions) for bf16 products: detection, the Linux permission
//! request, and the 32 × 32 block kernel of [`super::bf16_gemm`].
//!
//! Stable Rust has no AMX intrinsics, so the instructions are written with `asm!`
//! (`ldtilecfg`, `tilezero`, `tileloadd`, `tdpbf16ps`, `tilestored`, `tilerelease`). The tile
//! registers are not visible to the compiler: each call of [`block_2x2`] configures them, uses
//! them and releases them within the call, on one thread, so no state is shared between calls.
//!
//! A block uses all eight tiles: `tmm0..tmm3` accumulate the four 16 × 16 f32 quarters of C,
//! `tmm4`/`tmm5` hold the two A tiles (16 rows × 32 bf16), `tmm6`/`tmm7` the two B tiles
//! (16 pairs of K × 16 columns, the pair-interleaved "VNNI" layout).

use std::sync::OnceLock;

use super::bf16_gemm::Step;

/// Whether this CPU has AMX-BF16 and the kernel let this process use the tile registers.
/// On Linux the tile state must be requested once per process
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); a refusal means no AMX.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_amx_bf16() && request_tile_permission())
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_bf16() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // Leaf 0 gives the highest leaf, so leaf 7 is only read where it exists.
    if __cpuid_count(0, 0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    edx & AMX_BF16 != 0 && edx & AMX_TILE != 0 && std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx_bf16() -> bool {
    false
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes which extended states this
    // process may use; it reads and writes no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_permission() -> bool {
    false
}

/// The 64-byte tile configuration (palette 1): tiles 0–3 are 16 rows of 64 bytes (16 f32),
/// tiles 4–7 16 rows of 64 bytes (32 bf16).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn blocks() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            // colsb (u16 little-endian) at 16 + 2t, rows at 48 + t.
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        Self(c)
    }
}

#[cfg(target_arch = "x86_64")]
macro_rules! tile_load {
    ($t:literal, $ptr:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, readonly, preserves_flags)
        )
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! tile_store {
    ($t:literal, $ptr:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tilestored [{p} + {s}*1], tmm", $t),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, preserves_flags)
        )
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! tile_dp {
    ($c:literal, $a:literal, $b:literal) => {
        std::arch::asm!(
            concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// `c[32 × 32] = Σ_steps A_s · B_s` on the tile unit: for each step, rows 0–15 of A at
/// `a0 + r·lda` and rows 16–31 at `a1 + r·lda` (32 bf16 each), B as two packed 16 × 16-pair
/// tiles at `b` and `b + 512` elements. `c` is row-major with 32 f32 per row.
///
/// # Safety
/// [`available`] must have returned true, and every step's pointers must be readable for the
/// extents above (16 rows at stride `lda` bytes of 64 bytes each, and 1024 bf16 at `b`).
#[cfg(target_arch = "x86_64")]
pub unsafe fn block_2x2(steps: &[Step], lda: usize, c: &mut [f32; 1024]) {
    let cfg = TileConfig::blocks();
    let b_stride = 64usize;
    let c_stride = 32 * 4usize;
    let cp = c.as_mut_ptr();
    // SAFETY: the caller guarantees AMX is usable and every pointer covers its tile's rows;
    // `cfg` is a valid palette-1 configuration; the stores write 32 rows × 128 bytes of `c`,
    // which is exactly its size; the tile state is released before returning.
    unsafe {
        std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly, preserves_flags));
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nomem, nostack, preserves_flags)
        );
        for s in steps {
            tile_load!("4", s.a0, lda);
            tile_load!("5", s.a1, lda);
            tile_load!("6", s.b, b_stride);
            tile_load!("7", s.b.add(512), b_stride);
            tile_dp!("0", "4", "6");
            tile_dp!("1", "4", "7");
            tile_dp!("2", "5", "6");
            tile_dp!("3", "5", "7");
        }
        tile_store!("0", cp, c_stride);
        tile_store!("1", cp.add(16), c_stride);
        tile_store!("2", cp.add(16 * 32), c_stride);
        tile_store!("3", cp.add(16 * 32 + 16), c_stride);
        std::arch::asm!("tilerelease", options(nomem, nostack, preserves_flags));
    }
}
