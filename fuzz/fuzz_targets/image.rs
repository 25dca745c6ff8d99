//! Fuzz target `image`: see `smallcap_fuzz::image` (fuzz/src/lib.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smallcap_fuzz::image(data);
});
