//! The model against the reference fixture pack: encoder states, last-position logits, prompt
//! ids, and the generated ids and captions of all three decode settings.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use smallcap::WeightType;
use smallcap::{prompt, SmallCap, Tokenizer};

fn model() -> SmallCap {
    SmallCap::load_dir(&fixture("model"), &Device::Cpu).unwrap()
}

/// The decoder as loaded (the training path) and packed in f32 for decoding (the captioner's).
fn models() -> Vec<(&'static str, SmallCap)> {
    let mut packed = model();
    packed.pack_decoder(WeightType::F32).unwrap();
    vec![("dense", model()), ("packed f32", packed)]
}

fn image_key(case: &Case) -> String {
    let file = case.image.rsplit('/').next().unwrap();
    format!("{file}.pixel_values")
}

#[test]
fn prompt_ids_equal_the_reference() {
    let tok = Tokenizer::from_dir(&fixture("tokenizer")).unwrap();
    for case in cases() {
        let caps = case.retrieved_captions.as_deref();
        let text = prompt::prompt_text(caps.filter(|_| case.k > 0), case.k);
        assert_eq!(tok.encode(&text).unwrap(), case.prompt_ids, "{}", case.id);
    }
}

#[test]
fn encoder_states_and_logits_equal_the_reference() {
    let t = expected_tensors();
    for ((label, m), case) in models()
        .into_iter()
        .flat_map(|m| cases().into_iter().map(move |c| (m.clone(), c)))
    {
        let px = t[&image_key(&case)].unsqueeze(0).unwrap();
        let enc = m.encode(&px).unwrap().squeeze(0).unwrap();
        let want = &t[&format!("{}.encoder_hidden", case.id)];
        let e = rel_err(&enc, want);
        assert!(e < 1e-4, "{}: encoder_hidden relative error {e}", case.id);

        let mut seq = m.decoder.start(&enc).unwrap();
        let logits = m
            .decoder
            .forward(&case.prompt_ids, case.prompt_ids.len(), &mut [&mut seq])
            .unwrap()
            .squeeze(0)
            .unwrap();
        let want = &t[&format!("{}.logits_last", case.id)];
        let e = rel_err(&logits, want);
        assert!(
            e < 1e-4,
            "{} ({label}): logits_last relative error {e}",
            case.id
        );
    }
}

#[test]
fn generated_ids_and_captions_equal_the_reference() {
    for (label, m) in models() {
        generated_ids_and_captions_equal_the_reference_with(label, &m);
    }
}

fn generated_ids_and_captions_equal_the_reference_with(label: &str, m: &SmallCap) {
    let tok = Tokenizer::from_dir(&fixture("tokenizer")).unwrap();
    let t = expected_tensors();
    let cases = cases();
    let states: Vec<Tensor> = cases
        .iter()
        .map(|c| {
            m.encode(&t[&image_key(c)].unsqueeze(0).unwrap())
                .unwrap()
                .squeeze(0)
                .unwrap()
        })
        .collect();
    assert_cases_decode(label, &cases, &states, &m.decoder, &tok, &settings());
}

#[test]
fn half_precision_weights_stay_close_to_the_reference_logits() {
    // Rounding a weight to f16 changes it by at most u = 2^-11 ≈ 4.9e-4 of its value, to bf16 by
    // u = 2^-8 ≈ 3.9e-3. The fixture's decoder has 2 blocks and a head, each adding an error of
    // about u to what it is given; the bound allows 4u. (Measured: 1.4u for f16, 2u for bf16.)
    // Int8 per column moves a weight by up to half a step, 1/254 of its column's largest weight:
    // with the fixture's random weights, a few times the typical one, about u = 2^-7 of a weight
    // (measured: 2.7u).
    let t = expected_tensors();
    let u = |bits: i32| 2f32.powi(-bits);
    for (ty, bound) in [
        (WeightType::F16, 4.0 * u(11)),
        (WeightType::Bf16, 4.0 * u(8)),
        (WeightType::Int8, 4.0 * u(7)),
    ] {
        let mut m = model();
        m.pack_decoder(ty).unwrap();
        let mut worst = 0f32;
        for case in cases() {
            let px = t[&image_key(&case)].unsqueeze(0).unwrap();
            let enc = m.encode(&px).unwrap().squeeze(0).unwrap();
            let mut seq = m.decoder.start(&enc).unwrap();
            let logits = m
                .decoder
                .forward(&case.prompt_ids, case.prompt_ids.len(), &mut [&mut seq])
                .unwrap()
                .squeeze(0)
                .unwrap();
            let e = rel_err(&logits, &t[&format!("{}.logits_last", case.id)]);
            worst = worst.max(e);
        }
        eprintln!("{}: worst logits relative error {worst:.2e}", ty.as_str());
        assert!(
            worst < bound,
            "{}: logits relative error {worst}",
            ty.as_str()
        );
        assert!(
            worst > 1e-6,
            "{}: the weights were not rounded",
            ty.as_str()
        );
    }
}
