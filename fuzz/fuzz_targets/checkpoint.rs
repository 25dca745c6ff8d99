//! Fuzz target `checkpoint`: see `smallcap_fuzz::checkpoint` (fuzz/src/lib.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smallcap_fuzz::checkpoint(data);
});
