//! A minimal Hugging Face hub stand-in on loopback: serves files at
//! `/{repo}/resolve/{revision}/{file}` with the headers hf-hub reads (`etag`, `x-repo-commit`,
//! `Content-Range` for ranged requests), and counts requests. Naming a file in `cut` makes the
//! next download of it stop halfway (a download cut off), once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct HubServer {
    pub endpoint: String,
    pub requests: Arc<AtomicUsize>,
    pub cut: Arc<Mutex<Option<String>>>,
}

/// Serves `files` (repo id → file name → local path) until the test process ends.
pub fn start(files: HashMap<String, HashMap<String, PathBuf>>) -> HubServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let cut = Arc::new(Mutex::new(None::<String>));
    let cut_next = cut.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("range: bytes=") {
                    let v = v.trim();
                    let (a, b) = v.split_once('-').unwrap();
                    range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().ok()));
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_string();
            let requested = path
                .split_once("/resolve/")
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(_, file)| file.to_string());
            let found = path.split_once("/resolve/").and_then(|(repo, rest)| {
                let (_rev, file) = rest.split_once('/')?;
                files.get(repo.trim_start_matches('/'))?.get(file).cloned()
            });
            let Some(file) = found else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let mut data = Vec::new();
            std::fs::File::open(&file)
                .unwrap()
                .read_to_end(&mut data)
                .unwrap();
            let size = data.len() as u64;
            let etag = format!("\"{:016x}{}\"", size, file.file_name().unwrap().len());
            let (status, body, extra) = match range {
                Some((a, b)) => {
                    let b = b.unwrap_or(size - 1).min(size - 1);
                    (
                        "206 Partial Content",
                        data[a as usize..=b as usize].to_vec(),
                        format!("Content-Range: bytes {a}-{b}/{size}\r\n"),
                    )
                }
                None => ("200 OK", data, String::new()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\netag: {etag}\r\nx-repo-commit: 0123456789abcdef0123456789abcdef01234567\r\n{extra}Connection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let mut cut_file = cut_next.lock().unwrap();
            let is_cut = request_line.starts_with("GET")
                && body.len() > 1
                && cut_file.is_some()
                && *cut_file == requested;
            if is_cut {
                *cut_file = None;
                drop(cut_file);
                let _ = stream.write_all(&body[..body.len() / 2]);
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            let _ = stream.write_all(&body);
        }
    });
    HubServer {
        endpoint,
        requests,
        cut,
    }
}

/// The fixture pack as two hub repositories: `test-org/smallcap-tiny` (config + pickle weights,
/// and the FAISS datastore as the hub publishes them: `datastore_index` with
/// `datastore_index_captions.json`) and `gpt2` (the BPE files).
pub fn fixture_repos() -> HashMap<String, HashMap<String, PathBuf>> {
    let f = super::fixture;
    HashMap::from([
        (
            "test-org/smallcap-tiny".to_string(),
            HashMap::from([
                ("config.json".to_string(), f("model/config.json")),
                (
                    "pytorch_model.bin".to_string(),
                    f("model/pytorch_model.bin"),
                ),
                (
                    "datastore_index".to_string(),
                    f("retrieval/datastore_index"),
                ),
                (
                    "datastore_index_captions.json".to_string(),
                    f("retrieval/datastore_captions.json"),
                ),
            ]),
        ),
        (
            "gpt2".to_string(),
            HashMap::from([
                ("vocab.json".to_string(), f("tokenizer/vocab.json")),
                ("merges.txt".to_string(), f("tokenizer/merges.txt")),
            ]),
        ),
    ])
}
