//! Where `--model` and `--tokenizer` come from: a local folder, or a Hugging Face hub repository
//! (`owner/name`, optionally `@revision`) downloaded with `hf-hub` into the standard cache.
//!
//! Honours `HF_ENDPOINT` (another hub server), `HF_HOME` (the cache root) and `HF_HUB_OFFLINE`
//! (use only what the cache already holds). A repository already in the cache is used without
//! any network access.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::checkpoint::{PYTORCH_FILE, SAFETENSORS_FILE};
use crate::error::{Error, Result};

/// The hub repository of the default GPT-2 tokenizer.
pub const GPT2_TOKENIZER_REPO: &str = "gpt2";
/// OPT's tokenizer on the hub.
pub const OPT_TOKENIZER_REPO: &str = "facebook/opt-125m";
/// XGLM's tokenizer on the hub (every XGLM size shares it).
pub const XGLM_TOKENIZER_REPO: &str = "facebook/xglm-564M";

/// The files of a SmallCap checkpoint, wherever they live.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The checkpoint's `config.json`.
    pub config: PathBuf,
    /// Its weights: `model.safetensors` or `pytorch_model.bin`.
    pub weights: PathBuf,
}

/// A model folder, or a hub id whose `config.json` and weights (`model.safetensors`, else
/// `pytorch_model.bin`) are fetched into the cache.
pub fn model_files(spec: &str) -> Result<ModelFiles> {
    if let Some(dir) = local_dir(spec)? {
        let config = dir.join("config.json");
        let weights = [SAFETENSORS_FILE, PYTORCH_FILE]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::checkpoint(
                    &dir,
                    format!("no weights: neither {SAFETENSORS_FILE} nor {PYTORCH_FILE} is there"),
                )
            })?;
        if !config.is_file() {
            return Err(Error::checkpoint(
                &dir,
                "no config.json in the model folder",
            ));
        }
        return Ok(ModelFiles { config, weights });
    }
    let hub = HubRepo::parse(spec)?;
    let config = hub.fetch("config.json")?;
    let weights = hub.fetch_first(&[SAFETENSORS_FILE, PYTORCH_FILE])?;
    Ok(ModelFiles { config, weights })
}

/// A tokenizer folder, or a hub id whose tokenizer files are fetched: `vocab.json` +
/// `merges.txt` (GPT-2, OPT), else `sentencepiece.bpe.model` (XGLM), else `tokenizer.json`.
pub fn tokenizer_dir(spec: &str) -> Result<PathBuf> {
    if let Some(dir) = local_dir(spec)? {
        return Ok(dir);
    }
    let hub = HubRepo::parse(spec)?;
    let first = hub.fetch_first(&[
        "vocab.json",
        crate::tokenizer::sentencepiece::MODEL_FILE,
        "tokenizer.json",
    ])?;
    let dir = first.parent().map(Path::to_path_buf).unwrap_or_default();
    if first.ends_with("vocab.json") {
        let merges = hub.fetch("merges.txt")?;
        if merges.parent() != Some(dir.as_path()) {
            return Err(Error::Hub(format!(
                "{spec}: vocab.json and merges.txt resolved to different snapshots"
            )));
        }
    }
    // Where a repo has them, the special tokens and `add_bos_token` (OPT's tokenizer puts
    // `</s>` first); GPT-2's repo needs neither, so their absence is no error here.
    for optional in TOKENIZER_CONFIG_FILES {
        let _ = hub.fetch(optional);
    }
    Ok(dir)
}

/// The tokenizer files read beside the vocabulary when present.
pub const TOKENIZER_CONFIG_FILES: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// The hub tokenizer of a decoder family, as infer.py's `--decoder_name` gives it: `gpt2`, or
/// `facebook/opt-125m` for OPT (every OPT size shares it), `facebook/xglm-564M` for XGLM.
pub fn default_tokenizer_repo(decoder: &crate::config::DecoderArch) -> &'static str {
    match decoder {
        crate::config::DecoderArch::Gpt2 => GPT2_TOKENIZER_REPO,
        crate::config::DecoderArch::Opt(_) => OPT_TOKENIZER_REPO,
        crate::config::DecoderArch::Xglm(_) => XGLM_TOKENIZER_REPO,
    }
}

/// The file `file` of hub repository `repo` (`owner/name[@revision]`), from the cache or
/// downloaded into it (with a progress bar on a terminal; an interrupted download is never used).
pub fn repo_file(repo: &str, file: &str) -> Result<PathBuf> {
    HubRepo::parse(repo)?.fetch(file)
}

/// Whether `HF_HUB_OFFLINE` asks for the caches only (no download of hub or OpenAI CLIP files).
pub(crate) fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The tokenizer folder for a checkpoint: `tokenizer` (a folder or hub id) when given, else the
/// model folder's own tokenizer files when present, else the hub's tokenizer of the
/// checkpoint's decoder family ([`default_tokenizer_repo`]).
pub fn tokenizer_dir_for(model: &ModelFiles, tokenizer: Option<&str>) -> Result<PathBuf> {
    if let Some(spec) = tokenizer {
        return tokenizer_dir(spec);
    }
    let own = model
        .config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if crate::tokenizer::is_tokenizer_dir(&own) {
        return Ok(own);
    }
    // The decoder family decides the default; a config that does not parse is reported by the
    // model's own load.
    let arch = std::fs::read_to_string(&model.config)
        .ok()
        .and_then(|t| crate::config::SmallCapConfig::from_json(&t).ok())
        .map_or(crate::config::DecoderArch::Gpt2, |c| c.decoder.arch);
    tokenizer_dir(default_tokenizer_repo(&arch))
}

fn local_dir(spec: &str) -> Result<Option<PathBuf>> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(Some(path.to_path_buf()));
    }
    if path.exists() {
        return Err(Error::Input(format!(
            "{spec}: expected a folder, found a file"
        )));
    }
    if spec.starts_with('.')
        || spec.starts_with('/')
        || spec.contains('\\')
        || spec.matches('/').count() > 1
    {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        ));
    }
    Ok(None)
}

struct HubRepo {
    spec: String,
    id: String,
    revision: String,
    repo: Repo,
}

impl HubRepo {
    fn parse(spec: &str) -> Result<Self> {
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, rev.to_string()),
            None => (spec, "main".to_string()),
        };
        let valid = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            && !id.contains("..");
        if !valid {
            return Err(Error::Hub(format!(
                "{spec:?} is neither a folder nor a hub id like owner/name"
            )));
        }
        Ok(Self {
            spec: spec.to_string(),
            id: id.to_string(),
            repo: Repo::with_revision(id.to_string(), RepoType::Model, revision.clone()),
            revision,
        })
    }

    /// The cached copy, if the cache has one.
    fn cached(&self, file: &str) -> Option<PathBuf> {
        Cache::from_env().repo(self.repo.clone()).get(file)
    }

    fn fetch(&self, file: &str) -> Result<PathBuf> {
        if let Some(path) = self.cached(file) {
            return Ok(path);
        }
        if offline() {
            return Err(Error::Hub(format!(
                "{file} of hub repo {} (revision {}) is not in the cache ({}) and HF_HUB_OFFLINE is set; fetch it once with network access (HF_HUB_OFFLINE unset)",
                self.id,
                self.revision,
                Cache::from_env().path().display()
            )));
        }
        let api = ApiBuilder::from_env()
            .with_progress(std::io::stderr().is_terminal())
            .build()
            .map_err(|e| Error::Hub(format!("{}: {e}", self.spec)))?;
        api.repo(self.repo.clone()).get(file).map_err(|e| {
            Error::Hub(format!(
                "cannot download {file} from hub repo {} (revision {}): {e}",
                self.id, self.revision
            ))
        })
    }

    /// The first of `files` that the cache or the hub has.
    fn fetch_first(&self, files: &[&str]) -> Result<PathBuf> {
        if let Some(path) = files.iter().find_map(|f| self.cached(f)) {
            return Ok(path);
        }
        let mut errors = Vec::new();
        for f in files {
            match self.fetch(f) {
                Ok(path) => return Ok(path),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(Error::Hub(errors.join("; ")))
    }
}
