//! OpenAI CLIP checkpoints by name (`RN50x64`, `ViT-B/32`, …), fetched as `clip.load` fetches
//! them: from the URLs of OpenAI CLIP's `clip/clip.py` `_MODELS` into `~/.cache/clip` (or
//! `$SMALLCAP_CLIP_CACHE`) under the URL's file name, the SHA256 checked against the one the URL
//! carries (its second-to-last path segment) whenever the file is used, as `clip._download`
//! does. A download goes to a temporary file that becomes the cached file only once its SHA256
//! is right, so a partial or corrupt download is never used (and a bad one is removed). With
//! `HF_HUB_OFFLINE` set, only the cache is used.
//!
//! For mirrors and air-gapped sites, `$SMALLCAP_CLIP_MODELS` names a JSON file mapping names to
//! other URLs in the same layout (`{"RN50x64": "http://mirror/clip/models/<sha256>/RN50x64.pt"}`);
//! names it lacks keep OpenAI's URLs.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// OpenAI CLIP's `_MODELS`: every name `clip.load` accepts, and where its file is published.
pub const OPENAI_MODELS: [(&str, &str); 9] = [
    ("RN50", "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt"),
    ("RN101", "https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt"),
    ("RN50x4", "https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt"),
    ("RN50x16", "https://openaipublic.azureedge.net/clip/models/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt"),
    ("RN50x64", "https://openaipublic.azureedge.net/clip/models/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt"),
    ("ViT-B/32", "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"),
    ("ViT-B/16", "https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"),
    ("ViT-L/14", "https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
    ("ViT-L/14@336px", "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt"),
];

/// The environment variable naming the cache folder (default `~/.cache/clip`).
pub const CACHE_ENV: &str = "SMALLCAP_CLIP_CACHE";
/// The environment variable naming a JSON file of name → URL overrides.
pub const MODELS_ENV: &str = "SMALLCAP_CLIP_MODELS";

/// Whether `name` is one of OpenAI's model names.
pub fn is_model_name(name: &str) -> bool {
    OPENAI_MODELS.iter().any(|(n, _)| *n == name)
}

fn known_names() -> String {
    OPENAI_MODELS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the named model is published: `$SMALLCAP_CLIP_MODELS`'s URL for it, else OpenAI's.
fn url_of(name: &str) -> Result<String> {
    if !is_model_name(name) {
        return Err(Error::Input(format!(
            "{name:?} is not an OpenAI CLIP model name; the names are {}",
            known_names()
        )));
    }
    if let Some(file) = std::env::var_os(MODELS_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(file);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let map: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&text).map_err(|e| Error::Config {
                path: path.clone(),
                msg: format!("({MODELS_ENV}) not a JSON object of model names to URLs: {e}"),
            })?;
        if let Some(url) = map.get(name) {
            return Ok(url.clone());
        }
    }
    Ok(OPENAI_MODELS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, u)| u.to_string())
        .expect("checked above"))
}

/// The SHA256 (lower-case hex) and the file name a model URL carries:
/// `…/<sha256>/<file name>`.
fn sha_and_file(url: &str) -> Result<(String, String)> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let mut parts = path.rsplit('/');
    let (file, sha) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let is_sha = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
    let is_file = !file.is_empty() && file != "." && file != ".." && !file.contains('\\');
    if !is_sha || !is_file {
        return Err(Error::Input(format!(
            "{url}: a CLIP model URL ends in /<sha256>/<file name>, as OpenAI's do"
        )));
    }
    Ok((sha.to_ascii_lowercase(), file.to_string()))
}

/// The cache folder: `$SMALLCAP_CLIP_CACHE`, else `~/.cache/clip` (`clip.load`'s default).
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::Input(format!(
                "neither {CACHE_ENV} nor HOME is set: no folder for OpenAI CLIP files"
            ))
        })?;
    Ok(PathBuf::from(home).join(".cache/clip"))
}

/// The SHA256 (lower-case hex) the named model's URL carries (`$SMALLCAP_CLIP_MODELS`'s, else
/// OpenAI's).
pub(crate) fn sha256_of_name(name: &str) -> Result<String> {
    Ok(sha_and_file(&url_of(name)?)?.0)
}

/// The model name whose URL carries `sha256`, if one does: a file given by path that is one of
/// the published ones is recorded by name.
pub(crate) fn name_of_sha256(sha256: &str) -> Option<&'static str> {
    OPENAI_MODELS
        .iter()
        .map(|(n, _)| *n)
        .find(|n| sha256_of_name(n).is_ok_and(|s| s == sha256))
}

/// The SHA256 (lower-case hex) of a file's bytes.
pub(crate) fn sha256_of(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The file of OpenAI CLIP model `name`, downloaded into the cache unless it is there with the
/// right SHA256.
pub fn model_file(name: &str) -> Result<PathBuf> {
    let url = url_of(name)?;
    let (sha, file) = sha_and_file(&url)?;
    let dir = cache_dir()?;
    let path = dir.join(&file);
    if path.is_file() {
        if sha256_of(&path)? == sha {
            return Ok(path);
        }
        tracing::warn!(
            "{} exists, but its SHA256 is not {sha}; downloading it again",
            path.display()
        );
    }
    if crate::hub::offline() {
        return Err(Error::Hub(format!(
            "OpenAI CLIP {name} ({}) is not in the cache and HF_HUB_OFFLINE is set; fetch it once with network access (HF_HUB_OFFLINE unset)",
            path.display()
        )));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = dir.join(format!(".{file}.{}.part", std::process::id()));
    let result = download(&url, &tmp, &sha, name);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Streams `url` into `tmp`, hashing as it goes; an error unless all of it arrived with `sha`.
fn download(url: &str, tmp: &Path, sha: &str, name: &str) -> Result<()> {
    let fail = |msg: String| {
        Error::Hub(format!(
            "cannot download OpenAI CLIP {name} from {url}: {msg}"
        ))
    };
    let response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    let len: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.parse().ok());
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(len.unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(name.to_string());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut reader = response.into_reader();
    let mut out = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::io(tmp, e))?;
        total += n as u64;
        bar.set_position(total);
    }
    bar.finish_and_clear();
    if let Some(len) = len {
        if total != len {
            return Err(fail(format!("cut off after {total} of {len} bytes")));
        }
    }
    out.sync_all().map_err(|e| Error::io(tmp, e))?;
    let got = format!("{:x}", hasher.finalize());
    if got != sha {
        return Err(fail(format!(
            "its SHA256 is {got}, not the {sha} its URL names; the file was removed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_url_carries_a_sha256_and_the_file_name_clip_load_caches_it_under() {
        for (name, url) in OPENAI_MODELS {
            let (sha, file) = sha_and_file(url).unwrap();
            assert_eq!(sha.len(), 64, "{name}");
            assert_eq!(
                file,
                format!("{}.pt", name.replace(['/', '@'], "-")),
                "{name}"
            );
        }
        let e = sha_and_file("http://x/clip/RN50.pt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("<sha256>"), "{e}");
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let e = url_of("RN50x128").unwrap_err().to_string();
        assert!(e.contains("RN50x64") && e.contains("ViT-L/14@336px"), "{e}");
    }
}
