//! OPT and XGLM SmallCaps from the hub by name, as `Yova/SmallCapOPT7M` is used: without
//! `--tokenizer` the tokenizer is the decoder family's (`facebook/opt-125m`, whose
//! `tokenizer_config.json` comes with the BPE files; `facebook/xglm-564M`, whose
//! `sentencepiece.bpe.model` is fetched), and the captions are the reference's; then again
//! offline from the cache. A loopback server in the hub's URL layout serves `opt-tiny` and
//! `xglm-tiny` (from `../shared/fixtures`). One test function: it sets process-wide environment
//! variables.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Device;
use common::decoder_pack::{decoder_pack, DecoderPack};
use common::hub_server;
use smallcap::captioner::{Captioner, Retrieval};

#[test]
fn checkpoints_by_hub_id_get_their_familys_tokenizer_and_the_reference_captions() {
    let (Some(opt), Some(xglm)) = (decoder_pack("opt-tiny"), decoder_pack("xglm-tiny")) else {
        return;
    };
    let files = |pack: &DecoderPack, pairs: &[(&str, &str)]| -> HashMap<String, PathBuf> {
        pairs
            .iter()
            .map(|(name, rel)| (name.to_string(), pack.path(rel)))
            .collect()
    };
    let model = [
        ("config.json", "model/config.json"),
        ("pytorch_model.bin", "model/pytorch_model.bin"),
    ];
    let configs = [
        ("tokenizer_config.json", "tokenizer/tokenizer_config.json"),
        (
            "special_tokens_map.json",
            "tokenizer/special_tokens_map.json",
        ),
        ("config.json", "tokenizer/config.json"),
    ];
    let with =
        |a: &[(&'static str, &'static str)], b: &[(&'static str, &'static str)]| [a, b].concat();
    let repos = HashMap::from([
        (
            "test-org/smallcap-opt-tiny".to_string(),
            files(&opt, &model),
        ),
        (
            "facebook/opt-125m".to_string(),
            files(
                &opt,
                &with(
                    &[
                        ("vocab.json", "tokenizer/vocab.json"),
                        ("merges.txt", "tokenizer/merges.txt"),
                    ],
                    &configs,
                ),
            ),
        ),
        (
            "test-org/smallcap-xglm-tiny".to_string(),
            files(&xglm, &model),
        ),
        (
            "facebook/xglm-564M".to_string(),
            files(
                &xglm,
                &with(
                    &[(
                        "sentencepiece.bpe.model",
                        "tokenizer/sentencepiece.bpe.model",
                    )],
                    &configs,
                ),
            ),
        ),
    ]);
    let server = hub_server::start(repos);
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_ENDPOINT", &server.endpoint);
    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_HUB_OFFLINE");

    let check_one = |repo: &str, pack: &DecoderPack| {
        let captioner = Captioner::from_specs(repo, None, &Device::Cpu).unwrap();
        assert_eq!(captioner.tokenizer().added_bos(), Some(2), "{repo}");
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
    let check = || {
        check_one("test-org/smallcap-opt-tiny", &opt);
        check_one("test-org/smallcap-xglm-tiny", &xglm);
    };
    check();
    // Offline, from the cache only.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    check();
}
