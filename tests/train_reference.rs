//! Training against the reference (fixture `smallcap-tiny/train`, made by
//! `make_train_pack.py`): the TrainDataset layout of the fixture's batch, and three steps of
//! cross-attention training (dropout 0, no shuffling, the fixture's batch): the loss of each step
//! within 1e-5 relative, the gradient norm, the clipped gradients of step 1 and the parameters
//! after step 3 within 1e-4 relative.

mod common;

use candle_core::Device;
use common::fixture;
use common::train_steps::{KeyBias, Tolerance, TrainPack};
use smallcap::checkpoint::StateDict;
use smallcap::models::Dropout;
use smallcap::train::{TrainModel, TrainPrecision, Trainable};
use smallcap::{SmallCapConfig, Tokenizer};

/// The CPU, or the first GPU when `SMALLCAP_TEST_CUDA` is set (scripts/gpu-train-check.sh).
fn device() -> Device {
    if std::env::var_os("SMALLCAP_TEST_CUDA").is_some() {
        Device::new_cuda(0).expect("SMALLCAP_TEST_CUDA is set but no CUDA device is usable")
    } else {
        Device::Cpu
    }
}

fn pack() -> TrainPack {
    TrainPack::new(&fixture("train"), device())
}

fn model() -> TrainModel {
    let dir = fixture("model");
    let config = SmallCapConfig::from_file(&dir.join("config.json")).unwrap();
    let sd = StateDict::load_dir(&dir, &config, &device()).unwrap();
    TrainModel::new(
        config,
        sd.tensors,
        Trainable::CrossAttention,
        false,
        &device(),
    )
    .unwrap()
}

#[test]
fn samples_are_laid_out_as_the_reference_train_dataset() {
    let tok = Tokenizer::from_dir(&fixture("tokenizer")).unwrap();
    pack().check_layout(&tok, 13, 0);
}

const KEY_BIAS: KeyBias = KeyBias::FirstHalfOf("crossattention.c_attn.bias");

#[test]
fn three_steps_match_the_reference() {
    pack().check_three_steps(&model(), None, KEY_BIAS, &Tolerance::F32);
}

/// The same steps with gradient accumulation over micro-batches of one and of two samples:
/// the same losses, gradients and parameters as the reference's whole batch.
#[test]
fn three_steps_in_micro_batches_match_the_reference() {
    pack().check_three_steps(&model(), Some(1), KEY_BIAS, &Tolerance::F32);
    pack().check_three_steps(&model(), Some(2), KEY_BIAS, &Tolerance::F32);
}

/// `--precision bf16`: the decoder's linear products in bf16 (operands rounded, f32 sums), the
/// same three steps within bf16's tolerance (see [`Tolerance::BF16`]), whole and in
/// micro-batches.
#[test]
fn three_steps_with_bf16_products_match_the_reference_within_bf16_rounding() {
    if device().is_cuda() {
        return; // bf16 products run on the CPU's kernels.
    }
    let bf16 = || {
        let mut m = model();
        m.use_precision(TrainPrecision::Bf16).unwrap();
        m
    };
    // The products did change: the loss is not f32's to the bit.
    let batch = pack().batch();
    let loss = |m: &TrainModel| {
        m.loss(&batch, &mut Dropout::off())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_ne!(
        loss(&model()),
        loss(&bf16()),
        "bf16 products changed nothing"
    );
    pack().check_three_steps(&bf16(), None, KEY_BIAS, &Tolerance::BF16);
    pack().check_three_steps(&bf16(), Some(2), KEY_BIAS, &Tolerance::BF16);
}

#[test]
fn frozen_weights_get_no_gradient_and_only_cross_attention_trains() {
    let m = model();
    for (name, _) in &m.params {
        assert!(
            name.starts_with("decoder.") && name.contains("crossattention"),
            "{name}"
        );
    }
    // 2 layers × (q_attn, c_attn, c_proj) × (weight, bias); ln_cross_attn stays frozen.
    assert_eq!(m.params.len(), 12);
    let batch = pack().batch();
    let grads = m
        .loss(&batch, &mut Dropout::off())
        .unwrap()
        .backward()
        .unwrap();
    for name in [
        "decoder.lm_head.weight",
        "decoder.transformer.h.0.mlp.c_fc.weight",
        "decoder.transformer.h.1.attn.c_attn.weight",
        "decoder.transformer.wte.weight",
    ] {
        assert!(
            grads.get(&m.tensors[name]).is_none(),
            "{name} got a gradient"
        );
    }
}
