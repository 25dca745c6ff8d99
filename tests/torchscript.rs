//! OpenAI's CLIP `.pt` files are TorchScript archives: `data.pkl` holds the module tree
//! (`__torch__.*` objects whose attributes are submodules, tensors and plain values). This test
//! writes the fixture's weights in that layout (pickle bytes by hand, as `torch.jit.save` lays
//! them out) and checks that the reader flattens it into the same state dict, that the model
//! loaded from it embeds exactly as the one loaded from the state-dict pickle, and that other
//! globals are still refused.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use candle_core::{Device, Tensor};
use common::fixture;
use smallcap::retrieval::RetrievalEncoder;

#[derive(Default)]
struct Module {
    tensors: BTreeMap<String, Tensor>,
    children: BTreeMap<String, Module>,
}

impl Module {
    fn insert(&mut self, path: &[&str], t: Tensor) {
        match path {
            [leaf] => {
                self.tensors.insert(leaf.to_string(), t);
            }
            [head, rest @ ..] => self
                .children
                .entry(head.to_string())
                .or_default()
                .insert(rest, t),
            [] => unreachable!(),
        }
    }
}

struct Pickler {
    out: Vec<u8>,
    storages: Vec<Vec<u8>>,
}

impl Pickler {
    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend(format!("{module}\n{name}\n").as_bytes());
    }
    fn string(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
    }
    fn int(&mut self, i: i32) {
        self.out.push(b'J');
        self.out.extend(i.to_le_bytes());
    }
    fn tensor(&mut self, t: &Tensor) {
        let dims = t.dims().to_vec();
        let data: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let key = self.storages.len().to_string();
        self.storages
            .push(data.iter().flat_map(|x| x.to_le_bytes()).collect());
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(b'(');
        // persistent id ('storage', FloatStorage, key, 'cpu', numel)
        self.out.push(b'(');
        self.string("storage");
        self.global("torch", "FloatStorage");
        self.string(&key);
        self.string("cpu");
        self.int(data.len() as i32);
        self.out.push(b't');
        self.out.push(b'Q');
        self.int(0);
        self.out.push(b'(');
        for d in &dims {
            self.int(*d as i32);
        }
        self.out.push(b't');
        let mut stride = vec![1usize; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * dims[i + 1];
        }
        self.out.push(b'(');
        for s in &stride {
            self.int(*s as i32);
        }
        self.out.push(b't');
        self.out.push(0x89); // requires_grad False
        self.global("collections", "OrderedDict");
        self.out.push(b')');
        self.out.push(b'R');
        self.out.push(b't');
        self.out.push(b'R');
    }
    fn module(&mut self, class: &str, m: &Module) {
        self.global("__torch__.model", class);
        self.out.push(b')');
        self.out.push(0x81); // NEWOBJ
        self.out.push(b'}');
        self.out.push(b'(');
        self.string("training");
        self.out.push(0x89);
        for (name, t) in &m.tensors {
            self.string(name);
            self.tensor(t);
        }
        for (name, child) in &m.children {
            self.string(name);
            self.module("Submodule", child);
        }
        self.out.push(b'u');
        self.out.push(b'b');
    }
}

fn write_torchscript(path: &std::path::Path, sd: &HashMap<String, Tensor>, extra_global: bool) {
    let mut root = Module::default();
    for (k, t) in sd {
        root.insert(&k.split('.').collect::<Vec<_>>(), t.clone());
    }
    let mut p = Pickler {
        out: vec![0x80, 2],
        storages: Vec::new(),
    };
    p.module("CLIP", &root);
    if extra_global {
        // A reference to os.system somewhere in the tree must be refused.
        p.out.pop();
        p.out.pop();
        p.string("evil");
        p.global("os", "system");
        p.out.push(b'u');
        p.out.push(b'b');
    }
    p.out.push(b'.');
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("RN_tiny/data.pkl", o).unwrap();
    z.write_all(&p.out).unwrap();
    z.start_file("RN_tiny/constants.pkl", o).unwrap();
    z.write_all(&[0x80, 2, b')', b'.']).unwrap();
    for (i, s) in p.storages.iter().enumerate() {
        z.start_file(format!("RN_tiny/data/{i}"), o).unwrap();
        z.write_all(s).unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn torchscript_archive_reads_as_the_same_state_dict_and_model() {
    let src = fixture("retrieval/clip_resnet.pt");
    let sd = smallcap::checkpoint::read_state_dict(&src, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ts = tmp.path().join("RN_tiny.pt");
    write_torchscript(&ts, &sd, false);
    let back = smallcap::checkpoint::read_state_dict(&ts, &Device::Cpu).unwrap();
    let mut a: Vec<_> = sd.keys().collect();
    let mut b: Vec<_> = back.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for (k, t) in &sd {
        let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = back[k].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(x, y, "{k}");
        assert_eq!(t.dims(), back[k].dims(), "{k}");
    }
    std::fs::copy(
        fixture("retrieval/clip_dims.json"),
        tmp.path().join("clip_dims.json"),
    )
    .unwrap();
    let e1 = RetrievalEncoder::load(src.to_str().unwrap(), &Device::Cpu).unwrap();
    let e2 = RetrievalEncoder::load(ts.to_str().unwrap(), &Device::Cpu).unwrap();
    let texts = ["a dog running on the beach", "two people riding horses"];
    assert_eq!(
        e1.encode_texts(&texts).unwrap(),
        e2.encode_texts(&texts).unwrap()
    );
    assert_eq!(e1.description(), e2.description());
}

#[test]
fn torchscript_archive_with_another_global_is_refused() {
    let src = fixture("retrieval/clip_resnet.pt");
    let sd = smallcap::checkpoint::read_state_dict(&src, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ts = tmp.path().join("evil.pt");
    write_torchscript(&ts, &sd, true);
    let e = smallcap::checkpoint::read_state_dict(&ts, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("os.system") && e.contains("evil.pt"), "{e}");
}

#[test]
fn missing_dims_file_means_build_model_heads() {
    // Without clip_dims.json, build_model's width // 64 = 0 text heads: a clear error.
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("clip.pt");
    std::fs::copy(fixture("retrieval/clip_resnet.pt"), &p).unwrap();
    let e = RetrievalEncoder::load(p.to_str().unwrap(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("heads") && e.contains("clip_dims.json"), "{e}");
}
