//! Fuzz target `clip_archive`: see `smallcap_fuzz::clip_archive` (fuzz/src/lib.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smallcap_fuzz::clip_archive(data);
});
