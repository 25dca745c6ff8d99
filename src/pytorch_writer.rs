//! Writing a state dict as `torch.save` does (the zip format of PyTorch ≥ 1.6): `archive/data.pkl`
//! (a protocol-2 pickle of an `OrderedDict` of `torch._utils._rebuild_tensor_v2` calls whose
//! storages are persistent ids), one `archive/data/N` file per storage, `archive/version` and
//! `archive/byteorder`. Tensors that are the same tensor (tied weights) share one storage, as
//! in the reference's checkpoints. Only the globals the project's restricted reader allows are
//! written.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// The storage class of a dtype.
fn storage_class(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "FloatStorage",
        DType::F64 => "DoubleStorage",
        DType::I64 => "LongStorage",
        DType::U8 => "ByteStorage",
        other => {
            return Err(Error::Input(format!(
                "cannot write {other:?} tensors to a PyTorch file"
            )))
        }
    })
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, b: u8) {
        self.0.push(b);
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn string(&mut self, s: &str) {
        self.op(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        if v < 256 {
            self.op(b'K');
            self.op(v as u8);
        } else if v < 65536 {
            self.op(b'M');
            self.0.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v < (1 << 31) {
            self.op(b'J');
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, with a zero byte so it stays positive.
            let bytes = (v as u64).to_le_bytes();
            self.op(0x8a);
            self.op(9);
            self.0.extend_from_slice(&bytes);
            self.op(0);
        }
    }
    fn tuple(&mut self, items: &[usize]) {
        self.op(b'(');
        for &i in items {
            self.int(i);
        }
        self.op(b't');
    }
}

/// Writes `tensors` (name, tensor) in this order to `path` as a PyTorch zip checkpoint.
pub fn write_state_dict(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let io = |e: std::io::Error| Error::io(path, e);
    let zerr = |e: zip::result::ZipError| Error::Input(format!("{}: {e}", path.display()));
    let mut storages: Vec<&Tensor> = Vec::new();
    let mut storage_of: HashMap<candle_core::TensorId, usize> = HashMap::new();
    let mut p = Pickle(vec![0x80, 2]);
    p.global("collections", "OrderedDict");
    p.op(b')');
    p.op(b'R');
    p.op(b'(');
    for (name, t) in tensors {
        let key = *storage_of.entry(t.id()).or_insert_with(|| {
            storages.push(t);
            storages.len() - 1
        });
        let dims = t.dims();
        let mut stride = vec![1usize; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * dims[i + 1];
        }
        p.string(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b'(');
        // Persistent id: ('storage', torch.FloatStorage, key, 'cpu', numel).
        p.op(b'(');
        p.string("storage");
        p.global("torch", storage_class(t.dtype())?);
        p.string(&key.to_string());
        p.string("cpu");
        p.int(t.elem_count());
        p.op(b't');
        p.op(b'Q');
        p.int(0);
        p.tuple(dims);
        p.tuple(&stride);
        p.op(0x89); // requires_grad = False
        p.global("collections", "OrderedDict");
        p.op(b')');
        p.op(b'R');
        p.op(b't');
        p.op(b'R');
    }
    p.op(b'u');
    p.op(b'.');

    let file = std::fs::File::create(path).map_err(io)?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    zip.start_file("archive/data.pkl", opts).map_err(zerr)?;
    zip.write_all(&p.0).map_err(io)?;
    zip.start_file("archive/byteorder", opts).map_err(zerr)?;
    zip.write_all(b"little").map_err(io)?;
    for (i, t) in storages.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), opts)
            .map_err(zerr)?;
        let t = t.flatten_all()?.to_device(&candle_core::Device::Cpu)?;
        let bytes: Vec<u8> = match t.dtype() {
            DType::F32 => t
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            DType::F64 => t
                .to_vec1::<f64>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            DType::I64 => t
                .to_vec1::<i64>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            DType::U8 => t.to_vec1::<u8>()?,
            other => return Err(Error::Input(format!("cannot write {other:?} tensors"))),
        };
        zip.write_all(&bytes).map_err(io)?;
    }
    zip.start_file("archive/version", opts).map_err(zerr)?;
    zip.write_all(b"3\n").map_err(io)?;
    let mut inner = zip.finish().map_err(zerr)?;
    inner.flush().map_err(io)?;
    inner.get_ref().sync_all().map_err(io)?;
    Ok(())
}
