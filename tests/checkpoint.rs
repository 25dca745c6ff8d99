//! Checkpoint loading: safetensors and the PyTorch pickle give the same model, and every kind of
//! bad checkpoint is a clear error naming the file and tensor at fault.

mod common;

use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::*;
use smallcap::checkpoint::StateDict;
use smallcap::{SmallCap, SmallCapConfig};

fn copy_config(dir: &Path) {
    std::fs::copy(fixture("model/config.json"), dir.join("config.json")).unwrap();
}

fn config() -> SmallCapConfig {
    SmallCapConfig::from_file(&fixture("model/config.json")).unwrap()
}

fn write_safetensors(dir: &Path, drop: Option<&str>) {
    let sd = StateDict::load_dir(&fixture("model"), &config(), &Device::Cpu).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> = sd
        .tensors
        .into_iter()
        .filter(|(k, _)| Some(k.as_str()) != drop)
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

#[test]
fn safetensors_checkpoint_gives_the_reference_logits() {
    let dir = tempfile::tempdir().unwrap();
    copy_config(dir.path());
    write_safetensors(dir.path(), None);
    let m = SmallCap::load_dir(dir.path(), &Device::Cpu).unwrap();
    let case = &cases()[2];
    let t = expected_tensors();
    let enc = &t[&format!("{}.encoder_hidden", case.id)];
    let mut seq = m.decoder.start(enc).unwrap();
    let logits = m
        .decoder
        .forward(&case.prompt_ids, case.prompt_ids.len(), &mut [&mut seq])
        .unwrap()
        .squeeze(0)
        .unwrap();
    let e = rel_err(&logits, &t[&format!("{}.logits_last", case.id)]);
    assert!(e < 1e-4, "relative error {e}");
}

#[test]
fn the_stored_lm_head_is_used_not_wte() {
    // The fixture's lm_head differs from wte, as the README warns.
    let sd = StateDict::load_dir(&fixture("model"), &config(), &Device::Cpu).unwrap();
    let head = sd.tensors["decoder.lm_head.weight"].flatten_all().unwrap();
    let wte = sd.tensors["decoder.transformer.wte.weight"]
        .flatten_all()
        .unwrap();
    let diff = (head - wte)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 0.0);
}

#[test]
fn lm_head_is_tied_to_wte_when_absent() {
    let dir = tempfile::tempdir().unwrap();
    copy_config(dir.path());
    write_safetensors(dir.path(), Some("decoder.lm_head.weight"));
    let sd = StateDict::load_dir(dir.path(), &config(), &Device::Cpu).unwrap();
    let head = sd.tensors["decoder.lm_head.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let wte = sd.tensors["decoder.transformer.wte.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(head, wte);
}

fn load_err(dir: &Path) -> String {
    match SmallCap::load_dir(dir, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json"), "{err}");
    copy_config(dir.path());
    let err = load_err(dir.path());
    assert!(err.contains("no weights"), "{err}");
}

#[test]
fn truncated_pytorch_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_config(dir.path());
    let bytes = std::fs::read(fixture("model/pytorch_model.bin")).unwrap();
    std::fs::write(
        dir.path().join("pytorch_model.bin"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("pytorch_model.bin") && err.contains("truncated or corrupt"),
        "{err}"
    );
}

#[test]
fn truncated_and_corrupt_safetensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_config(dir.path());
    write_safetensors(dir.path(), None);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("not a valid safetensors"), "{err}");
}

#[test]
fn missing_tensor_is_named_with_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    copy_config(dir.path());
    write_safetensors(
        dir.path(),
        Some("decoder.transformer.h.1.crossattention.q_attn.weight"),
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("missing tensor decoder.transformer.h.1.crossattention.q_attn.weight")
            && err.contains("[64, 16]"),
        "{err}"
    );
}

#[test]
fn config_that_disagrees_with_the_tensors_names_tensor_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("model/config.json")).unwrap()).unwrap();
    // Reduce factor 2 instead of 4: the cross-attention projections are twice as wide.
    cfg["decoder"]["cross_attention_reduce_factor"] = 2.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        fixture("model/pytorch_model.bin"),
        dir.path().join("pytorch_model.bin"),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("crossattention.q_attn.weight")
            && err.contains("[64, 16]")
            && err.contains("[64, 32]"),
        "{err}"
    );
    cfg["decoder"]["cross_attention_reduce_factor"] = 3.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("cross_attention_reduce_factor"), "{err}");
}

/// A zip archive whose data.pkl calls `os.system("echo pwned")` when unpickled by Python.
fn malicious_checkpoint(path: &Path) {
    let mut pkl = vec![0x80, 0x02]; // PROTO 2
    pkl.extend(b"cos\nsystem\n"); // GLOBAL os.system
    let arg = b"echo pwned";
    pkl.push(b'X'); // BINUNICODE
    pkl.extend((arg.len() as u32).to_le_bytes());
    pkl.extend(arg);
    pkl.push(0x85); // TUPLE1
    pkl.push(b'R'); // REDUCE
    pkl.push(b'.'); // STOP
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(&pkl).unwrap();
    zip.finish().unwrap();
}

#[test]
fn pickle_that_calls_code_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_config(dir.path());
    malicious_checkpoint(&dir.path().join("pytorch_model.bin"));
    let err = load_err(dir.path());
    assert!(
        err.contains("os.system") && err.contains("refusing"),
        "{err}"
    );
}

#[test]
fn written_buffers_equal_the_reference_checkpoints() {
    // The fixture's pytorch_model.bin was saved by the reference: its buffers are the truth.
    let all =
        smallcap::checkpoint::read_state_dict(&fixture("model/pytorch_model.bin"), &Device::Cpu)
            .unwrap();
    let is_buffer = |k: &str| {
        k.ends_with("attn.bias")
            || k.ends_with("crossattention.bias")
            || k.ends_with("masked_bias")
            || k.ends_with("position_ids")
    };
    let mut weights: Vec<(String, Tensor)> = smallcap::checkpoint::expected_tensors(&config())
        .into_iter()
        .map(|t| (t.name.clone(), all[&t.name].clone()))
        .collect();
    let head = "decoder.lm_head.weight".to_string();
    weights.push((head.clone(), all[&head].clone()));
    let written = smallcap::checkpoint::with_reference_buffers(weights, &config()).unwrap();
    let buffers: Vec<&(String, Tensor)> = written.iter().filter(|(k, _)| is_buffer(k)).collect();
    let want: Vec<&String> = all.keys().filter(|k| is_buffer(k)).collect();
    assert_eq!(buffers.len(), want.len());
    assert_eq!(written.len(), all.len());
    for (name, t) in buffers {
        let r = &all[name];
        // (The reader gives every tensor as f32; the written storage types are checked in
        // train_cli against the reference's.)
        assert_eq!(t.dims(), r.dims(), "{name}");
        let same = t
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .eq(&r.to_dtype(candle_core::DType::F64).unwrap())
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(same, 1.0, "{name}");
    }
}

/// `torch.save({"h": torch.ones(2, 2, dtype=torch.float16), "b": torch.ones(3,
/// dtype=torch.bfloat16), "i": torch.arange(4), "view": torch.arange(6.0)[2:]})` (the fuzz seed
/// made by fuzz/make_seeds.py): every dtype is widened to f32, and a view is read from its
/// storage offset (PyTorch counts it in elements: here 2 elements, 8 bytes into the storage).
#[test]
fn dtypes_and_storage_offsets_of_a_torch_save_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/checkpoint/dtypes");
    let t = smallcap::checkpoint::read_state_dict(&path, &Device::Cpu).unwrap();
    let v = |name: &str| -> Vec<f32> { t[name].flatten_all().unwrap().to_vec1().unwrap() };
    assert_eq!(v("view"), [2.0, 3.0, 4.0, 5.0]);
    assert_eq!(v("h"), [1.0; 4]);
    assert_eq!(t["h"].dims(), [2, 2]);
    assert_eq!(v("b"), [1.0; 3]);
    assert_eq!(v("i"), [0.0, 1.0, 2.0, 3.0]);
}

/// The `dtypes` seed (`fuzz/seeds/checkpoint/dtypes`).
fn dtypes_seed() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/checkpoint/dtypes"))
        .unwrap()
}

/// Where `view`'s storage (`arange(6.0)`, stored uncompressed) starts in an archive's bytes.
fn view_storage_at(bytes: &[u8]) -> usize {
    let values: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    bytes
        .windows(values.len())
        .position(|w| w == values.as_slice())
        .expect("view's storage, arange(6.0), stored uncompressed")
}

/// The `dtypes` seed rewritten to `path` with every entry stored, after a first entry of `pad`
/// zero bytes when given, each entry's bytes passed through `edit(name, bytes)`.
fn rewrite_dtypes_seed(path: &Path, pad: Option<usize>, edit: impl Fn(&str, &mut Vec<u8>)) {
    let seed = dtypes_seed();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&seed)).unwrap();
    let mut out = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    if let Some(pad) = pad {
        out.start_file("pad", stored).unwrap();
        out.write_all(&vec![0u8; pad]).unwrap();
    }
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut bytes).unwrap();
        edit(&name, &mut bytes);
        out.start_file(name, stored).unwrap();
        out.write_all(&bytes).unwrap();
    }
    out.finish().unwrap();
}

/// The `dtypes` seed written to `path` with its data.pkl's `view` offset and size
/// (`BININT1 2, BININT1 4, TUPLE1`) replaced by `patch` (the offset's opcode kept).
fn dtypes_seed_with_view_size(path: &Path, patch: &[u8]) {
    rewrite_dtypes_seed(path, None, |name, bytes| {
        if name.ends_with("data.pkl") {
            let at = bytes
                .windows(5)
                .position(|w| w == b"K\x02K\x04\x85")
                .expect("view's offset and size in the pickle");
            bytes.splice(at + 2..at + 4, patch.iter().copied());
        }
    });
}

/// Why `bytes`, written to a file named `name`, is refused as a state dict.
fn state_dict_error(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    smallcap::checkpoint::read_state_dict(&path, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

/// Sizes in the pickle are checked against the file before anything is allocated: a tensor
/// whose shape claims more bytes than the whole file holds is refused by name (the `dtypes`
/// seed with `view`'s shape patched from `(4,)` to `(2^31 - 1,)`: 8 GiB of f32).
#[test]
fn a_shape_larger_than_the_file_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.bin");
    dtypes_seed_with_view_size(&path, b"J\xff\xff\xff\x7f");
    let e = smallcap::checkpoint::read_state_dict(&path, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("huge.bin") && e.contains("tensor view") && e.contains("needs more bytes than"),
        "{e}"
    );
}

/// A shape that fits in the file but not in its storage: `view` (f32, 2 elements into a storage
/// of 6) patched from `(4,)` to `(5,)` needs 20 bytes where 16 remain.
#[test]
fn a_storage_shorter_than_its_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.bin");
    dtypes_seed_with_view_size(&path, b"K\x05");
    let e = smallcap::checkpoint::read_state_dict(&path, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("short.bin")
            && e.contains("tensor view")
            && e.contains("too short")
            && e.contains("16 bytes from offset 8, 20 needed"),
        "{e}"
    );
}

/// Storages are read from the memory-mapped file when stored uncompressed, so their CRC-32 is
/// checked there: one flipped byte in `view`'s storage (`arange(6.0)`, the value 3.0) is
/// refused by naming the storage.
#[test]
fn a_corrupt_storage_is_refused_by_its_crc() {
    let mut bytes = dtypes_seed();
    let at = view_storage_at(&bytes);
    bytes[at + 3 * 4 + 1] ^= 0x40;
    let e = state_dict_error("flipped.bin", &bytes);
    assert!(
        e.contains("flipped.bin") && e.contains("is corrupt") && e.contains("CRC-32"),
        "{e}"
    );
}

/// Storages are read from the file as PyTorch stores them, uncompressed: an archive whose
/// storage entries claim another compression method (the `dtypes` seed with the method field of
/// every `data/` entry's local and central header set to 8, deflate) is refused by naming the
/// storage, not misread.
#[test]
fn a_compressed_storage_is_refused_by_name() {
    let mut bytes = dtypes_seed();
    // (signature, offset of the method field, of the name length, of the name)
    for (sig, method, name_len, name_at) in
        [(b"PK\x03\x04", 8, 26, 30), (b"PK\x01\x02", 10, 28, 46)]
    {
        let starts: Vec<usize> = bytes
            .windows(4)
            .enumerate()
            .filter(|(_, w)| w == sig)
            .map(|(i, _)| i)
            .collect();
        for at in starts {
            let len = u16::from_le_bytes([bytes[at + name_len], bytes[at + name_len + 1]]) as usize;
            let name =
                String::from_utf8_lossy(&bytes[at + name_at..at + name_at + len]).to_string();
            if name.contains("/data/") {
                bytes[at + method..at + method + 2].copy_from_slice(&8u16.to_le_bytes());
            }
        }
    }
    let e = state_dict_error("deflated.bin", &bytes);
    assert!(
        e.contains("deflated.bin") && e.contains("/data/") && e.contains("compress"),
        "{e}"
    );
}

/// A tensor's f32 values are borrowed from the mapped file where they lie 4-aligned and copied
/// where they do not (a zip written by another tool need not align its entries): the `dtypes`
/// seed rewritten after a stored padding entry of 0 to 3 bytes, so that `view`'s storage lands
/// at every alignment, reads `[2, 3, 4, 5]` each time.
#[test]
fn f32_values_are_read_at_any_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let mut alignments = std::collections::HashSet::new();
    for pad in 0..4usize {
        let path = dir.path().join(format!("pad{pad}.bin"));
        rewrite_dtypes_seed(&path, Some(pad), |_, _| {});
        // `view`'s values start 8 bytes (2 elements) into its storage.
        let at = view_storage_at(&std::fs::read(&path).unwrap()) + 8;
        alignments.insert(at % 4);
        let archive = smallcap::checkpoint::PytorchArchive::open(&path).unwrap();
        let (got, dims) = archive.f32_values("view").unwrap();
        assert_eq!(&got[..], [2.0, 3.0, 4.0, 5.0], "padding {pad}");
        assert_eq!(dims, [4]);
        // The mmap base is page-aligned, so the file offset's alignment is the values'.
        let borrowed = matches!(got, std::borrow::Cow::Borrowed(_));
        assert_eq!(borrowed, at.is_multiple_of(4), "padding {pad}");
    }
    assert_eq!(alignments.len(), 4, "every alignment was tried");
}
