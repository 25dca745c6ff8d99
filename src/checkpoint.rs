//! Reading a SmallCap checkpoint's tensors: `model.safetensors`, or `pytorch_model.bin` (a PyTorch
//! zip pickle) through a restricted reader that only accepts tensor rebuilding, and the table of
//! every tensor the model needs, with its expected shape, checked before any model is built.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use crate::config::{
    DecoderArch, DecoderConfig, OptLayout, SmallCapConfig, VisionConfig, XglmLayout,
};
use crate::error::{Error, Result};

/// Names of the weight files, in the order they are looked for.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The PyTorch pickle a checkpoint folder may hold instead of safetensors.
pub const PYTORCH_FILE: &str = "pytorch_model.bin";

/// The globals a PyTorch state-dict pickle may reference. Anything else (`os.system`,
/// `builtins.eval`, ...) is refused: the pickle is read as data and no code ever runs.
const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "DoubleStorage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
    // TorchScript archives tag typed containers with these identity functions.
    ("torch.jit._pickle", "restore_type_tag"),
    ("torch.jit._pickle", "build_intlist"),
    ("torch.jit._pickle", "build_doublelist"),
    ("torch.jit._pickle", "build_boollist"),
    ("torch.jit._pickle", "build_tensorlist"),
];

/// Inserts the buffers the reference's `state_dict` holds beside the weights (transformers
/// 4.21.1): `encoder.embeddings.position_ids` (`arange`, i64 `[1, tokens]`) after the class
/// embedding, and per decoder block `attn.bias` / `crossattention.bias` (the causal mask, u8
/// `[1, 1, n_positions, n_positions]`) and `attn.masked_bias` / `crossattention.masked_bias`
/// (f32 scalar -1e4) before the module's `c_attn.weight`. The model never reads them; a
/// checkpoint that has them loads into the reference without "newly initialized" warnings.
pub fn with_reference_buffers(
    tensors: Vec<(String, Tensor)>,
    cfg: &SmallCapConfig,
) -> Result<Vec<(String, Tensor)>> {
    let cpu = Device::Cpu;
    let tokens = cfg.encoder.num_positions();
    let position_ids = Tensor::arange(0i64, tokens as i64, &cpu)?.reshape((1, tokens))?;
    let n = cfg.decoder.n_positions;
    let causal: Vec<u8> = (0..n * n).map(|i| u8::from(i % n <= i / n)).collect();
    let mask = Tensor::from_vec(causal, (1, 1, n, n), &cpu)?;
    let masked_bias = Tensor::new(-1e4f32, &cpu)?;
    let mut out = Vec::with_capacity(tensors.len() + 1 + 4 * cfg.decoder.n_layer);
    for (name, t) in tensors {
        let module = name
            .strip_suffix(".c_attn.weight")
            .filter(|m| m.ends_with(".attn") || m.ends_with(".crossattention"));
        if let Some(module) = module {
            out.push((format!("{module}.bias"), mask.clone()));
            out.push((format!("{module}.masked_bias"), masked_bias.clone()));
        }
        let class = name == "encoder.embeddings.class_embedding";
        out.push((name, t));
        if class {
            out.push((
                "encoder.embeddings.position_ids".into(),
                position_ids.clone(),
            ));
        }
    }
    Ok(out)
}

/// A tensor the model reads, with the shape the config implies.
#[derive(Debug, Clone)]
pub struct ExpectedTensor {
    /// The tensor's name in the checkpoint.
    pub name: String,
    /// The shape `config.json` implies for it.
    pub shape: Vec<usize>,
}

/// Every tensor a SmallCap model with this config reads, in checkpoint key names.
/// `decoder.lm_head.weight` is not listed: it is optional (tied to the token embedding when
/// absent).
pub fn expected_tensors(cfg: &SmallCapConfig) -> Vec<ExpectedTensor> {
    let mut out = vision_tensors(&cfg.encoder);
    out.extend(decoder_tensors(&cfg.decoder));
    out
}

fn expect(out: &mut Vec<ExpectedTensor>, name: String, shape: &[usize]) {
    out.push(ExpectedTensor {
        name,
        shape: shape.to_vec(),
    })
}

/// The CLIP vision tower's tensors (`encoder.*`).
pub fn vision_tensors(v: &VisionConfig) -> Vec<ExpectedTensor> {
    let mut out = Vec::new();
    let mut add = |name: String, shape: &[usize]| expect(&mut out, name, shape);
    let h = v.hidden_size;
    add("encoder.embeddings.class_embedding".into(), &[h]);
    add(
        "encoder.embeddings.patch_embedding.weight".into(),
        &[h, v.num_channels, v.patch_size, v.patch_size],
    );
    add(
        "encoder.embeddings.position_embedding.weight".into(),
        &[v.num_positions(), h],
    );
    for ln in ["pre_layrnorm", "post_layernorm"] {
        add(format!("encoder.{ln}.weight"), &[h]);
        add(format!("encoder.{ln}.bias"), &[h]);
    }
    for i in 0..v.num_hidden_layers {
        let p = format!("encoder.encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{p}.self_attn.{proj}.weight"), &[h, h]);
            add(format!("{p}.self_attn.{proj}.bias"), &[h]);
        }
        for ln in ["layer_norm1", "layer_norm2"] {
            add(format!("{p}.{ln}.weight"), &[h]);
            add(format!("{p}.{ln}.bias"), &[h]);
        }
        add(format!("{p}.mlp.fc1.weight"), &[v.intermediate_size, h]);
        add(format!("{p}.mlp.fc1.bias"), &[v.intermediate_size]);
        add(format!("{p}.mlp.fc2.weight"), &[h, v.intermediate_size]);
        add(format!("{p}.mlp.fc2.bias"), &[h]);
    }
    out
}

/// The decoder's tensors (`decoder.*`), in the names of its family.
pub fn decoder_tensors(d: &DecoderConfig) -> Vec<ExpectedTensor> {
    match &d.arch {
        DecoderArch::Gpt2 => gpt2_tensors(d),
        DecoderArch::Opt(o) => opt_tensors(d, o),
        DecoderArch::Xglm(_) => xglm_tensors(d),
    }
}

fn gpt2_tensors(d: &DecoderConfig) -> Vec<ExpectedTensor> {
    let mut out = Vec::new();
    let mut add = |name: String, shape: &[usize]| expect(&mut out, name, shape);
    let e = d.n_embd;
    let c = d.cross_attention_dim();
    add("decoder.transformer.wte.weight".into(), &[d.vocab_size, e]);
    add("decoder.transformer.wpe.weight".into(), &[d.n_positions, e]);
    add("decoder.transformer.ln_f.weight".into(), &[e]);
    add("decoder.transformer.ln_f.bias".into(), &[e]);
    for i in 0..d.n_layer {
        let p = format!("decoder.transformer.h.{i}");
        for ln in ["ln_1", "ln_2", "ln_cross_attn"] {
            add(format!("{p}.{ln}.weight"), &[e]);
            add(format!("{p}.{ln}.bias"), &[e]);
        }
        add(format!("{p}.attn.c_attn.weight"), &[e, 3 * e]);
        add(format!("{p}.attn.c_attn.bias"), &[3 * e]);
        add(format!("{p}.attn.c_proj.weight"), &[e, e]);
        add(format!("{p}.attn.c_proj.bias"), &[e]);
        add(format!("{p}.crossattention.q_attn.weight"), &[e, c]);
        add(format!("{p}.crossattention.q_attn.bias"), &[c]);
        add(format!("{p}.crossattention.c_attn.weight"), &[e, 2 * c]);
        add(format!("{p}.crossattention.c_attn.bias"), &[2 * c]);
        add(format!("{p}.crossattention.c_proj.weight"), &[c, e]);
        add(format!("{p}.crossattention.c_proj.bias"), &[e]);
        add(format!("{p}.mlp.c_fc.weight"), &[e, d.n_inner]);
        add(format!("{p}.mlp.c_fc.bias"), &[d.n_inner]);
        add(format!("{p}.mlp.c_proj.weight"), &[d.n_inner, e]);
        add(format!("{p}.mlp.c_proj.bias"), &[e]);
    }
    out
}

/// XGLM's sinusoidal position table, a persistent buffer of the reference's state dict: computed
/// ([`crate::models::xglm::sinusoidal_positions`]) when a checkpoint does not hold it.
pub const XGLM_POSITIONS: &str = "decoder.model.embed_positions.weights";

/// XGLM's position table for a weight file `weights` that lacks it, computed from the config's
/// sizes once they are checked: the table may not be larger than the file itself (every real
/// one is a small part of it), so an absurd `max_position_embeddings` or `d_model` is refused
/// before anything is allocated.
pub fn xglm_positions(d: &DecoderConfig, weights: &Path, device: &Device) -> Result<Tensor> {
    let DecoderArch::Xglm(XglmLayout { padding_idx, .. }) = d.arch else {
        return Err(Error::checkpoint(
            weights,
            format!("{XGLM_POSITIONS} belongs to XGLM, not {}", d.model_type()),
        ));
    };
    let rows = d.n_positions + d.position_offset();
    let file_len = std::fs::metadata(weights)
        .map_err(|e| Error::io(weights, e))?
        .len();
    let bytes = (rows as u64)
        .saturating_mul(d.n_embd as u64)
        .saturating_mul(4);
    if bytes > file_len {
        return Err(Error::checkpoint(
            weights,
            format!(
                "decoder.max_position_embeddings {} × d_model {} would make a position table of {bytes} bytes, larger than the {file_len}-byte weight file: the config's sizes are not this checkpoint's",
                d.n_positions, d.n_embd
            ),
        ));
    }
    Ok(crate::models::xglm::sinusoidal_positions(
        rows,
        d.n_embd,
        padding_idx as usize,
        device,
    )?)
}

fn xglm_tensors(d: &DecoderConfig) -> Vec<ExpectedTensor> {
    // In the reference's state-dict order (`XGLMModel.__init__`, then `ThisXGLMDecoderLayer`,
    // whose cross-attention comes last).
    let mut out = Vec::new();
    let mut add = |name: String, shape: &[usize]| expect(&mut out, name, shape);
    let h = d.n_embd;
    add(
        "decoder.model.embed_tokens.weight".into(),
        &[d.vocab_size, h],
    );
    add(
        XGLM_POSITIONS.into(),
        &[d.n_positions + d.position_offset(), h],
    );
    for i in 0..d.n_layer {
        fairseq_layer_tensors(&mut add, &format!("decoder.model.layers.{i}"), d);
    }
    add("decoder.model.layer_norm.weight".into(), &[h]);
    add("decoder.model.layer_norm.bias".into(), &[h]);
    out
}

/// One block of OPT or XGLM (the same names and order): self-attention, its layer norm, the MLP
/// and its layer norm, then SmallCap's cross-attention and its layer norm.
fn fairseq_layer_tensors(add: &mut impl FnMut(String, &[usize]), p: &str, d: &DecoderConfig) {
    let h = d.n_embd;
    let c = d.cross_attention_dim();
    let x = d.cross_attention_input_dim();
    for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
        add(format!("{p}.self_attn.{proj}.weight"), &[h, h]);
        add(format!("{p}.self_attn.{proj}.bias"), &[h]);
    }
    add(format!("{p}.self_attn_layer_norm.weight"), &[h]);
    add(format!("{p}.self_attn_layer_norm.bias"), &[h]);
    add(format!("{p}.fc1.weight"), &[d.n_inner, h]);
    add(format!("{p}.fc1.bias"), &[d.n_inner]);
    add(format!("{p}.fc2.weight"), &[h, d.n_inner]);
    add(format!("{p}.fc2.bias"), &[h]);
    add(format!("{p}.final_layer_norm.weight"), &[h]);
    add(format!("{p}.final_layer_norm.bias"), &[h]);
    for (proj, shape) in [
        ("k_proj", [c, x]),
        ("v_proj", [c, x]),
        ("q_proj", [c, h]),
        ("out_proj", [h, c]),
    ] {
        add(format!("{p}.encoder_attn.{proj}.weight"), &shape);
        add(format!("{p}.encoder_attn.{proj}.bias"), &[shape[0]]);
    }
    add(format!("{p}.encoder_attn_layer_norm.weight"), &[h]);
    add(format!("{p}.encoder_attn_layer_norm.bias"), &[h]);
}

fn opt_tensors(d: &DecoderConfig, o: &OptLayout) -> Vec<ExpectedTensor> {
    // In the reference's state-dict order (the order of `OPTDecoder.__init__` and
    // `ThisOPTDecoderLayer`, whose cross-attention comes last).
    let mut out = Vec::new();
    let mut add = |name: String, shape: &[usize]| expect(&mut out, name, shape);
    let h = d.n_embd;
    let w = o.word_embed_proj_dim;
    let m = "decoder.model.decoder";
    add(format!("{m}.embed_tokens.weight"), &[d.vocab_size, w]);
    add(
        format!("{m}.embed_positions.weight"),
        &[d.n_positions + d.position_offset(), h],
    );
    if w != h {
        add(format!("{m}.project_out.weight"), &[w, h]);
        add(format!("{m}.project_in.weight"), &[h, w]);
    }
    if o.final_layer_norm {
        add(format!("{m}.final_layer_norm.weight"), &[h]);
        add(format!("{m}.final_layer_norm.bias"), &[h]);
    }
    for i in 0..d.n_layer {
        fairseq_layer_tensors(&mut add, &format!("{m}.layers.{i}"), d);
    }
    out
}

/// The decoder's token embedding, which an absent LM head is tied to.
pub fn token_embedding_name(d: &DecoderConfig) -> &'static str {
    match d.arch {
        DecoderArch::Gpt2 => "decoder.transformer.wte.weight",
        DecoderArch::Opt(_) => "decoder.model.decoder.embed_tokens.weight",
        DecoderArch::Xglm(_) => "decoder.model.embed_tokens.weight",
    }
}

/// Name of the optional LM head; tied to the token embedding ([`token_embedding_name`]) when
/// absent.
pub const LM_HEAD: &str = "decoder.lm_head.weight";

/// The tensors a model needs, loaded as f32 and checked against [`expected_tensors`].
pub struct StateDict {
    /// The tensors by name.
    pub tensors: HashMap<String, Tensor>,
    /// The file they were read from.
    pub path: PathBuf,
}

impl StateDict {
    /// Loads the weights of a checkpoint folder (safetensors preferred over the pickle).
    pub fn load_dir(dir: &Path, cfg: &SmallCapConfig, device: &Device) -> Result<Self> {
        let st = dir.join(SAFETENSORS_FILE);
        let pt = dir.join(PYTORCH_FILE);
        if st.is_file() {
            Self::load_file(&st, cfg, device)
        } else if pt.is_file() {
            Self::load_file(&pt, cfg, device)
        } else {
            Err(Error::checkpoint(
                dir,
                format!("no weights: neither {SAFETENSORS_FILE} nor {PYTORCH_FILE} is there"),
            ))
        }
    }

    /// Loads one weight file (`.safetensors`, or anything else as a PyTorch zip pickle).
    pub fn load_file(path: &Path, cfg: &SmallCapConfig, device: &Device) -> Result<Self> {
        let expected = expected_tensors(cfg);
        let mut wanted: Vec<&str> = expected.iter().map(|t| t.name.as_str()).collect();
        wanted.push(LM_HEAD);
        let mut tensors = read_tensors(path, &wanted, device)?;
        if matches!(cfg.decoder.arch, DecoderArch::Xglm(_)) && !tensors.contains_key(XGLM_POSITIONS)
        {
            let table = xglm_positions(&cfg.decoder, path, device)?;
            tensors.insert(XGLM_POSITIONS.to_string(), table);
        }
        for t in &expected {
            match tensors.get(&t.name) {
                None => {
                    return Err(Error::checkpoint(
                        path,
                        format!("missing tensor {} (expected shape {:?})", t.name, t.shape),
                    ))
                }
                Some(found) if found.dims() != t.shape.as_slice() => {
                    return Err(Error::checkpoint(
                        path,
                        format!(
                            "tensor {} has shape {:?}, but config.json implies {:?}",
                            t.name,
                            found.dims(),
                            t.shape
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        let embedding = token_embedding_name(&cfg.decoder);
        let wte_shape = tensors[embedding].dims().to_vec();
        match tensors.get(LM_HEAD) {
            Some(head) if head.dims() != wte_shape.as_slice() => {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor {LM_HEAD} has shape {:?}, but config.json implies {:?}",
                        head.dims(),
                        wte_shape
                    ),
                ))
            }
            Some(_) => {}
            None => {
                let wte = tensors[embedding].clone();
                tensors.insert(LM_HEAD.to_string(), wte);
            }
        }
        Ok(Self {
            tensors,
            path: path.to_path_buf(),
        })
    }
}

/// Which tensors of a file to load.
#[derive(Clone, Copy)]
enum Select<'a> {
    /// Only these names (others are skipped without reading their data).
    Only(&'a [&'a str]),
    /// Every tensor in the file.
    All,
}

impl Select<'_> {
    fn wants(&self, name: &str) -> bool {
        match self {
            Select::Only(names) => names.contains(&name),
            Select::All => true,
        }
    }
}

/// Reads every tensor of a weight file as f32: `.safetensors`, a PyTorch zip pickle holding a
/// state dict (`torch.save(model.state_dict())`, optionally nested under `"state_dict"`), or a
/// TorchScript archive (`torch.jit.save`, e.g. OpenAI's CLIP `.pt` files), whose module tree is
/// flattened into state-dict names (`visual.conv1.weight`, ...). Pickles are read as data
/// through the same allowlist as checkpoints; no code runs.
pub fn read_state_dict(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let tensors = if is_safetensors {
        read_safetensors(path, Select::All, device)?
    } else {
        read_pytorch(path, Select::All, device)?
    };
    if tensors.is_empty() {
        return Err(Error::checkpoint(path, "the file holds no tensors"));
    }
    Ok(tensors)
}

/// Reads those of the `wanted` tensors that a weight file holds (`.safetensors`, or anything
/// else as a PyTorch zip pickle), as f32; absent names are simply left out.
pub fn read_tensors(
    path: &Path,
    wanted: &[&str],
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        read_safetensors(path, Select::Only(wanted), device)
    } else {
        read_pytorch(path, Select::Only(wanted), device)
    }
}

fn read_safetensors(
    path: &Path,
    select: Select<'_>,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::checkpoint(path, format!("not a valid safetensors file: {e}"))
    };
    // SAFETY: the map is read-only and lives only for this function (`load` copies each tensor
    // out of it). Memory-mapping is sound as long as the file is not truncated or rewritten
    // while mapped: nothing in this process writes the file while reading it (our checkpoints
    // are written under a `.partial` name and renamed into place, never modified in place), and
    // as every reader of memory-mapped files we rely on no other process doing so. safetensors
    // checks the header against the file length, so every tensor view lies inside the map.
    let st =
        unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(|e| bad(&e))?;
    let mut out = HashMap::new();
    for (name, _) in st.tensors() {
        if select.wants(&name) {
            let t = st.load(&name, device).map_err(|e| bad(&e))?;
            out.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    Ok(out)
}

/// True for the class of a TorchScript module object (`__torch__.model.CLIP`, ...).
fn is_torchscript_module(module_name: &str) -> bool {
    module_name == "__torch__" || module_name.starts_with("__torch__.")
}

/// Flattens a TorchScript module object (`Build { Reduce { __torch__.* class }, attributes }`)
/// into `(state-dict name, value)` pairs: tensor attributes keep their value, submodules are
/// descended with a `name.` prefix, other attributes (flags, ints, ...) are dropped.
fn flatten_torchscript(prefix: &str, obj: Object, out: &mut Vec<(Object, Object)>) {
    let attrs = match obj {
        Object::Build { callable, args } => match (*callable, *args) {
            (Object::Reduce { callable, .. }, Object::Dict(attrs)) if matches!(&*callable, Object::Class { module_name, .. } if is_torchscript_module(module_name)) => {
                attrs
            }
            _ => return,
        },
        _ => return,
    };
    for (key, value) in attrs {
        let Object::Unicode(name) = key else { continue };
        let full = format!("{prefix}{name}");
        match &value {
            Object::Build { .. } => flatten_torchscript(&format!("{full}."), value, out),
            Object::Reduce { .. } => out.push((Object::Unicode(full), value)),
            _ => {}
        }
    }
}

/// The state dict inside an unpickled root object: a dict of tensors, a dict holding one under
/// `"state_dict"`, or a TorchScript module tree.
fn state_dict_items(path: &Path, root: Object) -> Result<Vec<(Object, Object)>> {
    match root {
        Object::Dict(items) => {
            let nested = items.iter().position(|(k, v)| {
                matches!(k, Object::Unicode(s) if s == "state_dict") && matches!(v, Object::Dict(_))
            });
            match nested {
                Some(i) => match items.into_iter().nth(i) {
                    Some((_, Object::Dict(inner))) => Ok(inner),
                    _ => unreachable!("position checked the variant"),
                },
                None => Ok(items),
            }
        }
        obj @ Object::Build { .. } => {
            let mut out = Vec::new();
            flatten_torchscript("", obj, &mut out);
            if out.is_empty() {
                return Err(Error::checkpoint(
                    path,
                    "the pickle holds an object that is neither a state dict nor a TorchScript module",
                ));
            }
            Ok(out)
        }
        _ => Err(Error::checkpoint(
            path,
            "the pickle does not hold a state dict (a mapping of names to tensors)",
        )),
    }
}

/// How many times its archive's size a pickle may take once read (see [`PytorchArchive`]).
const PICKLE_EXPANSION: u64 = 16;

/// Reads every tensor of a PyTorch zip checkpoint that `select` wants, as f32 (see
/// [`PytorchArchive`]).
fn read_pytorch(
    path: &Path,
    select: Select<'_>,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let archive = PytorchArchive::open(path)?;
    let mut out = HashMap::new();
    for (name, info) in &archive.entries {
        if !select.wants(name) {
            continue;
        }
        match info {
            Ok(Some(_)) => {
                out.insert(name.clone(), archive.tensor(name, device)?);
            }
            // Non-tensor entries (`_metadata`, ...) are skipped when reading everything.
            Ok(None) if matches!(select, Select::All) => continue,
            Ok(None) => {
                return Err(Error::checkpoint(
                    path,
                    format!("entry {name} is not a tensor"),
                ))
            }
            Err(e) => return Err(Error::checkpoint(path, format!("tensor {name}: {e}"))),
        }
    }
    Ok(out)
}

/// The bytes of a memory-mapped file, shared by the zip reader and the tensors read from it.
#[derive(Clone)]
struct MapBytes(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for MapBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A PyTorch zip checkpoint read as data, its tensors on demand: the pickle is parsed into
/// objects once, every global it names is checked against [`ALLOWED_GLOBALS`] (TorchScript
/// module classes `__torch__.*` are accepted as inert attribute containers), and a tensor's
/// bytes are read when it is asked for: straight from the memory-mapped file when the archive
/// stores them uncompressed (as PyTorch does; their CRC-32 is checked, once per storage), through
/// the zip reader otherwise. Sizes and offsets from the pickle are checked against the file
/// before anything is allocated from them.
pub struct PytorchArchive {
    path: PathBuf,
    map: MapBytes,
    zip: Mutex<zip::ZipArchive<std::io::Cursor<MapBytes>>>,
    /// State-dict entries in file order: a tensor's storage view, `None` for a value that is no
    /// tensor, or why the value could not be read as one.
    entries: Vec<(String, std::result::Result<Option<StorageView>, String>)>,
    /// Each name's entry (the last, where a name repeats).
    index: HashMap<String, usize>,
    /// Storages whose CRC-32 matched.
    checked: Mutex<std::collections::HashSet<String>>,
}

impl PytorchArchive {
    /// Opens the checkpoint at `path` and reads its pickle.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only. Memory-mapping is sound as long as the file is not
        // truncated or rewritten while mapped: nothing in this process writes a file it reads
        // (checkpoints are written under a temporary name and renamed into place), and as every
        // reader of memory-mapped files we rely on no other process doing so. Every range read
        // from the map is checked against its length first.
        let map = MapBytes(Arc::new(
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?,
        ));
        let file_len = map.0.len() as u64;
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(map.clone())).map_err(|e| {
            Error::checkpoint(
                path,
                format!("not a PyTorch zip checkpoint (truncated or corrupt?): {e}"),
            )
        })?;
        let pkl_name = zip
            .file_names()
            .filter_map(|n| n.ok())
            .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .map(|n| n.into_owned())
            .ok_or_else(|| Error::checkpoint(path, "the archive holds no data.pkl"))?;
        let dir_name = pkl_name.trim_end_matches(".pkl").to_string();
        let root = {
            let entry = zip
                .by_name(&pkl_name)
                .map_err(|e| Error::checkpoint(path, format!("{pkl_name}: {e}")))?;
            // The pickle is held in memory for the check below: at most a small multiple of
            // the archive's size (PyTorch stores it uncompressed; a compressed one may expand
            // this much).
            let limit = file_len.saturating_mul(PICKLE_EXPANSION);
            let mut pkl = Vec::new();
            entry
                .take(limit + 1)
                .read_to_end(&mut pkl)
                .map_err(|e| Error::checkpoint(path, format!("{pkl_name}: {e}")))?;
            if pkl.len() as u64 > limit {
                return Err(Error::checkpoint(
                    path,
                    format!("{pkl_name} expands to more than {PICKLE_EXPANSION} times the archive's {file_len} bytes; refusing it"),
                ));
            }
            crate::pickle_check::check(&pkl)
                .map_err(|e| Error::checkpoint(path, format!("{pkl_name}: bad pickle: {e}")))?;
            let mut reader = pkl.as_slice();
            let mut stack = Stack::empty();
            stack
                .read_loop(&mut reader)
                .map_err(|e| Error::checkpoint(path, format!("{pkl_name}: bad pickle: {e}")))?;
            stack
                .finalize()
                .map_err(|e| Error::checkpoint(path, format!("{pkl_name}: bad pickle: {e}")))?
        };
        check_globals(&root).map_err(|msg| Error::checkpoint(path, msg))?;
        let entries = state_dict_items(path, root)?
            .into_iter()
            .filter_map(|(key, value)| match key {
                Object::Unicode(name) => Some((name, storage_view(value, &dir_name))),
                _ => None,
            })
            .collect::<Vec<_>>();
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            map,
            zip: Mutex::new(zip),
            entries,
            index,
            checked: Mutex::new(Default::default()),
        })
    }

    /// The names of the archive's tensors, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .enumerate()
            .filter(|&(i, (name, info))| matches!(info, Ok(Some(_))) && self.index[name] == i)
            .map(|(_, (name, _))| name.as_str())
    }

    /// The shape of tensor `name`, if the archive holds it.
    pub fn dims(&self, name: &str) -> Option<&[usize]> {
        self.view(name).ok().map(|v| v.dims.as_slice())
    }

    fn view(&self, name: &str) -> Result<&StorageView> {
        match self.index.get(name).map(|&i| &self.entries[i]) {
            Some((_, Ok(Some(info)))) => Ok(info),
            Some((_, Ok(None))) => Err(Error::checkpoint(
                &self.path,
                format!("entry {name} is not a tensor"),
            )),
            Some((_, Err(e))) => Err(Error::checkpoint(&self.path, format!("tensor {name}: {e}"))),
            None => Err(Error::checkpoint(
                &self.path,
                format!("missing tensor {name}"),
            )),
        }
    }

    /// Tensor `name` as f32 on `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self.view(name)?;
        decode(self.raw(name, info)?, info, device)
    }

    /// Tensor `name`'s values as f32 with its shape: borrowed from the mapped file when stored
    /// there as aligned little-endian f32 (no copy), converted otherwise.
    pub fn f32_values(&self, name: &str) -> Result<(std::borrow::Cow<'_, [f32]>, &[usize])> {
        let info = self.view(name)?;
        let bytes = self.raw(name, info)?;
        let values = if info.dtype != DType::F32 {
            let t = decode(bytes, info, &Device::Cpu)?;
            std::borrow::Cow::Owned(t.flatten_all()?.to_vec1::<f32>()?)
        } else if cfg!(target_endian = "little") && bytes.as_ptr().align_offset(4) == 0 {
            // SAFETY: `bytes` is 4-aligned and its length a multiple of 4 (`nbytes` is the
            // element count times 4); every bit pattern is a valid f32, read as the
            // little-endian f32 the archive stores on this little-endian CPU; the slice borrows
            // the map, which lives as long as `self`.
            std::borrow::Cow::Borrowed(unsafe {
                std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), bytes.len() / 4)
            })
        } else {
            std::borrow::Cow::Owned(f32_from_le(bytes))
        };
        Ok((values, info.dims.as_slice()))
    }

    /// The bytes of a tensor's view (`info`), checked against the file and its storage.
    fn raw(&self, name: &str, info: &StorageView) -> Result<&[u8]> {
        let path = &self.path;
        if !info.is_contiguous() {
            return Err(Error::checkpoint(
                path,
                format!("tensor {name} is stored non-contiguously"),
            ));
        }
        // Sizes come from the pickle: checked against the file before anything is allocated.
        let file_len = self.map.0.len() as u64;
        let elem = info.dtype.size_in_bytes();
        let sizes = info
            .dims
            .iter()
            .try_fold(elem, |n, &d| n.checked_mul(d))
            .zip(info.offset.checked_mul(elem))
            .filter(|&(n, o)| n as u64 <= file_len && o as u64 <= file_len);
        let Some((nbytes, offset)) = sizes else {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor {name}: shape {:?} at offset {} of {:?} needs more bytes than the {file_len}-byte file holds",
                    info.dims, info.offset, info.dtype
                ),
            ));
        };
        let zip = &mut *self.zip.lock().unwrap_or_else(|e| e.into_inner());
        let entry = zip
            .by_name(&info.path)
            .map_err(|e| Error::checkpoint(path, format!("tensor {name}: {}: {e}", info.path)))?;
        // PyTorch stores every storage uncompressed; they are read from the mapped file.
        let (start, size, crc) = match entry.data_start() {
            Some(start)
                if entry.compression() == zip::CompressionMethod::Stored && !entry.encrypted() =>
            {
                (start, entry.size(), entry.crc32())
            }
            _ => {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "storage {} is compressed or encrypted ({:?}); PyTorch stores tensors uncompressed and only such storages are read",
                        info.path,
                        entry.compression()
                    ),
                ))
            }
        };
        let range = start
            .checked_add(size)
            .filter(|&end| end <= file_len)
            .map(|end| start as usize..end as usize)
            .ok_or_else(|| {
                Error::checkpoint(
                    path,
                    format!("storage {} runs past the end of the file", info.path),
                )
            })?;
        let storage = &self.map.0[range];
        self.check_crc(&info.path, storage, crc)?;
        storage.get(offset..offset + nbytes).ok_or_else(|| {
            Error::checkpoint(
                path,
                format!(
                    "tensor {name}: storage {} is too short: {} bytes from offset {offset}, {nbytes} needed",
                    info.path,
                    storage.len().saturating_sub(offset)
                ),
            )
        })
    }

    /// Checks a stored storage's CRC-32 against the archive's record (once per storage; in
    /// parallel chunks).
    fn check_crc(&self, storage_path: &str, bytes: &[u8], want: u32) -> Result<()> {
        use rayon::prelude::*;
        if self
            .checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(storage_path)
        {
            return Ok(());
        }
        let got = bytes
            .par_chunks(1 << 22)
            .map(|c| {
                let mut h = crc32fast::Hasher::new();
                h.update(c);
                h
            })
            .reduce(crc32fast::Hasher::new, |mut a, b| {
                a.combine(&b);
                a
            })
            .finalize();
        if got != want {
            return Err(Error::checkpoint(
                &self.path,
                format!("storage {storage_path} is corrupt: its CRC-32 is {got:08x}, the archive records {want:08x}"),
            ));
        }
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(storage_path.to_string());
        Ok(())
    }
}

/// A tensor's `bytes` (as `info` describes them) as an f32 tensor on `device`.
fn decode(bytes: &[u8], info: &StorageView, device: &Device) -> Result<Tensor> {
    let t = if info.dtype == DType::F32 {
        Tensor::from_vec(f32_from_le(bytes), info.dims.as_slice(), device)?
    } else {
        Tensor::from_raw_buffer(bytes, info.dtype, &info.dims, device)?
    };
    Ok(t.to_dtype(DType::F32)?)
}

/// Little-endian f32 values of `bytes` (a multiple of 4 long), decoded in parallel.
fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(bytes.len() / 4);
    bytes
        .par_chunks_exact(4)
        .with_min_len(1 << 16)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect_into_vec(&mut out);
    out
}

/// Where a tensor's data lies: `torch._utils._rebuild_tensor_v2`'s arguments, read with every
/// count and index checked (candle's own reader indexes them unchecked and panics on a short
/// tuple).
struct StorageView {
    dtype: DType,
    dims: Vec<usize>,
    stride: Vec<usize>,
    /// Storage offset, in elements (as PyTorch counts it).
    offset: usize,
    /// The storage's entry in the archive.
    path: String,
}

impl StorageView {
    /// Row-major with no gaps (dimensions of size 1 may have any stride).
    fn is_contiguous(&self) -> bool {
        let mut want = 1usize;
        for (&d, &s) in self.dims.iter().zip(&self.stride).rev() {
            if d != 1 && s != want {
                return false;
            }
            want = want.saturating_mul(d);
        }
        self.dims.len() == self.stride.len()
    }
}

/// The storage view a state-dict value rebuilds (`_rebuild_tensor_v2`, possibly wrapped in
/// `_rebuild_parameter` or `_rebuild_from_type_v2`); `None` for a value that is no tensor.
fn storage_view(value: Object, dir_name: &str) -> std::result::Result<Option<StorageView>, String> {
    fn take(v: &mut [Object], i: usize, what: &str) -> std::result::Result<Object, String> {
        match v.get_mut(i) {
            Some(o) => Ok(std::mem::replace(o, Object::None)),
            None => Err(format!(
                "{what} has {} items, fewer than {}",
                v.len(),
                i + 1
            )),
        }
    }
    fn tuple(o: Object, what: &str) -> std::result::Result<Vec<Object>, String> {
        o.tuple()
            .map_err(|o| format!("{what} is not a tuple: {o:?}"))
    }
    fn count(o: Object, what: &str) -> std::result::Result<usize, String> {
        match o {
            Object::Int(i) if i >= 0 => Ok(i as usize),
            Object::Long(i) if i >= 0 => Ok(i as usize),
            o => Err(format!("{what} is not a count: {o:?}")),
        }
    }
    let is = |o: &Object, m: &str, c: &str| matches!(o, Object::Class { module_name, class_name } if module_name == m && class_name == c);
    let Ok((mut callable, mut args)) = value.reduce() else {
        return Ok(None);
    };
    if is(&callable, "torch._tensor", "_rebuild_from_type_v2") {
        let mut a = tuple(args, "_rebuild_from_type_v2's arguments")?;
        callable = take(&mut a, 0, "_rebuild_from_type_v2's arguments")?;
        args = take(&mut a, 2, "_rebuild_from_type_v2's arguments")?;
    } else if is(&callable, "torch._utils", "_rebuild_parameter") {
        let mut a = tuple(args, "_rebuild_parameter's arguments")?;
        match take(&mut a, 0, "_rebuild_parameter's arguments")?.reduce() {
            Ok((c, inner)) => (callable, args) = (c, inner),
            Err(_) => return Ok(None),
        }
    }
    if !is(&callable, "torch._utils", "_rebuild_tensor_v2") {
        return Ok(None);
    }
    let what = "_rebuild_tensor_v2's arguments";
    let mut a = tuple(args, what)?;
    let counts = |o: Object, what: &str| -> std::result::Result<Vec<usize>, String> {
        tuple(o, what)?
            .into_iter()
            .map(|x| count(x, what))
            .collect()
    };
    let stride = counts(take(&mut a, 3, what)?, "the stride")?;
    let dims = counts(take(&mut a, 2, what)?, "the size")?;
    let offset = count(take(&mut a, 1, what)?, "the storage offset")?;
    let storage = match take(&mut a, 0, what)? {
        Object::PersistentLoad(id) => *id,
        o => return Err(format!("the storage is not a persistent id: {o:?}")),
    };
    let what = "the storage's persistent id";
    let mut st = tuple(storage, what)?;
    let key = take(&mut st, 2, what)?
        .unicode()
        .map_err(|o| format!("the storage key is not a string: {o:?}"))?;
    let (_, class) = take(&mut st, 1, what)?
        .class()
        .map_err(|o| format!("the storage type is not a class: {o:?}"))?;
    let dtype = match class.as_str() {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "LongStorage" => DType::I64,
        other => return Err(format!("unsupported storage type {other}")),
    };
    Ok(Some(StorageView {
        dtype,
        dims,
        stride,
        offset,
        path: format!("{dir_name}/{key}"),
    }))
}

/// Walks the unpickled object tree and refuses any global outside [`ALLOWED_GLOBALS`] (and the
/// TorchScript module classes `__torch__.*`, which are only ever read as attribute containers).
fn check_globals(obj: &Object) -> std::result::Result<(), String> {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => {
            if is_torchscript_module(module_name)
                || ALLOWED_GLOBALS
                    .iter()
                    .any(|(m, c)| m == module_name && c == class_name)
            {
                Ok(())
            } else {
                Err(format!(
                    "the pickle references {module_name}.{class_name}, which is not tensor rebuilding; refusing to load it"
                ))
            }
        }
        Object::Tuple(v) | Object::List(v) => v.iter().try_for_each(check_globals),
        Object::Dict(kv) => kv.iter().try_for_each(|(k, v)| {
            check_globals(k)?;
            check_globals(v)
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            check_globals(callable)?;
            check_globals(args)
        }
        Object::PersistentLoad(o) => check_globals(o),
        _ => Ok(()),
    }
}
