//! Format coverage against Pillow 9.3: for each small file in `tests/data/formats/`,
//! `tests/data/expected.json` (written by `tests/data/make_formats.py` with Pillow 9.3.0) holds the
//! mode and size `Image.open` reports, the bytes of `convert("RGB")`, and the bytes of
//! `resize((15, 19), BICUBIC).convert("RGB")` in the file's own mode.

use std::path::Path;

use serde_json::Value;
use smallcap_image::{decode, decode_rgb, ImageError, PilMode};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0);
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(DATA).join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["pillow"], "9.3.0");
    v["cases"].as_array().unwrap().clone()
}

/// Files whose layout this crate deliberately does not read (see the tiff module docs).
const UNSUPPORTED: &[&str] = &["tiff_p.tif"];

fn mismatch(got: &[u8], want: &[u8]) -> String {
    let n = got.iter().zip(want).filter(|(a, b)| a != b).count();
    let max = got
        .iter()
        .zip(want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    format!(
        "{n} of {} bytes differ (max {max}); lengths {} vs {}",
        want.len(),
        got.len(),
        want.len()
    )
}

#[test]
fn decode_matches_pillow_convert_rgb_and_mode() {
    let mut checked = 0;
    for case in cases() {
        let file = case["file"].as_str().unwrap();
        let bytes = std::fs::read(Path::new(DATA).join("formats").join(file)).unwrap();
        if UNSUPPORTED.contains(&file) {
            let err = decode(&bytes, file).unwrap_err();
            assert!(
                matches!(err, ImageError::Unsupported { .. }),
                "{file}: {err}"
            );
            assert!(err.to_string().contains(file), "{err}");
            continue;
        }
        let img = decode(&bytes, file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            img.mode().name(),
            case["mode"].as_str().unwrap(),
            "{file}: mode"
        );
        assert_eq!(
            u64::from(img.width()),
            case["width"].as_u64().unwrap(),
            "{file}: width"
        );
        assert_eq!(
            u64::from(img.height()),
            case["height"].as_u64().unwrap(),
            "{file}: height"
        );
        let want = hex(case["rgb"].as_str().unwrap());
        let got = decode_rgb(&bytes, file).unwrap();
        assert!(
            got.as_raw() == &want,
            "{file}: convert(\"RGB\"): {}",
            mismatch(got.as_raw(), &want)
        );
        checked += 1;
    }
    assert!(checked >= 56, "only {checked} files checked");
}

#[test]
fn mode_aware_resize_matches_pillow() {
    let mut checked = 0;
    for case in cases() {
        let file = case["file"].as_str().unwrap();
        let Some(size) = case["resize"].as_array() else {
            // Pillow 9.3 cannot resize I;16; the crate resizes it like I (documented).
            assert!(case["resize_error"].is_string(), "{file}");
            continue;
        };
        if UNSUPPORTED.contains(&file) {
            continue;
        }
        let (w, h) = (
            size[0].as_u64().unwrap() as u32,
            size[1].as_u64().unwrap() as u32,
        );
        let bytes = std::fs::read(Path::new(DATA).join("formats").join(file)).unwrap();
        let img = decode(&bytes, file).unwrap();
        let got = img.resize_bicubic(w, h).to_rgb();
        let want = hex(case["resized_rgb"].as_str().unwrap());
        assert_eq!(got.dimensions(), (w, h));
        assert!(
            got.as_raw() == &want,
            "{file} ({}): resize: {}",
            img.mode().name(),
            mismatch(got.as_raw(), &want)
        );
        checked += 1;
    }
    assert!(checked >= 55, "only {checked} files checked");
}

#[test]
fn every_mode_is_covered() {
    let mut modes = std::collections::HashSet::new();
    for case in cases() {
        let file = case["file"].as_str().unwrap();
        if UNSUPPORTED.contains(&file) {
            continue;
        }
        let bytes = std::fs::read(Path::new(DATA).join("formats").join(file)).unwrap();
        modes.insert(decode(&bytes, file).unwrap().mode());
    }
    for m in [
        PilMode::Bilevel,
        PilMode::L,
        PilMode::La,
        PilMode::P,
        PilMode::Rgb,
        PilMode::Rgba,
        PilMode::Cmyk,
        PilMode::I,
        PilMode::I16,
    ] {
        assert!(modes.contains(&m), "no fixture in mode {}", m.name());
    }
}
