//! FAISS index files: reading `IndexFlatIP` ("IxFI") and `IndexIVFFlat` ("IwFl") files by
//! memory-mapping them (the vectors are never copied as a whole), and writing both so that
//! `faiss.read_index` reads them.
//!
//! Layout (FAISS `impl/index_write.cpp`, little-endian, no padding):
//! * index header: `d: i32, ntotal: i64, dummy: i64, dummy: i64, is_trained: u8, metric_type: i32`
//!   (+ `metric_arg: f32` when `metric_type > 1`);
//! * flat: fourcc, header, `u64` element count (= `d·ntotal`), the `f32` elements (at byte 45);
//! * IVF-flat: fourcc "IwFl", header, `nlist: u64, nprobe: u64`, the nested quantizer index (a flat
//!   index with `ntotal = nlist` centroids), the direct map (`type: u8`, `u64` count + `i64`s, and
//!   for type 2 a `u64` count + `(i64, i64)` pairs), then the inverted lists "ilar":
//!   `nlist: u64, code_size: u64`, "full" + `u64` count + `nlist` sizes, or "sprs" + `u64` count +
//!   `(list, size)` pairs, then for each non-empty list its `size·code_size` code bytes followed by
//!   its `size` `i64` ids.

use crate::error::{Error, Result};
use crate::fsutil::{mmap_file, write_all, write_atomic};
use crate::search::{Dtype, VectorSet};
use memmap2::Mmap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// FAISS metric of an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// `METRIC_INNER_PRODUCT` (0): larger is closer.
    InnerProduct,
    /// `METRIC_L2` (1): squared Euclidean distance, smaller is closer.
    L2,
}

impl Metric {
    fn code(self) -> i32 {
        match self {
            Metric::InnerProduct => 0,
            Metric::L2 => 1,
        }
    }
}

/// Size of the flat-index preamble before the floats: fourcc + header + element count.
pub const FLAT_DATA_OFFSET: usize = 45;
const MAX_DIM: usize = 1 << 20;

fn fourcc(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

fn fourcc_str(h: u32) -> String {
    h.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

/// A bounds-checked little-endian reader over a mapped file.
struct Cur<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(Error::format(
                self.path,
                format!(
                    "truncated file: {what} needs {n} bytes at offset {} but the file has {} bytes",
                    self.pos,
                    self.buf.len()
                ),
            )),
        }
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.arr::<1>(what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.arr(what)?))
    }
    fn i64(&mut self, what: &str) -> Result<i64> {
        Ok(i64::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.path, msg)
    }
    /// A `u64` count of `elem`-byte items that must fit in the rest of the file.
    fn count(&mut self, elem: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.checked_mul(elem as u64).is_none_or(|b| b > left) {
            return Err(self.err(format!(
                "truncated file: {what} at offset {at} announces {n} items of {elem} bytes, \
                 but only {left} bytes follow"
            )));
        }
        Ok(n as usize)
    }
}

/// The fields of FAISS's common index header.
#[derive(Clone, Copy, Debug)]
struct Header {
    d: usize,
    ntotal: usize,
    metric: Metric,
}

fn read_header(cur: &mut Cur<'_>, what: &str) -> Result<Header> {
    let d = cur.i32(&format!("{what} d"))?;
    if d <= 0 || d as usize > MAX_DIM {
        return Err(cur.err(format!(
            "{what}: invalid dimension d = {d} (must be 1..={MAX_DIM})"
        )));
    }
    let ntotal = cur.i64(&format!("{what} ntotal"))?;
    if ntotal < 0 {
        return Err(cur.err(format!("{what}: invalid ntotal = {ntotal} (must be >= 0)")));
    }
    cur.i64(&format!("{what} dummy"))?;
    cur.i64(&format!("{what} dummy"))?;
    let trained = cur.u8(&format!("{what} is_trained"))?;
    if trained > 1 {
        return Err(cur.err(format!(
            "{what}: invalid is_trained byte {trained} (must be 0 or 1)"
        )));
    }
    let m = cur.i32(&format!("{what} metric_type"))?;
    let metric = match m {
        0 => Metric::InnerProduct,
        1 => Metric::L2,
        _ => {
            return Err(cur.err(format!(
                "{what}: metric_type {m} is not supported (0 = inner product, 1 = L2)"
            )))
        }
    };
    Ok(Header {
        d: d as usize,
        ntotal: ntotal as usize,
        metric,
    })
}

/// Where a flat index's floats lie in a mapped file.
#[derive(Clone, Copy, Debug)]
struct FlatPart {
    d: usize,
    ntotal: usize,
    metric: Metric,
    offset: usize,
}

/// Reads a flat index (any of IxFI / IxF2 / IxFl) at the cursor, fourcc included.
fn read_flat_part(cur: &mut Cur<'_>, what: &str) -> Result<FlatPart> {
    let at = cur.pos;
    let h = cur.u32(&format!("{what} fourcc"))?;
    let expect_metric = if h == fourcc(b"IxFI") {
        Some(Metric::InnerProduct)
    } else if h == fourcc(b"IxF2") {
        Some(Metric::L2)
    } else if h == fourcc(b"IxFl") {
        None
    } else {
        return Err(cur.err(format!(
            "{what}: wrong magic \"{}\" at offset {at}, expected a flat index (\"IxFI\", \"IxF2\" or \"IxFl\")",
            fourcc_str(h)
        )));
    };
    let hd = read_header(cur, what)?;
    if let Some(m) = expect_metric {
        if m != hd.metric {
            return Err(cur.err(format!(
                "{what}: fourcc \"{}\" disagrees with metric_type {:?}",
                fourcc_str(h),
                hd.metric
            )));
        }
    }
    let n = cur.u64(&format!("{what} vector count"))?;
    let expect = (hd.d as u64) * (hd.ntotal as u64);
    if n != expect {
        return Err(cur.err(format!(
            "{what}: stores {n} floats but d·ntotal = {}·{} = {expect}",
            hd.d, hd.ntotal
        )));
    }
    let offset = cur.pos;
    let bytes = (expect as usize)
        .checked_mul(4)
        .ok_or_else(|| cur.err("size overflow"))?;
    if cur.buf.len() - offset < bytes {
        return Err(cur.err(format!(
            "truncated file: {what} with d = {} and ntotal = {} needs {bytes} bytes of floats at \
             offset {offset}, the file has only {} bytes there",
            hd.d,
            hd.ntotal,
            cur.buf.len() - offset
        )));
    }
    cur.pos += bytes;
    Ok(FlatPart {
        d: hd.d,
        ntotal: hd.ntotal,
        metric: hd.metric,
        offset,
    })
}

fn check_end(cur: &Cur<'_>, what: &str) -> Result<()> {
    if cur.pos != cur.buf.len() {
        return Err(cur.err(format!(
            "file size {} disagrees with the {what} it holds ({} bytes); trailing bytes",
            cur.buf.len(),
            cur.pos
        )));
    }
    Ok(())
}

fn bytes_of(map: &Option<Mmap>) -> &[u8] {
    map.as_deref().unwrap_or(&[])
}

/// A memory-mapped FAISS `IndexFlatIP` file.
#[derive(Debug)]
pub struct FlatIndex {
    path: PathBuf,
    map: Option<Mmap>,
    part: FlatPart,
}

impl FlatIndex {
    /// Opens and validates an `IndexFlatIP` file (O(1): only the header is read).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let map = mmap_file(path)?;
        let buf = bytes_of(&map);
        if buf.is_empty() {
            return Err(Error::Empty { path: path.into() });
        }
        let mut cur = Cur { buf, pos: 0, path };
        let h = cur.u32("fourcc")?;
        if h == fourcc(b"IwFl") {
            return Err(cur.err(
                "is an IVF-flat index (\"IwFl\"), not a flat one; open it with FaissIndex::open",
            ));
        }
        cur.pos = 0;
        let part = read_flat_part(&mut cur, "flat index")?;
        if part.metric != Metric::InnerProduct {
            return Err(cur.err(format!(
                "metric is {:?}, not inner product: a SmallCap datastore is an IndexFlatIP",
                part.metric
            )));
        }
        check_end(&cur, "flat index")?;
        Ok(FlatIndex {
            path: path.into(),
            map,
            part,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.part.d
    }
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.part.ntotal
    }
    /// True when the index holds no vectors.
    pub fn is_empty(&self) -> bool {
        self.part.ntotal == 0
    }
    /// The stored vectors, viewed in place (unaligned little-endian f32).
    pub fn vectors(&self) -> VectorSet<'_> {
        flat_vectors(bytes_of(&self.map), &self.part)
    }
}

fn flat_vectors<'a>(buf: &'a [u8], p: &FlatPart) -> VectorSet<'a> {
    let bytes = &buf[p.offset..p.offset + p.d * p.ntotal * 4];
    VectorSet::from_le_bytes(bytes, p.d, Dtype::F32).expect("validated at open")
}

fn write_header(
    w: &mut impl Write,
    path: &Path,
    d: usize,
    ntotal: usize,
    metric: Metric,
) -> Result<()> {
    if d == 0 || d > MAX_DIM {
        return Err(Error::Invalid(format!(
            "dimension {d} not in 1..={MAX_DIM}"
        )));
    }
    write_all(w, path, &(d as i32).to_le_bytes())?;
    write_all(w, path, &(ntotal as i64).to_le_bytes())?;
    write_all(w, path, &(1i64 << 20).to_le_bytes())?;
    write_all(w, path, &(1i64 << 20).to_le_bytes())?;
    write_all(w, path, &[1u8])?;
    write_all(w, path, &metric.code().to_le_bytes())
}

fn write_flat_part(
    w: &mut impl Write,
    path: &Path,
    set: &VectorSet<'_>,
    metric: Metric,
) -> Result<()> {
    let magic = match metric {
        Metric::InnerProduct => b"IxFI",
        Metric::L2 => b"IxF2",
    };
    write_all(w, path, magic)?;
    write_header(w, path, set.dim(), set.len(), metric)?;
    write_all(w, path, &((set.dim() * set.len()) as u64).to_le_bytes())?;
    write_f32_rows(w, path, set)
}

fn write_f32_rows(w: &mut impl Write, path: &Path, set: &VectorSet<'_>) -> Result<()> {
    let mut bytes = Vec::new();
    set.for_each_chunk(|_, rows| {
        bytes.clear();
        bytes.extend(rows.iter().flat_map(|x| x.to_le_bytes()));
        write_all(w, path, &bytes)
    })
}

/// Writes `set` as a FAISS `IndexFlatIP` file (atomically: temp file + rename). f16 sets are
/// widened to f32, as FAISS flat indexes store f32.
pub fn write_flat_ip(path: impl AsRef<Path>, set: &VectorSet<'_>) -> Result<()> {
    let path = path.as_ref();
    write_atomic(path, |w| {
        write_flat_part(w, path, set, Metric::InnerProduct)
    })
}

/// Streams rows into a new FAISS `IndexFlatIP` file without holding them in memory: the file is
/// written as `<path>.partial` and renamed into place by [`FlatIpWriter::finish`] once exactly
/// `ntotal` rows were pushed (dropping the writer unfinished removes the temporary file).
pub struct FlatIpWriter {
    path: PathBuf,
    tmp: PathBuf,
    w: Option<std::io::BufWriter<std::fs::File>>,
    d: usize,
    ntotal: usize,
    rows: usize,
}

impl FlatIpWriter {
    /// Starts a file for `ntotal` rows of dimension `d`.
    pub fn create(path: impl AsRef<Path>, d: usize, ntotal: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let tmp = crate::fsutil::with_suffix(&path, ".partial");
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        write_all(&mut w, &tmp, b"IxFI")?;
        write_header(&mut w, &tmp, d, ntotal, Metric::InnerProduct)?;
        write_all(&mut w, &tmp, &((d * ntotal) as u64).to_le_bytes())?;
        Ok(FlatIpWriter {
            path,
            tmp,
            w: Some(w),
            d,
            ntotal,
            rows: 0,
        })
    }

    /// Appends whole rows.
    pub fn push(&mut self, rows: &[f32]) -> Result<()> {
        if !rows.len().is_multiple_of(self.d) || self.rows + rows.len() / self.d > self.ntotal {
            return Err(Error::Invalid(format!(
                "{} values are not whole {}-dimensional rows within the announced {} rows",
                rows.len(),
                self.d,
                self.ntotal
            )));
        }
        let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
        write_all(
            self.w.as_mut().expect("open until finish"),
            &self.tmp,
            &bytes,
        )?;
        self.rows += rows.len() / self.d;
        Ok(())
    }

    /// Checks the row count, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        if self.rows != self.ntotal {
            return Err(Error::Invalid(format!(
                "{} rows written, {} announced",
                self.rows, self.ntotal
            )));
        }
        let w = self.w.take().expect("open until finish");
        let f = w
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for FlatIpWriter {
    fn drop(&mut self) {
        if self.w.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// One inverted list: `n` entries whose codes (f32 vectors) and ids lie at these byte offsets.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InvList {
    pub(crate) n: usize,
    pub(crate) codes: usize,
    pub(crate) ids: usize,
}

/// A memory-mapped FAISS `IndexIVFFlat` file.
#[derive(Debug)]
pub struct IvfFlatIndex {
    path: PathBuf,
    map: Option<Mmap>,
    header_d: usize,
    ntotal: usize,
    metric: Metric,
    nprobe: usize,
    quantizer: FlatPart,
    lists: Vec<InvList>,
}

impl IvfFlatIndex {
    fn parse(path: &Path, map: Option<Mmap>) -> Result<Self> {
        let buf = bytes_of(&map);
        let mut cur = Cur { buf, pos: 0, path };
        let h = cur.u32("fourcc")?;
        if h != fourcc(b"IwFl") {
            return Err(cur.err(format!(
                "wrong magic \"{}\", expected \"IwFl\" (IndexIVFFlat)",
                fourcc_str(h)
            )));
        }
        let hd = read_header(&mut cur, "IVF index")?;
        let nlist = cur.u64("nlist")? as usize;
        if nlist == 0 {
            return Err(cur.err("IVF index: nlist = 0"));
        }
        let nprobe = cur.u64("nprobe")? as usize;
        let quantizer = read_flat_part(&mut cur, "IVF quantizer")?;
        if quantizer.d != hd.d {
            return Err(Error::DimensionMismatch {
                what: format!("{}: IVF quantizer", path.display()),
                expected: hd.d,
                found: quantizer.d,
            });
        }
        if quantizer.ntotal != nlist {
            return Err(cur.err(format!(
                "IVF quantizer holds {} centroids but nlist = {nlist}",
                quantizer.ntotal
            )));
        }
        skip_direct_map(&mut cur)?;
        let il = cur.u32("inverted lists fourcc")?;
        if il != fourcc(b"ilar") {
            return Err(cur.err(format!(
                "inverted lists \"{}\" not supported (only in-file \"ilar\" lists)",
                fourcc_str(il)
            )));
        }
        let il_nlist = cur.u64("inverted lists nlist")? as usize;
        if il_nlist != nlist {
            return Err(cur.err(format!(
                "inverted lists hold {il_nlist} lists but the IVF header says nlist = {nlist}"
            )));
        }
        let code_size = cur.u64("code_size")? as usize;
        if code_size != hd.d * 4 {
            return Err(cur.err(format!(
                "code_size {code_size} is not 4·d = {} (IVF-flat stores f32 vectors)",
                hd.d * 4
            )));
        }
        let sizes = read_list_sizes(&mut cur, nlist)?;
        let (lists, total) = read_lists(&mut cur, &sizes, code_size)?;
        if total != hd.ntotal {
            return Err(cur.err(format!(
                "inverted lists hold {total} entries but ntotal = {}",
                hd.ntotal
            )));
        }
        check_end(&cur, "IVF index")?;
        Ok(IvfFlatIndex {
            path: path.into(),
            map,
            header_d: hd.d,
            ntotal: hd.ntotal,
            metric: hd.metric,
            nprobe,
            quantizer,
            lists,
        })
    }

    /// Opens and validates an `IndexIVFFlat` file (reads the header and list table only).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let map = mmap_file(path)?;
        if map.is_none() {
            return Err(Error::Empty { path: path.into() });
        }
        Self::parse(path, map)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.header_d
    }
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.ntotal
    }
    /// True when the index holds no vectors.
    pub fn is_empty(&self) -> bool {
        self.ntotal == 0
    }
    /// Metric of the index (the scan).
    pub fn metric(&self) -> Metric {
        self.metric
    }
    /// Metric of the coarse quantizer.
    pub fn quantizer_metric(&self) -> Metric {
        self.quantizer.metric
    }
    /// Number of inverted lists.
    pub fn nlist(&self) -> usize {
        self.lists.len()
    }
    /// The `nprobe` stored in the file (FAISS's default for searches).
    pub fn nprobe(&self) -> usize {
        self.nprobe
    }
    /// The centroids (`nlist × d`).
    pub fn centroids(&self) -> VectorSet<'_> {
        flat_vectors(bytes_of(&self.map), &self.quantizer)
    }
    pub(crate) fn lists(&self) -> &[InvList] {
        &self.lists
    }
    pub(crate) fn bytes(&self) -> &[u8] {
        bytes_of(&self.map)
    }
}

/// Writes an `IndexIVFFlat` file that FAISS reads: `centroids` (`nlist × d`) become the flat
/// quantizer (metric `quantizer_metric`), vector `i` of `vectors` gets id `i` and goes to list
/// `assign[i]`. The index metric is inner product; the direct map is empty.
pub fn write_ivf_flat(
    path: impl AsRef<Path>,
    centroids: &VectorSet<'_>,
    quantizer_metric: Metric,
    vectors: &VectorSet<'_>,
    assign: &[usize],
    nprobe: usize,
) -> Result<()> {
    let path = path.as_ref();
    let (d, nlist) = (vectors.dim(), centroids.len());
    if centroids.dim() != d {
        return Err(Error::DimensionMismatch {
            what: "IVF centroids".into(),
            expected: d,
            found: centroids.dim(),
        });
    }
    if assign.len() != vectors.len() {
        return Err(Error::Invalid(format!(
            "{} list assignments for {} vectors",
            assign.len(),
            vectors.len()
        )));
    }
    if nlist == 0 {
        return Err(Error::Invalid(
            "an IVF index needs at least one centroid".into(),
        ));
    }
    let mut members = vec![Vec::<usize>::new(); nlist];
    for (i, &l) in assign.iter().enumerate() {
        if l >= nlist {
            return Err(Error::Invalid(format!(
                "vector {i} assigned to list {l} >= nlist = {nlist}"
            )));
        }
        members[l].push(i);
    }
    write_atomic(path, |w| {
        write_all(w, path, b"IwFl")?;
        write_header(w, path, d, vectors.len(), Metric::InnerProduct)?;
        write_all(w, path, &(nlist as u64).to_le_bytes())?;
        write_all(w, path, &(nprobe as u64).to_le_bytes())?;
        write_flat_part(w, path, centroids, quantizer_metric)?;
        write_all(w, path, &[0u8])?; // direct map: none
        write_all(w, path, &0u64.to_le_bytes())?;
        write_all(w, path, b"ilar")?;
        write_all(w, path, &(nlist as u64).to_le_bytes())?;
        write_all(w, path, &((d * 4) as u64).to_le_bytes())?;
        let non_empty = members.iter().filter(|m| !m.is_empty()).count();
        if non_empty > nlist / 2 {
            write_all(w, path, b"full")?;
            write_all(w, path, &(nlist as u64).to_le_bytes())?;
            for m in &members {
                write_all(w, path, &(m.len() as u64).to_le_bytes())?;
            }
        } else {
            write_all(w, path, b"sprs")?;
            write_all(w, path, &((2 * non_empty) as u64).to_le_bytes())?;
            for (l, m) in members.iter().enumerate().filter(|(_, m)| !m.is_empty()) {
                write_all(w, path, &(l as u64).to_le_bytes())?;
                write_all(w, path, &(m.len() as u64).to_le_bytes())?;
            }
        }
        let mut buf = Vec::new();
        let mut conv = Vec::new();
        for m in members.iter().filter(|m| !m.is_empty()) {
            buf.clear();
            for &i in m {
                match vectors.dtype() {
                    Dtype::F32 => buf.extend_from_slice(vectors.raw_rows(i, i + 1)),
                    Dtype::F16 => vectors.with_rows(i, i + 1, &mut conv, |r| {
                        buf.extend(r.iter().flat_map(|x| x.to_le_bytes()))
                    }),
                }
                if buf.len() >= 8 << 20 {
                    write_all(w, path, &buf)?;
                    buf.clear();
                }
            }
            write_all(w, path, &buf)?;
            buf.clear();
            buf.extend(m.iter().flat_map(|&i| (i as i64).to_le_bytes()));
            write_all(w, path, &buf)?;
        }
        Ok(())
    })
}

/// Any FAISS index this crate reads.
#[derive(Debug)]
pub enum FaissIndex {
    /// `IndexFlatIP`.
    Flat(FlatIndex),
    /// `IndexIVFFlat`.
    IvfFlat(IvfFlatIndex),
}

impl FaissIndex {
    /// Opens a FAISS index file, dispatching on its fourcc.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let map = mmap_file(path)?;
        let buf = bytes_of(&map);
        if buf.is_empty() {
            return Err(Error::Empty { path: path.into() });
        }
        if buf.len() >= 4 && buf[..4] == *b"IwFl" {
            return IvfFlatIndex::parse(path, map).map(FaissIndex::IvfFlat);
        }
        drop(map);
        FlatIndex::open(path).map(FaissIndex::Flat)
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        match self {
            FaissIndex::Flat(f) => f.dim(),
            FaissIndex::IvfFlat(f) => f.dim(),
        }
    }
    /// Number of vectors.
    pub fn len(&self) -> usize {
        match self {
            FaissIndex::Flat(f) => f.len(),
            FaissIndex::IvfFlat(f) => f.len(),
        }
    }
    /// True when the index holds no vectors.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Searches the index as FAISS would: exact top-k for a flat index; for IVF-flat, the
    /// `nprobe` nearest lists (the file's `nprobe` when `None`). See [`crate::search::top_k`]
    /// and [`crate::ivf::search`].
    pub fn search(
        &self,
        queries: &[f32],
        query_dim: usize,
        k: usize,
        nprobe: Option<usize>,
    ) -> Result<Vec<Vec<(i64, f32)>>> {
        match self {
            FaissIndex::Flat(f) => crate::search::top_k(&f.vectors(), queries, query_dim, k),
            FaissIndex::IvfFlat(f) => {
                // FAISS writes whatever nprobe the index held; 0 cannot search (FAISS throws too).
                if nprobe.is_none() && f.nprobe() == 0 {
                    return Err(Error::format(
                        f.path(),
                        "the file's nprobe is 0: pass an nprobe of at least 1",
                    ));
                }
                crate::ivf::search(f, queries, query_dim, k, nprobe.unwrap_or(f.nprobe()))
            }
        }
    }
}

/// Skips an IVF index's direct map (its type, array and, for type 2, hashtable): search does not
/// use it.
fn skip_direct_map(cur: &mut Cur<'_>) -> Result<()> {
    let dm = cur.u8("direct map type")?;
    if dm > 2 {
        return Err(cur.err(format!("invalid direct map type {dm} (0, 1 or 2)")));
    }
    let n = cur.count(8, "direct map array")?;
    cur.take(n * 8, "direct map array")?;
    if dm == 2 {
        let n = cur.count(16, "direct map hashtable")?;
        cur.take(n * 16, "direct map hashtable")?;
    }
    Ok(())
}

/// The inverted lists' sizes, from a full (`full`) or sparse (`sprs`) size table.
fn read_list_sizes(cur: &mut Cur<'_>, nlist: usize) -> Result<Vec<usize>> {
    let mut sizes = vec![0usize; nlist];
    let lt = cur.u32("list type")?;
    if lt == fourcc(b"full") {
        let n = cur.count(8, "list sizes")?;
        if n != nlist {
            return Err(cur.err(format!("{n} list sizes for nlist = {nlist}")));
        }
        for s in sizes.iter_mut() {
            *s = cur.u64("list size")? as usize;
        }
    } else if lt == fourcc(b"sprs") {
        let n = cur.count(8, "sparse list sizes")?;
        if n % 2 != 0 {
            return Err(cur.err(format!("sparse size table has odd length {n}")));
        }
        for _ in 0..n / 2 {
            let l = cur.u64("list number")? as usize;
            let s = cur.u64("list size")? as usize;
            if l >= nlist {
                return Err(cur.err(format!("list number {l} >= nlist = {nlist}")));
            }
            sizes[l] = s;
        }
    } else {
        return Err(cur.err(format!("unknown list type \"{}\"", fourcc_str(lt))));
    }
    Ok(sizes)
}

/// Where each inverted list's codes and ids lie (ids checked non-negative), and the total count.
fn read_lists(
    cur: &mut Cur<'_>,
    sizes: &[usize],
    code_size: usize,
) -> Result<(Vec<InvList>, usize)> {
    let mut total = 0usize;
    let mut lists = Vec::with_capacity(sizes.len());
    for (i, &n) in sizes.iter().enumerate() {
        let mut l = InvList {
            n,
            ..Default::default()
        };
        if n > 0 {
            let what = format!("inverted list {i}");
            let cb = n
                .checked_mul(code_size)
                .ok_or_else(|| cur.err("size overflow"))?;
            l.codes = cur.pos;
            cur.take(cb, &what)?;
            l.ids = cur.pos;
            let ids = cur.take(
                n.checked_mul(8).ok_or_else(|| cur.err("size overflow"))?,
                &what,
            )?;
            for b in ids.chunks_exact(8) {
                let id = i64::from_le_bytes(b.try_into().expect("8 bytes"));
                if id < 0 {
                    return Err(cur.err(format!("{what} holds a negative id {id}")));
                }
            }
        }
        total += n;
        lists.push(l);
    }
    Ok((lists, total))
}
