//! The two preprocessing pipelines of SmallCap, reproduced with the reference's exact integer and
//! `f32` operations: transformers 4.21.1 `CLIPFeatureExtractor` (generation encoder, 224 px) and
//! OpenAI `clip._transform(n)` with torchvision's `Resize`/`CenterCrop` (retrieval encoder, 448 px).

use image::RgbImage;

use crate::source::SourceImage;

// The reference's Python floats (f64) are cast to f32 (`np.array(..).astype(np.float32)`,
// `torch.as_tensor(.., dtype=torch.float32)`): decimal → f64 → f32, as written here.
/// CLIP's per-channel mean (`OPENAI_CLIP_MEAN`), as the reference's `f32` values.
pub const CLIP_MEAN: [f32; 3] = [
    0.48145466f64 as f32,
    0.4578275f64 as f32,
    0.40821073f64 as f32,
];
/// CLIP's per-channel standard deviation (`OPENAI_CLIP_STD`), as the reference's `f32` values.
pub const CLIP_STD: [f32; 3] = [
    0.26862954f64 as f32,
    0.26130258f64 as f32,
    0.27577711f64 as f32,
];

/// Shorter side to `size`, longer side to `int(size * long / short)` (Python true division, then
/// truncation); `None` when the shorter side already equals `size` (both pipelines then skip the
/// resize). Returns `(width, height)`.
fn shortest_edge_size(width: u32, height: u32, size: u32) -> Option<(u32, u32)> {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    if short == size || short == 0 {
        return None;
    }
    // size*long is an exact integer; Python's int/int true division rounds it once, like f64 here.
    let new_long = ((u64::from(size) * u64::from(long)) as f64 / f64::from(short)) as u32;
    Some(if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    })
}

/// Crops `size`×`size` at (`left`, `top`) like PIL's `Image.crop`: pixels outside the image are 0.
/// Then `x / 255` and `(x - mean) / std` in `f32`, laid out CHW.
fn crop_normalize(img: &RgbImage, left: i64, top: i64, size: u32) -> Vec<f32> {
    let n = size as usize;
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let raw = img.as_raw();
    let mut out = vec![0f32; 3 * n * n];
    // Per channel, the value of every byte, computed with the reference's f32 operation order.
    let mut table = [[0f32; 256]; 3];
    for (c, t) in table.iter_mut().enumerate() {
        for (v, slot) in t.iter_mut().enumerate() {
            *slot = (v as f32 / 255.0f32 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    for y in 0..n {
        let sy = top + y as i64;
        for x in 0..n {
            let sx = left + x as i64;
            let px = if (0..h).contains(&sy) && (0..w).contains(&sx) {
                let i = (sy as usize * w as usize + sx as usize) * 3;
                [raw[i], raw[i + 1], raw[i + 2]]
            } else {
                [0, 0, 0]
            };
            for c in 0..3 {
                out[c * n * n + y * n + x] = table[c][px[c] as usize];
            }
        }
    }
    out
}

/// transformers 4.21.1 `CLIPFeatureExtractor(size=size, crop_size=size)` on an RGB image:
/// resize the shorter side to `size` with Pillow bicubic (skipped when it already is `size`),
/// center-crop with `top = (H - size) // 2`, `left = (W - size) // 2` (floor; PIL pads with zeros
/// if the image were smaller), `float32(x) / 255.0`, `(x - mean) / std`, HWC → CHW.
/// Returns `3 * size * size` values.
pub fn clip_feature_extractor(img: &RgbImage, size: u32) -> Vec<f32> {
    let resized;
    let img = match shortest_edge_size(img.width(), img.height(), size) {
        Some((w, h)) => {
            resized = crate::resize_bicubic(img, w, h);
            &resized
        }
        None => img,
    };
    let top = (i64::from(img.height()) - i64::from(size)).div_euclid(2);
    let left = (i64::from(img.width()) - i64::from(size)).div_euclid(2);
    crop_normalize(img, left, top, size)
}

/// Python's `int(round(d / 2.0))` for an integer `d`: halves round to even.
fn round_half_even_half(d: i64) -> i64 {
    let q = d.div_euclid(2);
    if d.rem_euclid(2) == 0 || q % 2 == 0 {
        q
    } else {
        q + 1
    }
}

/// OpenAI `clip._transform(n)`: torchvision `Resize(n, BICUBIC)` on the image in its Pillow mode
/// (shorter side → `n`, longer → `int(n * long / short)`; see [`SourceImage::resize_bicubic`] for the
/// mode rules), `CenterCrop(n)` with offsets `int(round((H - n) / 2.0))` (round half to even),
/// `convert("RGB")`, `ToTensor` (`/255` in `f32`) and `Normalize(CLIP mean, std)`.
/// Returns `3 * n * n` values, CHW.
pub fn clip_transform(img: &SourceImage, n: u32) -> Vec<f32> {
    let rgb = match shortest_edge_size(img.width(), img.height(), n) {
        Some((w, h)) => img.resize_bicubic(w, h).to_rgb(),
        None => img.to_rgb(),
    };
    let (w, h, n64) = (
        i64::from(rgb.width()),
        i64::from(rgb.height()),
        i64::from(n),
    );
    // torchvision pads (fill 0) when the crop is larger than the image, by (n - w) // 2 on the
    // left/top; after the resize above that only happens for images that are empty.
    let left = if n64 > w {
        -(n64 - w).div_euclid(2)
    } else {
        round_half_even_half(w - n64)
    };
    let top = if n64 > h {
        -(n64 - h).div_euclid(2)
    } else {
        round_half_even_half(h - n64)
    };
    crop_normalize(&rgb, left, top, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_rule() {
        assert_eq!(shortest_edge_size(640, 480, 224), Some((298, 224)));
        assert_eq!(shortest_edge_size(480, 640, 224), Some((224, 298)));
        assert_eq!(shortest_edge_size(224, 500, 224), None);
        assert_eq!(shortest_edge_size(1000, 150, 224), Some((1493, 224)));
        assert_eq!(shortest_edge_size(300, 300, 224), Some((224, 224)));
    }

    #[test]
    fn python_round_of_halves() {
        // round(0.5)=0, round(1.5)=2, round(2.5)=2, round(3.5)=4, round(1.0)=1
        let got: Vec<i64> = (0..8).map(round_half_even_half).collect();
        assert_eq!(got, vec![0, 0, 1, 2, 2, 2, 3, 4]);
    }
}
