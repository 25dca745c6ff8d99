//! OPT and XGLM SmallCaps (`opt-tiny`, `xglm-tiny` from `../shared/fixtures`, see
//! `common::decoder_pack`) through the command line and the server as a GPT-2 one: `caption` and
//! `serve` give the reference's ids and captions, `train --init` trains their `encoder_attn` and
//! the result captions, `train --decoder` builds a new one from a pretrained OPT or XGLM, live
//! retrieval prompts them (XGLM from a datastore of German, French and Chinese captions), and
//! bad inputs get clear errors.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use common::decoder_pack::{decoder_pack, DecoderPack};
use common::serve_cli::spawn_serve;
use common::{fixture, max_diff, Case};

fn smallcap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smallcap"))
        .env("HF_HUB_OFFLINE", "1")
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = smallcap(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = smallcap(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn prompt_args(case: &Case) -> Vec<String> {
    match &case.retrieved_captions {
        Some(caps) if case.k > 0 => {
            let mut a: Vec<String> = caps
                .iter()
                .flat_map(|c| ["--captions".to_string(), c.clone()])
                .collect();
            a.extend(["--k".into(), case.k.to_string()]);
            a
        }
        _ => vec!["--no-retrieval".into()],
    }
}

fn image(pack: &DecoderPack, case: &Case) -> std::path::PathBuf {
    pack.path(&case.image)
}

/// A decoder family's pack and what its checkpoints hold.
struct Family {
    /// The pack.
    pack: &'static str,
    /// The SmallCap decoder's `model_type`.
    model_type: &'static str,
    /// The pretrained decoder's `model_type` (`train --decoder`).
    pretrained_type: &'static str,
    /// The prefix of the SmallCap names that a pretrained decoder's file does not have.
    pretrained_prefix: &'static str,
    /// The token embedding the LM head is tied to.
    embed_tokens: &'static str,
}

const FAMILIES: [Family; 2] = [
    Family {
        pack: "opt-tiny",
        model_type: "this_opt",
        pretrained_type: "opt",
        // facebook/opt-* hold `decoder.layers.*`.
        pretrained_prefix: "decoder.model.",
        embed_tokens: "decoder.model.decoder.embed_tokens.weight",
    },
    Family {
        pack: "xglm-tiny",
        model_type: "this_xglm",
        pretrained_type: "xglm",
        // facebook/xglm-* hold `model.layers.*`.
        pretrained_prefix: "decoder.",
        embed_tokens: "decoder.model.embed_tokens.weight",
    },
];

/// Each family with its pack (those there).
fn families() -> Vec<(&'static Family, DecoderPack)> {
    FAMILIES
        .iter()
        .filter_map(|f| decoder_pack(f.pack).map(|p| (f, p)))
        .collect()
}

#[test]
fn caption_gives_the_reference_ids_and_captions() {
    for (_, pack) in families() {
        caption_cases(&pack);
    }
}

fn caption_cases(pack: &DecoderPack) {
    let (model, tok) = (pack.path("model"), pack.path("tokenizer"));
    for case in &pack.cases {
        for (setting, extra) in [("beam3_early", "--early-stopping"), ("greedy", "--beams=1")] {
            let img = image(pack, case);
            let mut args = vec![
                "caption",
                "--model",
                s(&model),
                "--tokenizer",
                s(&tok),
                extra,
            ];
            let prompt = prompt_args(case);
            args.extend(prompt.iter().map(String::as_str));
            args.push(s(&img));
            let line: serde_json::Value = serde_json::from_str(ok(&args).trim()).unwrap();
            let want = &case.expected[setting];
            assert_eq!(
                line["generated_ids"],
                serde_json::json!(want.generated_ids),
                "{} {} {setting}",
                pack.name,
                case.id
            );
            assert_eq!(
                line["caption"],
                want.caption.as_str(),
                "{} {} {setting}",
                pack.name,
                case.id
            );
        }
    }
}

#[test]
fn serve_gives_the_reference_captions() {
    for (_, pack) in families() {
        serve_cases(&pack);
    }
}

fn serve_cases(pack: &DecoderPack) {
    let args: Vec<std::ffi::OsString> = vec![
        "--model".into(),
        pack.path("model").into(),
        "--tokenizer".into(),
        pack.path("tokenizer").into(),
    ];
    let (_child, addr, _lines) = spawn_serve(&args);
    for case in pack.cases.iter().take(6) {
        let bytes = std::fs::read(image(pack, case)).unwrap();
        let r = common::post_case_image(&addr, case, "image.png", &bytes, "beam3_early");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let want = &case.expected["beam3_early"];
        assert_eq!(
            v["caption"],
            want.caption.as_str(),
            "{} {}",
            pack.name,
            case.id
        );
    }
}

/// Annotations, retrieved captions and features (from the pack's own encoder) for the first
/// `n` images of the GPT-2 fixture.
fn training_data(pack: &DecoderPack, dir: &Path, n: usize) -> (String, String, String) {
    let names: Vec<String> = std::fs::read_dir(fixture("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".png") || n.ends_with(".jpg"))
        .take(n)
        .collect();
    let images: Vec<serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, f)| {
            serde_json::json!({"filename": f, "cocoid": i, "split": "train", "sentences": [
                {"raw": "a cat on a mat.", "tokens": ["a", "cat", "on", "a", "mat"]},
                {"raw": "a dog.", "tokens": ["a", "dog"]}]})
        })
        .collect();
    let ann = dir.join("dataset.json");
    std::fs::write(&ann, serde_json::json!({ "images": images }).to_string()).unwrap();
    let ret: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            (
                i.to_string(),
                serde_json::json!(["a cat", "a dog", "a mat", "a bed"]),
            )
        })
        .collect();
    let retp = dir.join("retrieved.json");
    std::fs::write(&retp, serde_json::Value::Object(ret).to_string()).unwrap();
    let feats = dir.join("features");
    ok(&[
        "features",
        "--images",
        s(&fixture("images")),
        "--annotations",
        s(&ann),
        "--encoder",
        s(&pack.path("model")),
        "--out",
        s(&feats),
    ]);
    let p = |x: &Path| x.to_string_lossy().to_string();
    (p(&ann), p(&retp), p(&feats))
}

/// `smallcap train` of one epoch over `training_data` (3 images, batch 3: 2 steps) with the
/// pack's tokenizer and `model_args` choosing the model; returns the last checkpoint.
fn train(pack: &DecoderPack, dir: &Path, model_args: &[&str]) -> std::path::PathBuf {
    let (ann, ret, feats) = training_data(pack, dir, 3);
    let out = dir.join("out");
    let tok = pack.path("tokenizer");
    let mut args = vec![
        "train",
        "--annotations",
        &ann,
        "--features",
        &feats,
        "--retrieved",
        &ret,
        "--out",
        s(&out),
        "--tokenizer",
        s(&tok),
        "--batch-size",
        "3",
        "--epochs",
        "1",
    ];
    args.extend(model_args);
    ok(&args);
    out.join("checkpoint-2")
}

/// `smallcap caption` of one fixture image with a trained checkpoint, without retrieval.
fn caption_without_retrieval(
    pack: &DecoderPack,
    ck: &Path,
    max_new_tokens: usize,
) -> serde_json::Value {
    let n = max_new_tokens.to_string();
    let line = ok(&[
        "caption",
        "--model",
        s(ck),
        "--tokenizer",
        s(&pack.path("tokenizer")),
        "--no-retrieval",
        "--max-new-tokens",
        &n,
        s(&fixture("images/chelsea.png")),
    ]);
    serde_json::from_str(line.trim()).unwrap()
}

/// The pack's config and checkpoint tensors, as the project loads them.
fn pack_model(pack: &DecoderPack) -> (smallcap::SmallCapConfig, HashMap<String, Tensor>) {
    let cfg = smallcap::SmallCapConfig::from_file(&pack.path("model/config.json")).unwrap();
    let sd =
        smallcap::checkpoint::StateDict::load_dir(&pack.path("model"), &cfg, &Device::Cpu).unwrap();
    (cfg, sd.tensors)
}

fn load(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn train_init_trains_encoder_attn_and_the_result_captions() {
    for (family, pack) in families() {
        train_init(family, &pack);
    }
}

fn train_init(family: &Family, pack: &DecoderPack) {
    let tmp = tempfile::tempdir().unwrap();
    let ck = train(pack, tmp.path(), &["--init", s(&pack.path("model"))]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["decoder"]["model_type"], family.model_type);
    let (cfg_parsed, init) = pack_model(pack);
    let trained = load(&ck);
    for (name, t) in &trained {
        let d = max_diff(t, &init[name]);
        assert_eq!(
            d > 0.0,
            name.contains("encoder_attn"),
            "{name} changed by {d}"
        );
    }
    // Both weight files load, and the checkpoint captions.
    smallcap::checkpoint::StateDict::load_file(
        &ck.join("pytorch_model.bin"),
        &cfg_parsed,
        &Device::Cpu,
    )
    .unwrap();
    let line = caption_without_retrieval(pack, &ck, 3);
    assert_eq!(
        line["generated_ids"].as_array().map(Vec::len),
        Some(3),
        "{line}"
    );
}

/// A "pretrained" decoder folder as `facebook/opt-*` or `facebook/xglm-*` holds one
/// (`decoder.*` or `model.*` names, `model_type` `opt` or `xglm`, no LM head, no XGLM position
/// table), cut from the pack's decoder; and beside it, `clip`, the pack's vision tower as a CLIP
/// checkpoint.
fn pretrained(family: &Family, pack: &DecoderPack, dir: &Path) -> std::path::PathBuf {
    let (_, tensors) = pack_model(pack);
    let part: HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| {
            !k.contains("encoder_attn")
                && *k != "decoder.lm_head.weight"
                && *k != smallcap::checkpoint::XGLM_POSITIONS
        })
        .filter_map(|(k, v)| {
            k.strip_prefix(family.pretrained_prefix)
                .map(|r| (r.to_string(), v.clone()))
        })
        .collect();
    let out = dir.join(family.pretrained_type);
    std::fs::create_dir_all(&out).unwrap();
    candle_core::safetensors::save(&part, out.join("model.safetensors")).unwrap();
    let full: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pack.path("model/config.json")).unwrap())
            .unwrap();
    let mut dec = full["decoder"].clone();
    let d = dec.as_object_mut().unwrap();
    for k in [
        "add_cross_attention",
        "cross_attention_reduce_factor",
        "is_decoder",
        "layer_norm_elementwise_affine",
    ] {
        d.remove(k);
    }
    d.insert("model_type".into(), family.pretrained_type.into());
    std::fs::write(out.join("config.json"), dec.to_string()).unwrap();
    // The CLIP side: the pack's vision tower as a CLIP checkpoint (`vision_model.*`).
    let clip = dir.join("clip");
    std::fs::create_dir_all(&clip).unwrap();
    let vision: HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("encoder.")
                .map(|r| (format!("vision_model.{r}"), v.clone()))
        })
        .collect();
    candle_core::safetensors::save(&vision, clip.join("model.safetensors")).unwrap();
    std::fs::write(clip.join("config.json"), full["encoder"].to_string()).unwrap();
    out
}

#[test]
fn train_decoder_builds_a_new_smallcap() {
    for (family, pack) in families() {
        train_decoder(family, &pack);
    }
}

fn train_decoder(family: &Family, pack: &DecoderPack) {
    let tmp = tempfile::tempdir().unwrap();
    let decoder = pretrained(family, pack, tmp.path());
    let clip = tmp.path().join("clip");
    let ck = train(
        pack,
        tmp.path(),
        &["--encoder", s(&clip), "--decoder", s(&decoder)],
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["decoder"]["model_type"], family.model_type);
    if family.model_type == "this_opt" {
        assert_eq!(cfg["decoder"]["layer_norm_elementwise_affine"], true);
    }
    // train.py's eos '.' and pad '!' in this vocabulary: the ids the reference's pack has.
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pack.path("model/config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (cfg["eos_token_id"].clone(), cfg["pad_token_id"].clone()),
        (want["eos_token_id"].clone(), want["pad_token_id"].clone()),
        "{}",
        pack.name
    );
    let t = load(&ck);
    // The LM head is the token embedding (OPT and XGLM tie them), the new layer norm starts at
    // 1, and XGLM's position table, absent from the pretrained file, is the reference's.
    assert_eq!(
        max_diff(&t["decoder.lm_head.weight"], &t[family.embed_tokens]),
        0.0
    );
    let layer0 = family
        .embed_tokens
        .replace("embed_tokens.weight", "layers.0");
    let ln = &t[&format!("{layer0}.encoder_attn_layer_norm.weight")];
    assert!(max_diff(ln, &ln.ones_like().unwrap()) < 0.01);
    if family.model_type == "this_xglm" {
        let key = smallcap::checkpoint::XGLM_POSITIONS;
        assert!(max_diff(&t[key], &pack_model(pack).1[key]) < 1e-5);
    }
    caption_without_retrieval(pack, &ck, 2);
}

/// A copy of the pack's model folder with its config changed by `edit`.
fn edited_model(pack: &DecoderPack, dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> String {
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(
        pack.path("model/pytorch_model.bin"),
        out.join("pytorch_model.bin"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pack.path("model/config.json")).unwrap())
            .unwrap();
    edit(&mut cfg);
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    out.to_string_lossy().to_string()
}

#[test]
fn bad_inputs_give_clear_errors() {
    let Some(pack) = decoder_pack("opt-tiny") else {
        return;
    };
    let tok = pack.path("tokenizer");
    let img = fixture("images/chelsea.png");
    let caption = |model: &str, tok: &Path| {
        fails(&[
            "caption",
            "--model",
            model,
            "--tokenizer",
            s(tok),
            "--no-retrieval",
            s(&img),
        ])
    };
    // A decoder type that is not supported, named.
    let tmp = tempfile::tempdir().unwrap();
    let m = edited_model(&pack, &tmp.path().join("a"), |c| {
        c["decoder"]["model_type"] = "this_bloom".into()
    });
    let e = caption(&m, &tok);
    assert!(e.contains("\"this_bloom\" is not supported"), "{e}");
    // An OPT config whose sizes disagree with the tensors.
    let m = edited_model(&pack, &tmp.path().join("b"), |c| {
        c["decoder"]["ffn_dim"] = 48.into()
    });
    let e = caption(&m, &tok);
    assert!(e.contains("fc1.weight") && e.contains("[48, 32]"), "{e}");
    // An encoder width other than 768 with an OPT decoder: the reference cannot run it either.
    let m = edited_model(&pack, &tmp.path().join("c"), |c| {
        c["encoder"]["vision_config"]["hidden_size"] = 64.into();
        c["encoder"]["vision_config"]["num_attention_heads"] = 4.into();
    });
    let e = caption(&m, &tok);
    assert!(e.contains("768") && e.contains("cannot run"), "{e}");
    // An OPT tokenizer folder without its configs.
    let bare = tmp.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(tok.join(f), bare.join(f)).unwrap();
    }
    let e = caption(s(&pack.path("model")), &bare);
    assert!(
        e.contains("tokenizer_config.json") && e.contains("OPT"),
        "{e}"
    );
    // A GPT-2 checkpoint with OPT's tokenizer.
    let e = caption(s(&fixture("model")), &tok);
    assert!(e.contains("GPT-2") && e.contains("</s>"), "{e}");
}

#[test]
fn a_token_without_an_entry_is_an_error_naming_its_id() {
    let Some(pack) = decoder_pack("opt-tiny") else {
        return;
    };
    let tok = smallcap::Tokenizer::from_dir(&pack.path("tokenizer")).unwrap();
    // OPT pads its embedding past its tokens (here 50260 tokens for 50272 rows).
    let e = tok.caption(&[2, 100, 50265]).unwrap_err().to_string();
    assert!(e.contains("50265"), "{e}");
}

#[test]
fn live_retrieval_prompts_an_opt_smallcap() {
    let Some(pack) = decoder_pack("opt-tiny") else {
        return;
    };
    let store = format!(
        "{},captions={}",
        fixture("retrieval/datastore_index").display(),
        fixture("retrieval/datastore_captions.json").display()
    );
    let encoder = fixture("retrieval/clip_resnet_jit_fp16.pt");
    for want in common::pipeline_cases().iter().take(3) {
        let img = fixture(&format!("images/{}", want["image"].as_str().unwrap()));
        let got = live_equals_given(&pack, &store, &encoder, &img);
        // The reference's top-4 for this image, in the OPT model's prompt.
        assert_eq!(
            serde_json::json!(got),
            want["retrieved_captions"],
            "{}",
            want["image"]
        );
    }
}

/// Captions `img` with `pack`'s model and live retrieval from `store`, checks that the same
/// captions given by hand give the same ids and caption (the retrieved captions went into the
/// prompt unchanged), and returns them.
fn live_equals_given(pack: &DecoderPack, store: &str, encoder: &Path, img: &Path) -> Vec<String> {
    let (model, tok) = (pack.path("model"), pack.path("tokenizer"));
    let base = [
        "caption",
        "--model",
        s(&model),
        "--tokenizer",
        s(&tok),
        "--early-stopping",
    ];
    let mut live = base.to_vec();
    live.extend([
        "--datastore",
        store,
        "--retrieval-encoder",
        s(encoder),
        s(img),
    ]);
    let got: serde_json::Value = serde_json::from_str(ok(&live).trim()).unwrap();
    let retrieved: Vec<String> = got["retrieved_captions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let mut given = base.to_vec();
    for c in &retrieved {
        given.extend(["--captions", c.as_str()]);
    }
    given.push(s(img));
    let same: serde_json::Value = serde_json::from_str(ok(&given).trim()).unwrap();
    assert_eq!(got["generated_ids"], same["generated_ids"], "{img:?}");
    assert_eq!(got["caption"], same["caption"], "{img:?}");
    retrieved
}

/// The SentencePiece model `bytes` without its last piece: the top-level fields of a
/// `ModelProto` are (tag, length, bytes) records, the pieces field 1.
fn without_last_piece(bytes: &[u8]) -> Vec<u8> {
    fn varint(b: &[u8], at: &mut usize) -> usize {
        let (mut v, mut shift) = (0usize, 0);
        loop {
            let byte = b[*at];
            *at += 1;
            v |= ((byte & 0x7f) as usize) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                return v;
            }
        }
    }
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let tag = varint(bytes, &mut at);
        assert_eq!(
            tag & 7,
            2,
            "top-level ModelProto fields are length-delimited"
        );
        let len = varint(bytes, &mut at);
        at += len;
        records.push((tag >> 3, start..at));
    }
    let last_piece = records.iter().rposition(|(field, _)| *field == 1).unwrap();
    records.remove(last_piece);
    records
        .iter()
        .flat_map(|(_, r)| bytes[r.clone()].to_vec())
        .collect()
}

#[test]
fn xglm_bad_inputs_give_clear_errors() {
    let (Some(xglm), Some(opt)) = (decoder_pack("xglm-tiny"), decoder_pack("opt-tiny")) else {
        return;
    };
    let img = fixture("images/chelsea.png");
    let caption = |model: &Path, tok: &Path| {
        fails(&[
            "caption",
            "--model",
            s(model),
            "--tokenizer",
            s(tok),
            "--no-retrieval",
            s(&img),
        ])
    };
    let tmp = tempfile::tempdir().unwrap();
    let tokenizer_like = |name: &str, model: &[u8]| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["tokenizer_config.json", "special_tokens_map.json"] {
            std::fs::copy(xglm.path("tokenizer").join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("sentencepiece.bpe.model"), model).unwrap();
        dir
    };
    // A SentencePiece file that is not a model: the error names the file.
    let dir = tokenizer_like("garbage", b"this is not a SentencePiece model\n");
    let e = caption(&xglm.path("model"), &dir);
    assert!(
        e.contains("not a SentencePiece model")
            && e.contains(s(&dir.join("sentencepiece.bpe.model"))),
        "{e}"
    );
    // A model with one piece fewer than the decoder's vocabulary.
    let real = std::fs::read(xglm.path("tokenizer/sentencepiece.bpe.model")).unwrap();
    let dir = tokenizer_like("short", &without_last_piece(&real));
    let e = caption(&xglm.path("model"), &dir);
    assert!(e.contains("142 tokens") && e.contains("143"), "{e}");
    // An XGLM checkpoint with OPT's tokenizer, and an OPT one with XGLM's.
    let e = caption(&xglm.path("model"), &opt.path("tokenizer"));
    assert!(e.contains("XGLM") && e.contains("SentencePiece"), "{e}");
    let e = caption(&opt.path("model"), &xglm.path("tokenizer"));
    assert!(e.contains("this_opt") && e.contains("SentencePiece"), "{e}");
}

#[test]
fn an_xglm_smallcap_retrieves_and_captions_from_a_multilingual_datastore() {
    let Some(pack) = decoder_pack("xglm-tiny") else {
        return;
    };
    let captions = [
        "Ein Hund läuft am Strand",
        "Zwei Männer reiten auf Pferden am Strand",
        "Un chat est assis sur une table",
        "Une femme regarde un grand bâtiment",
        "一只猫坐在桌子上",
        "两个男人在海滩上骑马",
        "Ein rotes Auto parkt vor dem Haus",
        "Un train traverse la campagne",
    ];
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("captions.json");
    std::fs::write(&list, serde_json::to_string(&captions).unwrap()).unwrap();
    let store = tmp.path().join("store");
    let encoder = fixture("retrieval/clip_resnet.pt");
    ok(&[
        "datastore",
        "build",
        "--captions",
        s(&list),
        "--encoder",
        s(&encoder),
        "--out",
        s(&store),
    ]);
    for name in ["chelsea.png", "coffee.png"] {
        let img = fixture(&format!("images/{name}"));
        let retrieved = live_equals_given(&pack, s(&store), &encoder, &img);
        assert_eq!(retrieved.len(), 4, "{retrieved:?}");
        assert!(
            retrieved.iter().all(|c| captions.contains(&c.as_str())),
            "{retrieved:?}"
        );
    }
}

#[test]
fn an_xglm_checkpoint_without_its_position_table_computes_it_within_bounds() {
    let Some(pack) = decoder_pack("xglm-tiny") else {
        return;
    };
    // The pack's weights without `embed_positions.weights` (as a pretrained file may be).
    let (_, mut tensors) = pack_model(&pack);
    tensors.remove(smallcap::checkpoint::XGLM_POSITIONS);
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(pack.path("model/config.json")).unwrap())
                .unwrap();
        edit(&mut cfg);
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        dir
    };
    // Computed, the table gives the reference's captions.
    let model = write("plain", &|_| {});
    let case = &pack.cases[0];
    let img = image(&pack, case);
    let tok = pack.path("tokenizer");
    let mut args = vec![
        "caption",
        "--model",
        s(&model),
        "--tokenizer",
        s(&tok),
        "--early-stopping",
    ];
    let prompt = prompt_args(case);
    args.extend(prompt.iter().map(String::as_str));
    args.push(s(&img));
    let line: serde_json::Value = serde_json::from_str(ok(&args).trim()).unwrap();
    let want = &case.expected["beam3_early"];
    assert_eq!(line["generated_ids"], serde_json::json!(want.generated_ids));
    // A config whose sizes would make a table larger than the file is refused before any
    // allocation.
    let huge = write("huge", &|c| {
        c["decoder"]["max_position_embeddings"] = 1_000_000_000u64.into()
    });
    let e = fails(&[
        "caption",
        "--model",
        s(&huge),
        "--tokenizer",
        s(&tok),
        "--no-retrieval",
        s(&img),
    ]);
    assert!(
        e.contains("max_position_embeddings 1000000000") && e.contains("larger than"),
        "{e}"
    );
}
