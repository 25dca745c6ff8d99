//! Fuzz target `faiss_index`: see `smallcap_fuzz::faiss_index` (fuzz/src/lib.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smallcap_fuzz::faiss_index(data);
});
