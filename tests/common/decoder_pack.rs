//! The reference's packs for its other decoders (`opt-tiny`, `opt-postln-tiny`, `xglm-tiny`):
//! 10-30 MB each, too large to copy into the repository, so they are read from `../shared/fixtures`
//! (or `$SMALLCAP_SHARED/fixtures`). A test skips without them, except under CI, where a missing
//! pack fails it.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

use super::Case;

/// A decoder pack: its folder, cases and expected tensors.
pub struct DecoderPack {
    pub name: String,
    pub dir: PathBuf,
    pub cases: Vec<Case>,
    pub tensors: HashMap<String, Tensor>,
}

/// Where `../shared/fixtures` is.
fn shared_fixtures() -> PathBuf {
    std::env::var_os("SMALLCAP_SHARED")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
            PathBuf::from,
        )
        .join("fixtures")
}

/// The pack `name`, or `None` (after saying so) when it is not there outside CI.
pub fn decoder_pack(name: &str) -> Option<DecoderPack> {
    let dir = shared_fixtures().join(name);
    if !dir.join("cases.json").is_file() {
        let msg = format!(
            "the decoder pack {} is not there (it is read from ../shared/fixtures, or $SMALLCAP_SHARED/fixtures)",
            dir.display()
        );
        assert!(std::env::var_os("CI").is_none(), "under CI: {msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Cases {
        cases: Vec<Case>,
    }
    let text = std::fs::read_to_string(dir.join("cases.json")).unwrap();
    let cases = serde_json::from_str::<Cases>(&text).unwrap().cases;
    let tensors =
        candle_core::safetensors::load(dir.join("expected_tensors.safetensors"), &Device::Cpu)
            .unwrap();
    Some(DecoderPack {
        name: name.to_string(),
        dir,
        cases,
        tensors,
    })
}

impl DecoderPack {
    /// A file of the pack.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The `[3, 224, 224]` pixel values of a case's image (the GPT-2 pack's
    /// CLIPFeatureExtractor output: the packs share their images).
    pub fn pixel_values(&self, case: &Case, gpt2_tensors: &HashMap<String, Tensor>) -> Tensor {
        let file = case.image.rsplit('/').next().unwrap();
        gpt2_tensors[&format!("{file}.pixel_values")].clone()
    }
}
