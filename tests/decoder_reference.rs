//! SmallCap with the reference's other decoders against their packs: OPT (`src/opt.py`) in
//! `opt-tiny` (pre-LN, opt-125m's shape) and `opt-postln-tiny` (post-LN with
//! `project_in`/`project_out`, opt-350m's shape), and XGLM (`src/xglm.py`) in `xglm-tiny`
//! (sinusoidal positions, scaled embeddings, GELU, a SentencePiece tokenizer): prompt ids,
//! last-position logits, the generated ids and captions of all three decode settings, alone and
//! batched, dense and packed, and three training steps. The packs are read from
//! `../shared/fixtures` (see `common::decoder_pack`).

mod common;

use candle_core::{Device, Tensor};
use common::decoder_pack::{decoder_pack, DecoderPack};
use common::train_steps::{KeyBias, Tolerance, TrainPack};
use common::*;
use smallcap::generation::GenerationConfig;
use smallcap::{prompt, SmallCap, Tokenizer, WeightType};

/// Each pack with its decoder's `model_type` and vocabulary size.
const PACKS: [(&str, &str, usize); 3] = [
    ("opt-tiny", "this_opt", 50272),
    ("opt-postln-tiny", "this_opt", 50272),
    ("xglm-tiny", "this_xglm", 143),
];

fn packs() -> Vec<DecoderPack> {
    PACKS.iter().filter_map(|p| decoder_pack(p.0)).collect()
}

fn model(pack: &DecoderPack) -> SmallCap {
    SmallCap::load_dir(&pack.path("model"), &Device::Cpu).unwrap()
}

/// The decoder as loaded (the training path) and packed in f32 for decoding (the captioner's).
fn models(pack: &DecoderPack) -> Vec<(&'static str, SmallCap)> {
    let mut packed = model(pack);
    packed.pack_decoder(WeightType::F32).unwrap();
    vec![("dense", model(pack)), ("packed f32", packed)]
}

fn states(pack: &DecoderPack, m: &SmallCap) -> Vec<Tensor> {
    let px = expected_tensors();
    pack.cases
        .iter()
        .map(|c| {
            m.encode(&pack.pixel_values(c, &px).unsqueeze(0).unwrap())
                .unwrap()
                .squeeze(0)
                .unwrap()
        })
        .collect()
}

fn last_logits(m: &SmallCap, states: &Tensor, prompt_ids: &[u32]) -> Tensor {
    let mut seq = m.decoder.start(states).unwrap();
    m.decoder
        .forward(prompt_ids, prompt_ids.len(), &mut [&mut seq])
        .unwrap()
        .squeeze(0)
        .unwrap()
}

#[test]
fn the_decoder_is_chosen_by_model_type() {
    for pack in packs() {
        let (_, model_type, vocab) = PACKS.iter().find(|p| p.0 == pack.name).unwrap();
        let m = model(&pack);
        assert_eq!(
            m.decoder.config().model_type(),
            *model_type,
            "{}",
            pack.name
        );
        assert_eq!(m.decoder.config().vocab_size, *vocab, "{}", pack.name);
        let tok = Tokenizer::from_dir(&pack.path("tokenizer")).unwrap();
        tok.check_for(m.decoder.config()).unwrap();
    }
}

#[test]
fn prompt_ids_equal_the_reference() {
    for pack in packs() {
        let tok = Tokenizer::from_dir(&pack.path("tokenizer")).unwrap();
        assert_eq!(
            tok.added_bos(),
            Some(2),
            "{}: OPT's and XGLM's tokenizers put </s> first",
            pack.name
        );
        for case in &pack.cases {
            let caps = case.retrieved_captions.as_deref();
            let text = prompt::prompt_text(caps.filter(|_| case.k > 0), case.k);
            assert_eq!(
                tok.encode(&text).unwrap(),
                case.prompt_ids,
                "{} {}",
                pack.name,
                case.id
            );
        }
    }
}

#[test]
fn logits_equal_the_reference() {
    for pack in packs() {
        for (label, m) in models(&pack) {
            for (case, s) in pack.cases.iter().zip(states(&pack, &m)) {
                let logits = last_logits(&m, &s, &case.prompt_ids);
                let want = &pack.tensors[&format!("{}.logits_last", case.id)];
                let e = rel_err(&logits, want);
                assert!(
                    e < 1e-4,
                    "{} {} ({label}): logits_last relative error {e}",
                    pack.name,
                    case.id
                );
            }
        }
    }
}

fn settings_of(m: &SmallCap) -> Vec<(&'static str, GenerationConfig)> {
    settings()
        .into_iter()
        .map(|(name, cfg)| {
            (
                name,
                GenerationConfig {
                    eos_token_id: m.config.eos_token_id,
                    pad_token_id: m.config.pad_token_id,
                    ..cfg
                },
            )
        })
        .collect()
}

#[test]
fn generated_ids_and_captions_equal_the_reference() {
    for pack in packs() {
        let tok = Tokenizer::from_dir(&pack.path("tokenizer")).unwrap();
        for (label, m) in models(&pack) {
            let label = format!("{} ({label})", pack.name);
            let states = states(&pack, &m);
            assert_cases_decode(
                &label,
                &pack.cases,
                &states,
                &m.decoder,
                &tok,
                &settings_of(&m),
            );
        }
    }
}

#[test]
fn half_precision_weights_stay_close_to_the_reference_logits() {
    // As for GPT-2 (tests/model_reference.rs): rounding to f16 changes a weight by at most
    // u = 2^-11 of its value, to bf16 by u = 2^-8; two blocks, the projections and the head each
    // add about u; the bound allows 4u. Int8 per column: about u = 2^-7 (see model_reference).
    let u = |bits: i32| 2f32.powi(-bits);
    for pack in packs() {
        for (ty, bound) in [
            (WeightType::F16, 4.0 * u(11)),
            (WeightType::Bf16, 4.0 * u(8)),
            (WeightType::Int8, 4.0 * u(7)),
        ] {
            let mut m = model(&pack);
            m.pack_decoder(ty).unwrap();
            let mut worst = 0f32;
            for (case, s) in pack.cases.iter().zip(states(&pack, &m)) {
                let logits = last_logits(&m, &s, &case.prompt_ids);
                worst = worst.max(rel_err(
                    &logits,
                    &pack.tensors[&format!("{}.logits_last", case.id)],
                ));
            }
            eprintln!(
                "{} {}: worst relative error {worst:.2e}",
                pack.name,
                ty.as_str()
            );
            assert!(worst < bound, "{} {}: {worst}", pack.name, ty.as_str());
            assert!(worst > 1e-6, "{} {}: not rounded", pack.name, ty.as_str());
        }
    }
}

fn train_model(pack: &DecoderPack) -> smallcap::train::TrainModel {
    let dir = pack.path("model");
    let config = smallcap::SmallCapConfig::from_file(&dir.join("config.json")).unwrap();
    let sd = smallcap::checkpoint::StateDict::load_dir(&dir, &config, &Device::Cpu).unwrap();
    smallcap::train::TrainModel::new(
        config,
        sd.tensors,
        smallcap::train::Trainable::CrossAttention,
        false,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn training_samples_are_laid_out_as_the_reference_train_dataset() {
    for pack in packs() {
        let tok = Tokenizer::from_dir(&pack.path("tokenizer")).unwrap();
        let m = model(&pack);
        TrainPack::new(&pack.path("train"), Device::Cpu).check_layout(
            &tok,
            m.config.eos_token_id,
            m.config.pad_token_id,
        );
    }
}

#[test]
fn three_training_steps_match_the_reference() {
    for pack in packs() {
        let m = train_model(&pack);
        // train.py's rule for OPT and XGLM: every parameter whose name holds encoder_attn, its
        // layer norm included.
        let names: Vec<&str> = m.params.iter().map(|(n, _)| n.as_str()).collect();
        let want = TrainPack::new(&pack.path("train"), Device::Cpu).expected();
        assert_eq!(names, want.trainable, "{}", pack.name);
        let steps = TrainPack::new(&pack.path("train"), Device::Cpu);
        steps.check_three_steps(
            &m,
            None,
            KeyBias::Whole("encoder_attn.k_proj.bias"),
            &Tolerance::F32,
        );
        steps.check_three_steps(
            &train_model(&pack),
            Some(2),
            KeyBias::Whole("encoder_attn.k_proj.bias"),
            &Tolerance::F32,
        );
    }
}

#[test]
fn xglm_sinusoidal_positions_equal_the_reference_buffer() {
    // The pack's checkpoint holds the table the reference computed
    // (`XGLMSinusoidalPositionalEmbedding`): the one computed for checkpoints without it must
    // equal it.
    let Some(pack) = decoder_pack("xglm-tiny") else {
        return;
    };
    let dir = pack.path("model");
    let config = smallcap::SmallCapConfig::from_file(&dir.join("config.json")).unwrap();
    let sd = smallcap::checkpoint::StateDict::load_dir(&dir, &config, &Device::Cpu).unwrap();
    let stored = &sd.tensors[smallcap::checkpoint::XGLM_POSITIONS];
    let (rows, dim) = stored.dims2().unwrap();
    let computed =
        smallcap::models::xglm::sinusoidal_positions(rows, dim, 1, &Device::Cpu).unwrap();
    let worst = max_diff(stored, &computed);
    assert!(worst < 1e-5, "largest difference {worst}");
    // Row 1 (padding_idx) is zero; row 0 is sin 0 = 0, then cos 0 = 1; row 2 (the first token)
    // starts with sin 2 and ends with cos(2 · 10000^-1).
    let row = |r: usize| stored.get(r).unwrap().to_vec1::<f32>().unwrap();
    assert!(row(1).iter().all(|&x| x == 0.0));
    assert_eq!(row(0)[..dim / 2], vec![0.0; dim / 2][..]);
    assert_eq!(row(0)[dim / 2..], vec![1.0; dim / 2][..]);
    assert!((row(2)[0] - 2f32.sin()).abs() < 1e-6);
    assert!((row(2)[dim - 1] - (2e-4f32).cos()).abs() < 1e-6);
}
