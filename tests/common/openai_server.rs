//! A loopback stand-in for OpenAI's CLIP file server: serves files at the paths given
//! (`/clip/models/<sha256>/RN50x64.pt`, the layout of the URLs in `clip/clip.py`), counts
//! requests, and with `cut` set stops the next response halfway (a download cut off), once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct OpenAiServer {
    pub base: String,
    pub requests: Arc<AtomicUsize>,
    pub cut: Arc<AtomicBool>,
}

/// Serves `files` (URL path → local file) until the test process ends.
pub fn start(files: HashMap<String, PathBuf>) -> OpenAiServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let (counter, cut_next) = (requests.clone(), cut.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/");
            let Some(file) = files.get(path) else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let body = std::fs::read(file).unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let n = if cut_next.swap(false, Ordering::SeqCst) {
                body.len() / 2
            } else {
                body.len()
            };
            let _ = stream.write_all(&body[..n]);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    OpenAiServer {
        base,
        requests,
        cut,
    }
}
