//! Fuzz target `model_load`: see `smallcap_fuzz::model_load` (fuzz/src/lib.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smallcap_fuzz::model_load(data);
});
