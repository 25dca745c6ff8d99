//! `allocator::keep_freed_buffers`: freed 16 MiB buffers are reused by the next ones instead of
//! coming back from the kernel as fresh pages, counted as this thread's minor page faults (a
//! fresh 16 MiB buffer faults on each of its 4,096 pages when first written). Its own test
//! binary, since the setting is process-wide.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn freed_buffers_are_reused_without_page_faults() {
    fn thread_minor_faults() -> i64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `getrusage` writes one `rusage` through the pointer, which points at one;
        // RUSAGE_THREAD is Linux's per-thread counter.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: initialised by the successful call above.
        unsafe { usage.assume_init() }.ru_minflt
    }
    const SIZE: usize = 16 << 20;
    const PAGES: i64 = (3 * SIZE / 4096) as i64;
    // Three buffers written together, then freed together, as a step's activations are.
    let round = || {
        let before = thread_minor_faults();
        let buffers: Vec<Vec<u8>> = (0..3).map(|_| vec![1u8; SIZE]).collect();
        std::hint::black_box(&buffers);
        drop(buffers);
        thread_minor_faults() - before
    };
    // glibc's defaults: the first round maps each buffer, later ones take them from the heap,
    // which is trimmed again when they are freed, so every round faults on every page.
    round();
    round();
    let default_faults = round();
    assert!(
        default_faults >= PAGES / 2,
        "{default_faults} faults for three fresh 16 MiB buffers with glibc's defaults"
    );

    assert!(smallcap::allocator::keep_freed_buffers());
    round(); // grows the heap once
    let kept_faults = round() + round();
    assert!(
        kept_faults < 64,
        "{kept_faults} page faults for two rounds of three 16 MiB buffers kept for reuse"
    );
}
