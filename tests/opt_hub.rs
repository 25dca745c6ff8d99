//! An OPT SmallCap from the hub by name, as `Yova/SmallCapOPT7M` is used: without `--tokenizer`
//! its tokenizer is OPT's (`facebook/opt-125m`, whose `tokenizer_config.json` comes with the BPE
//! files), and the captions are the reference's; then again offline from the cache. A loopback
//! server in the hub's URL layout serves `opt-tiny` (from `../shared/fixtures`). One test
//! function: it sets process-wide environment variables.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Device;
use common::decoder_pack::decoder_pack;
use common::hub_server;
use smallcap::captioner::{Captioner, Retrieval};

#[test]
fn an_opt_checkpoint_by_hub_id_gets_opts_tokenizer_and_the_reference_captions() {
    let Some(pack) = decoder_pack("opt-tiny") else {
        return;
    };
    let files = |pairs: &[(&str, &str)]| -> HashMap<String, PathBuf> {
        pairs
            .iter()
            .map(|(name, rel)| (name.to_string(), pack.path(rel)))
            .collect()
    };
    let repos = HashMap::from([
        (
            "test-org/smallcap-opt-tiny".to_string(),
            files(&[
                ("config.json", "model/config.json"),
                ("pytorch_model.bin", "model/pytorch_model.bin"),
            ]),
        ),
        (
            "facebook/opt-125m".to_string(),
            files(&[
                ("vocab.json", "tokenizer/vocab.json"),
                ("merges.txt", "tokenizer/merges.txt"),
                ("tokenizer_config.json", "tokenizer/tokenizer_config.json"),
                (
                    "special_tokens_map.json",
                    "tokenizer/special_tokens_map.json",
                ),
                ("config.json", "tokenizer/config.json"),
            ]),
        ),
    ]);
    let server = hub_server::start(repos);
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_ENDPOINT", &server.endpoint);
    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_HUB_OFFLINE");

    let check = || {
        let captioner =
            Captioner::from_specs("test-org/smallcap-opt-tiny", None, &Device::Cpu).unwrap();
        assert_eq!(captioner.tokenizer().added_bos(), Some(2));
        let generation = captioner.default_generation();
        for case in pack.cases.iter().take(4) {
            let px = captioner.load_image(&pack.path(&case.image)).unwrap();
            let retrieval = match &case.retrieved_captions {
                Some(c) if case.k > 0 => Retrieval::Captions(c.clone()),
                _ => Retrieval::None,
            };
            let item = captioner.prepare(px, retrieval, case.k).unwrap();
            assert_eq!(item.prompt_ids, case.prompt_ids, "{}", case.id);
            let out = captioner.caption(&[item], &generation).unwrap();
            let want = &case.expected["beam3_early"];
            assert_eq!(out[0].generated_ids, want.generated_ids, "{}", case.id);
            assert_eq!(out[0].caption, want.caption, "{}", case.id);
        }
    };
    check();
    // Offline, from the cache only.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    check();
}
