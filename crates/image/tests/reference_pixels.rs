//! Pixel tensors against the reference pack: `CLIPFeatureExtractor` (224) for every image in
//! `smallcap-tiny/images/`, and `clip._transform(448)` for the retrieval images that have
//! expected pixel values. Expected values come only from the fixtures the Python reference wrote.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

const PACK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/smallcap-tiny"
);
const TOL: f32 = 1e-5;

fn f32_tensor(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    assert_eq!(t.shape(), shape, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Largest absolute difference, and the flat index where it occurs.
fn max_abs_diff(got: &[f32], want: &[f32]) -> (f32, usize) {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0f32, 0usize),
            |(m, mi), (i, d)| if d > m { (d, i) } else { (m, mi) },
        )
}

fn images() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(Path::new(PACK).join("images"))
        .expect("fixture images")
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn feature_extractor_matches_reference_for_every_pack_image() {
    let bytes = std::fs::read(Path::new(PACK).join("expected_tensors.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let imgs = images();
    assert!(
        imgs.len() >= 11,
        "expected the pack's 11 images, found {}",
        imgs.len()
    );
    let mut worst = 0f32;
    for path in imgs {
        let name = path.file_name().unwrap().to_str().unwrap();
        let want = f32_tensor(&st, &format!("{name}.pixel_values"), &[3, 224, 224]);
        let img = smallcap_image::load_rgb(&path).unwrap();
        let got = smallcap_image::clip_feature_extractor(&img, 224);
        let (d, i) = max_abs_diff(&got, &want);
        eprintln!("feature extractor {name:32} max |diff| = {d:e}");
        assert!(
            d <= TOL,
            "{name}: max |diff| {d} at {i} (got {}, want {})",
            got[i],
            want[i]
        );
        worst = worst.max(d);
    }
    eprintln!("feature extractor: worst max |diff| over all images = {worst:e}");
}

#[test]
fn clip_transform_matches_reference_for_retrieval_images() {
    let bytes =
        std::fs::read(Path::new(PACK).join("retrieval/expected_tensors.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = 0;
    for path in images() {
        let name = path.file_name().unwrap().to_str().unwrap();
        let key = format!("{name}.pixel_values");
        if !st.names().iter().any(|n| **n == key) {
            continue;
        }
        let want = f32_tensor(&st, &key, &[3, 448, 448]);
        let img = smallcap_image::load(&path).unwrap();
        let got = smallcap_image::clip_transform(&img, 448);
        let (d, i) = max_abs_diff(&got, &want);
        eprintln!("clip_transform {name:32} max |diff| = {d:e}");
        assert!(
            d <= TOL,
            "{name}: max |diff| {d} at {i} (got {}, want {})",
            got[i],
            want[i]
        );
        checked += 1;
    }
    assert_eq!(
        checked, 4,
        "the retrieval pack has pixel values for four images"
    );
}
