//! How the process's allocator treats large freed buffers.
//!
//! A training step allocates and frees buffers of several megabytes by the hundred: candle gives
//! every intermediate gradient a fresh zeroed tensor. By default glibc hands buffers of this size
//! back to the kernel when they are freed (`munmap`, or trimming the heap), so the next step's
//! buffer of the same size starts as untouched pages, and every page costs a fault and a
//! kernel-side clear on first touch (`clear_page_erms` alone was 5.5% of a bf16 training step's
//! samples; BENCHMARKS.md, "A second machine: AMD EPYC (Zen 4), no AMX").
//! [`keep_freed_buffers`] makes the allocator keep them for reuse instead.

/// Largest buffer glibc serves from its heaps rather than its own `mmap` (glibc's own maximum
/// for this setting on 64-bit Linux: 32 MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Asks the process's allocator to keep freed buffers for reuse rather than return them to the
/// kernel: buffers up to 32 MiB come from its heaps, which are never trimmed. The process's
/// resident memory then stays at its peak instead of falling between steps. Returns whether
/// the allocator took the settings (glibc on Linux; elsewhere it does nothing and returns
/// `false`). Call it once, at the start of a long computation such as `train`.
pub fn keep_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes the allocator's tuning parameters; it is thread-safe
        // (glibc takes the arena locks) and these values are within its documented ranges.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
