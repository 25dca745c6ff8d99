//! Fuzz target `captions`: see `smallcap_fuzz::captions` (fuzz/src/lib.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smallcap_fuzz::captions(data);
});
