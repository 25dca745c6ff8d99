//! Downloading from the hub: a local server in the hub's URL layout serves the fixture files;
//! hf-hub fetches them into `HF_HOME`, and a second resolution works offline from the cache.
//! (One test function: it sets process-wide environment variables.)

mod common;

use std::sync::atomic::Ordering;

use candle_core::Device;
use common::{fixture, hub_server};
use smallcap::{hub, SmallCap, Tokenizer};

#[test]
fn model_and_tokenizer_come_from_the_hub_then_from_the_cache() {
    let server = hub_server::start(hub_server::fixture_repos());
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_ENDPOINT", &server.endpoint);
    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_HUB_OFFLINE");

    let files = hub::model_files("test-org/smallcap-tiny").unwrap();
    assert!(files.config.starts_with(home.path()), "{:?}", files.config);
    assert!(files.weights.ends_with("pytorch_model.bin"));
    let downloaded = std::fs::read(&files.weights).unwrap();
    assert_eq!(
        downloaded,
        std::fs::read(fixture("model/pytorch_model.bin")).unwrap()
    );
    let model = SmallCap::load(&files, &Device::Cpu).unwrap();
    assert_eq!(model.config.decoder.cross_attention_reduce_factor, 4);

    let tok_dir = hub::tokenizer_dir(hub::GPT2_TOKENIZER_REPO).unwrap();
    assert!(tok_dir.starts_with(home.path().join("hub/models--gpt2")));
    let tok = Tokenizer::from_dir(&tok_dir).unwrap();
    assert_eq!(
        tok.encode("This image shows ").unwrap(),
        vec![1212, 2939, 2523, 220]
    );

    // A missing repository is a clear error naming it.
    let err = hub::model_files("test-org/absent").unwrap_err().to_string();
    assert!(err.contains("test-org/absent"), "{err}");

    // Offline, from the cache only: no request reaches the server.
    let before = server.requests.load(Ordering::SeqCst);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let again = hub::model_files("test-org/smallcap-tiny").unwrap();
    assert_eq!(again.weights, files.weights);
    hub::tokenizer_dir("gpt2").unwrap();
    assert_eq!(server.requests.load(Ordering::SeqCst), before);
    let err = hub::model_files("test-org/never-downloaded")
        .unwrap_err()
        .to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
}
