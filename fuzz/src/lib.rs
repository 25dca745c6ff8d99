//! The checks the fuzz targets run, one function per parser of untrusted input (see FUZZING.md).
//! Each feeds its input to the parser as the program does (written to a file where the program
//! reads files) and fails, by panicking, where the parser misbehaves: a panic of its own, an
//! error that names neither the file nor the field, an answer that contradicts itself, or an
//! HTTP 500. Memory and time limits are libFuzzer's (`scripts/fuzz`).
//!
//! `tests/fuzz_regressions.rs` includes this file and replays every input of
//! `fuzz/regressions/<target>/` through the same function, so each finding stays fixed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use candle_core::Device;

/// Separates the parts of an input that stands for several files (the seeds show the layout).
pub const SEPARATOR: &[u8] = b"\n%%SMALLCAP-FUZZ-FILE%%\n";

/// A target's check: panics where the parser misbehaved; otherwise says whether it accepted the
/// input (`true`) or refused it (`false`, with a clear error).
pub type Check = fn(&[u8]) -> bool;

/// Every target, by name: the fuzz target and the regression folder of the same name.
pub const TARGETS: [(&str, Check); 8] = [
    ("checkpoint", checkpoint),
    ("model_load", model_load),
    ("clip_archive", clip_archive),
    ("faiss_index", faiss_index),
    ("datastore", datastore),
    ("image", image),
    ("captions", captions),
    ("http", http),
];

/// PyTorch zip checkpoints and TorchScript archives as `checkpoint::read_state_dict` reads
/// them: the zip layer, the restricted pickle reader (allowlisted globals only), TorchScript
/// module trees and the tensor storages. An input that starts like a zip is the file itself;
/// any other input is a `data.pkl`, packed as PyTorch packs one ([`torch_zip`]), so that
/// mutations reach the pickle reader instead of failing the zip's checksums.
pub fn checkpoint(data: &[u8]) -> bool {
    let dir = fresh_dir("checkpoint");
    let file = if data.starts_with(b"PK") {
        data.to_vec()
    } else {
        torch_zip(data)
    };
    let path = write(&dir, "pytorch_model.bin", &file);
    refused(
        smallcap::checkpoint::read_state_dict(&path, &Device::Cpu),
        &["pytorch_model.bin"],
    )
}

/// A checkpoint folder as `SmallCap::load_dir` reads it: `config.json` (sizes checked against
/// the tensors before anything is built from them) and the weights, as safetensors or, when the
/// part starts like a zip, a PyTorch pickle. Input: config, separator, weights.
pub fn model_load(data: &[u8]) -> bool {
    let parts = split(data, 2);
    let dir = fresh_dir("model");
    write(&dir, "config.json", parts[0]);
    let weights = if parts[1].starts_with(b"PK") {
        "pytorch_model.bin"
    } else {
        "model.safetensors"
    };
    write(&dir, weights, parts[1]);
    refused(
        smallcap::SmallCap::load_dir(&dir, &Device::Cpu),
        &["config.json", weights],
    )
}

/// OpenAI CLIP weight files as the retrieval encoder loads them: a TorchScript archive (or
/// state-dict pickle), the sizes inferred from its tensors, and an optional `clip_dims.json`
/// beside it. Input: archive, separator, clip_dims.json (absent when empty).
pub fn clip_archive(data: &[u8]) -> bool {
    use smallcap::models::clip_openai::OpenAiClip;
    let parts = split(data, 2);
    let dir = fresh_dir("clip");
    let path = write(&dir, "clip.pt", parts[0]);
    if !parts[1].is_empty() {
        write(&dir, "clip_dims.json", parts[1]);
    }
    refused(
        OpenAiClip::load(&path, &Device::Cpu, smallcap::EncoderPrecision::F32),
        &["clip.pt", "clip_dims.json"],
    )
}

/// FAISS index files (`IndexFlatIP`/`IndexFlatL2` and `IndexIVFFlat`) as the datastore reads
/// them, and a search of what was opened.
pub fn faiss_index(data: &[u8]) -> bool {
    use smallcap_datastore::faiss::FaissIndex;
    let dir = fresh_dir("faiss");
    let path = write(&dir, "datastore_index", data);
    let name = ["datastore_index"];
    let index = match FaissIndex::open(&path) {
        Ok(index) => index,
        Err(e) => return refused::<()>(Err(e), &name),
    };
    let query = vec![0.5f32; index.dim()];
    match index.search(&query, index.dim(), 4, None) {
        // A query error, about the request's k (the index holds fewer vectors), not the file.
        Err(smallcap_datastore::Error::KTooLarge { .. }) => false,
        result => refused(result, &name),
    }
}

/// The files of our datastore folder, in the order [`datastore`] takes them.
const STORE_FILES: [&str; 6] = [
    "manifest.json",
    "embeddings.bin",
    "captions.jsonl",
    "captions.idx",
    "ivf.json",
    "ivf.index",
];

/// Our datastore folder: `manifest.json`, `embeddings.bin`, `captions.jsonl`, `captions.idx`,
/// `ivf.json` and `ivf.index` (left out when empty), opened, verified, searched (exact and
/// approximate) and read back. Input: the six files in that order, separated.
pub fn datastore(data: &[u8]) -> bool {
    use smallcap_datastore::store::Datastore;
    let parts = split(data, STORE_FILES.len());
    let dir = fresh_dir("store");
    for (name, bytes) in STORE_FILES.iter().zip(&parts) {
        if !(bytes.is_empty() && name.starts_with("ivf")) {
            write(&dir, name, bytes);
        }
    }
    let store = match Datastore::open(&dir) {
        Ok(store) => store,
        Err(e) => return refused::<()>(Err(e), &STORE_FILES),
    };
    let query = vec![0.25f32; store.dim()];
    let mut accepted = refused(store.verify(), &STORE_FILES);
    accepted &= refused(store.search(&query, store.dim(), 3), &STORE_FILES);
    if store.has_ann() {
        accepted &= refused(
            store.search_approx(&query, store.dim(), 3, None),
            &STORE_FILES,
        );
    }
    for i in 0..store.len().min(4) {
        accepted &= refused(store.caption(i), &STORE_FILES);
    }
    accepted
}

/// Larger images are decoded by the program but skipped by [`image`]: valid, only slow.
const DECODE_PIXELS: u64 = 1 << 22;

/// Uploaded images: format sniffing, the header-only size check (the pixel limit is enforced
/// before any pixel buffer exists), every decoder, and the conversions that follow (`to_rgb`,
/// CLIPFeatureExtractor at 224 px, `clip._transform`).
pub fn image(data: &[u8]) -> bool {
    use smallcap_image::{clip_feature_extractor, clip_transform, decode, image_size, MAX_PIXELS};
    let name = "upload.img";
    let (w, h) = match image_size(data, name) {
        Ok(size) => size,
        Err(e) => return refused::<()>(Err(e), &[name]),
    };
    let pixels = u64::from(w) * u64::from(h);
    assert!(
        pixels > 0 && pixels <= MAX_PIXELS,
        "{w}x{h} passed the size check"
    );
    if pixels > DECODE_PIXELS {
        return true;
    }
    match decode(data, name) {
        Ok(img) => {
            assert_eq!(
                (img.width(), img.height()),
                (w, h),
                "header and pixels disagree"
            );
            let rgb = img.to_rgb();
            assert_eq!(clip_feature_extractor(&rgb, 224).len(), 3 * 224 * 224);
            assert_eq!(clip_transform(&img, 32).len(), 3 * 32 * 32);
            true
        }
        Err(e) => refused::<()>(Err(e), &[name]),
    }
}

/// Caption files from strangers: a datastore's captions in each format (text, JSON list, COCO,
/// Karpathy, detected), `retrieved_caps_*.json`, the Karpathy split file `train` reads, and the
/// COCO gold and prediction files `eval` reads.
pub fn captions(data: &[u8]) -> bool {
    use smallcap_datastore::captions::{read_captions, CaptionFormat};
    let dir = fresh_dir("captions");
    let path = write(&dir, "captions.json", data);
    let name = ["captions.json"];
    let mut accepted = true;
    for format in [
        None,
        Some(CaptionFormat::Text),
        Some(CaptionFormat::JsonList),
        Some(CaptionFormat::Coco),
        Some(CaptionFormat::Karpathy),
    ] {
        accepted &= refused(read_captions(&path, format), &name);
    }
    match smallcap::retrieved::RetrievedCaptions::from_file(&path) {
        Ok(r) => {
            let _ = r.lookup(Path::new("COCO_val2014_000000000042.jpg"));
        }
        Err(e) => accepted &= refused::<()>(Err(e), &name),
    }
    match smallcap::train::dataset::Annotations::from_file(&path) {
        Ok(a) => {
            let _ = a.samples(&["train", "restval"]);
        }
        Err(e) => accepted &= refused::<()>(Err(e), &name),
    }
    accepted &= refused(smallcap_metrics::coco::load_gold(&path), &name);
    accepted &= refused(smallcap_metrics::coco::load_predictions(&path), &name);
    accepted
}

/// The fixture the HTTP server loads (this file is built from fuzz/ and from the repository root).
fn fixture() -> String {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    [Some(here), here.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("tests/fixtures/smallcap-tiny"))
        .find(|d| d.is_dir())
        .expect("the fixture folder tests/fixtures/smallcap-tiny")
        .display()
        .to_string()
}

/// `smallcap serve` as a client on the network meets it: raw bytes on a TCP connection to a
/// server (started once per process) with the fixture model, its FAISS datastore and retrieval
/// encoder. Covers HTTP parsing, the routes, multipart and raw-image bodies, JSON bodies, query
/// strings and headers. A response with status 500, or a panic in a server thread (libFuzzer's
/// panic hook turns it into a crash), is a finding.
pub fn http(data: &[u8]) -> bool {
    let mut conn = TcpStream::connect(server()).expect("the server accepts connections");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // The server may answer (e.g. 413) and close before it has read everything.
    let _ = conn.write_all(data);
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut response = Vec::new();
    let _ = conn.read_to_end(&mut response);
    // The first response's status line (later pipelined ones are not delimited here).
    let status = response.strip_prefix(b"HTTP/1.1 ").and_then(|r| r.get(..3));
    assert!(
        status != Some(b"500"),
        "status 500 for this request:\n{}",
        String::from_utf8_lossy(&response)
    );
    status.is_some_and(|s| s.starts_with(b"2"))
}

fn server() -> SocketAddr {
    use smallcap::server::{Server, ServerConfig};
    use smallcap::{Pipeline, PipelineOptions};
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let config = ServerConfig {
            max_body_bytes: 1 << 20,
            max_new_tokens: 8,
            max_beams: 3,
            max_k: 8,
            request_timeout: Duration::from_secs(20),
            ..ServerConfig::default()
        };
        let fixture = fixture();
        let server = Server::start(listener, config, move || {
            Ok(Pipeline::load(&PipelineOptions {
                tokenizer: Some(format!("{fixture}/tokenizer")),
                datastores: vec![format!(
                    "coco={fixture}/retrieval/datastore_index,captions={fixture}/retrieval/datastore_captions.json"
                )],
                retrieval_encoder: Some(format!("{fixture}/retrieval/clip_resnet.pt")),
                ..PipelineOptions::new(format!("{fixture}/model"))
            })?)
        })
        .expect("the server starts");
        server.wait_ready().expect("the fixture model loads");
        let addr = server.addr();
        // Serves until the process ends.
        std::mem::forget(server);
        addr
    })
}

/// Storages [`torch_zip`] packs beside a pickle: `archive/data/0` to `archive/data/15`.
const STORAGES: usize = 16;
/// Bytes of each of those storages.
const STORAGE_BYTES: usize = 1024;

/// A PyTorch zip checkpoint (as `torch.save` writes it, entries stored uncompressed) holding
/// `pickle` as `archive/data.pkl` and storages `archive/data/0`..`15` of 1 KiB each, filled
/// with the bytes 0, 1, 2, ...
pub fn torch_zip(pickle: &[u8]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    out.start_file("archive/data.pkl", stored).unwrap();
    out.write_all(pickle).unwrap();
    let storage: Vec<u8> = (0..STORAGE_BYTES).map(|i| i as u8).collect();
    for key in 0..STORAGES {
        out.start_file(format!("archive/data/{key}"), stored)
            .unwrap();
        out.write_all(&storage).unwrap();
    }
    out.finish().unwrap().into_inner()
}

/// Splits `data` at [`SEPARATOR`] into exactly `n` parts (missing parts are empty; the last part
/// keeps any further separators).
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = data;
    while parts.len() + 1 < n {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts.resize(n, &[]);
    parts
}

/// This process's scratch folder, in `$SMALLCAP_FUZZ_TMP` or the temporary folder (left for the
/// OS's tmp cleaning: a fuzzer process ends by abort as often as by exit).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("SMALLCAP_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        tempfile::Builder::new()
            .prefix("smallcap-fuzz-")
            .tempdir_in(base)
            .expect("a scratch folder")
            .keep()
    })
}

/// A fresh, empty folder `name` in the scratch folder.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder writable");
    dir
}

/// Writes `bytes` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("scratch folder writable");
    path
}

/// True for `Ok`; for `Err`, checks that the error names the file it refuses (one of `names`)
/// and gives false.
fn refused<T>(result: Result<T, impl std::fmt::Display>, names: &[&str]) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => {
            let message = e.to_string();
            assert!(
                names.iter().any(|n| message.contains(n)),
                "the error names none of {names:?}: {message}"
            );
            false
        }
    }
}
