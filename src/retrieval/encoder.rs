//! Retrieval encoders: the CLIP models that embed query images and datastore captions into one
//! space. [`RetrievalEncoder`] wraps an OpenAI CLIP ([`OpenAiClip`]: ResNet or ViT, from a `.pt`
//! TorchScript archive, a state-dict pickle or safetensors) or a Hugging Face `CLIPModel`
//! ([`HfClip`]: a folder or hub id such as `openai/clip-vit-base-patch32`), with each model's own
//! preprocessing (`clip._transform(n)` for OpenAI, `CLIPFeatureExtractor` for HF) and CLIP's
//! BPE (`clip.tokenize`, context 77), and returns rows L2-normalised as `faiss.normalize_L2`.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use smallcap_datastore::store::normalize_l2;

use crate::error::{Error, Result};
use crate::hub;
use crate::models::clip_hf::HfClip;
use crate::models::clip_openai::{OpenAiClip, Queries};
use crate::models::clip_tokenizer::{ClipTokenizer, CONTEXT_LENGTH};
use crate::precision::EncoderPrecision;
use crate::retrieval::openai_models;

/// Separates the model description from the spec it was loaded from in [`RetrievalEncoder::identity`].
const IDENTITY_SEP: &str = " @ ";
/// Separates the spec from the weights' SHA256 in [`RetrievalEncoder::identity`].
const SHA_SEP: &str = " sha256:";

/// An image/text encoder for retrieval. `Send + Sync`: share one between threads.
pub struct RetrievalEncoder {
    model: Model,
    description: String,
    provenance: ProvenanceCell,
    device: Device,
}

/// Where an encoder came from, as stores record it.
#[derive(Debug, Clone)]
struct Provenance {
    /// An OpenAI model name, a hub id, or the canonical path of a local file or folder.
    spec: String,
    /// Whether `spec` is a local path.
    local: bool,
    /// SHA256 of the weight file.
    weights_sha256: String,
}

/// A [`Provenance`] known at load, or a local OpenAI CLIP file's, computed when first asked for
/// (hashing a 2.5 GB `RN50x64.pt` takes seconds that captioning never needs) or, where it will
/// be asked for, on a thread of its own while the model loads ([`ProvenanceCell::hashing`]).
enum ProvenanceCell {
    Known(Provenance),
    File(
        std::path::PathBuf,
        Arc<std::sync::OnceLock<std::result::Result<Provenance, String>>>,
    ),
}

impl ProvenanceCell {
    /// The cell of a local file, its hash started now on a thread of its own (a caller asking
    /// meanwhile waits for it).
    fn hashing(path: &Path) -> Self {
        let cell: Arc<std::sync::OnceLock<_>> = Arc::default();
        let (file, filled) = (path.to_path_buf(), Arc::clone(&cell));
        std::thread::spawn(move || {
            filled.get_or_init(|| Self::of_file(&file).map_err(|e| e.to_string()));
        });
        Self::File(path.to_path_buf(), cell)
    }

    fn get(&self) -> Result<&Provenance> {
        match self {
            Self::Known(p) => Ok(p),
            Self::File(path, cell) => cell
                .get_or_init(|| Self::of_file(path).map_err(|e| e.to_string()))
                .as_ref()
                .map_err(|e| Error::Input(e.clone())),
        }
    }

    /// One of the published files, wherever it lies, is recorded by its name; any other by its
    /// canonical path.
    fn of_file(path: &Path) -> Result<Provenance> {
        let sha = openai_models::sha256_of(path)?;
        let (spec, local) = match openai_models::name_of_sha256(&sha) {
            Some(name) => (name.to_string(), false),
            None => {
                let canonical = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
                (canonical.display().to_string(), true)
            }
        };
        Ok(Provenance {
            spec,
            local,
            weights_sha256: sha,
        })
    }
}

/// `to` relative to the folder `from` (both absolute), as `./…` or `../…`.
fn relative_to(from: &Path, to: &Path) -> String {
    let (from, to): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = std::path::PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    let rel = rel.display().to_string();
    if rel.starts_with("..") {
        rel
    } else {
        format!("./{rel}")
    }
}

/// `path` made absolute through its deepest existing ancestor (a store folder being built does
/// not exist yet).
fn absolute(path: &Path) -> Result<std::path::PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(p),
        Err(e) => match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                Ok(absolute(parent)?.join(name))
            }
            _ => Err(Error::io(path, e)),
        },
    }
}

enum Model {
    OpenAi(OpenAiClip),
    Hf(HfClip),
}

impl RetrievalEncoder {
    /// Loads an encoder: one of OpenAI's model names (`RN50x64`, `ViT-B/32`, …) is fetched into
    /// the CLIP cache ([`openai_models`]); a file is an OpenAI CLIP checkpoint (`RN50x64.pt`, a
    /// state-dict pickle or safetensors, with an optional `clip_dims.json` beside it); a folder
    /// or a hub id is a Hugging Face `CLIPModel` (`config.json` + weights).
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        Self::load_with(spec, device, EncoderPrecision::default())
    }

    /// [`RetrievalEncoder::load`] with the precision of the ResNet image towers.
    pub fn load_with(spec: &str, device: &Device, precision: EncoderPrecision) -> Result<Self> {
        Self::load_for(spec, device, precision, Queries::All)
    }

    /// [`RetrievalEncoder::load_with`] for encoding texts only (datastore builds): an OpenAI
    /// CLIP model's image tower is left out, and encoding images is an error.
    pub fn load_for_texts(
        spec: &str,
        device: &Device,
        precision: EncoderPrecision,
    ) -> Result<Self> {
        Self::load_for(spec, device, precision, Queries::Texts)
    }

    /// [`RetrievalEncoder::load_with`] for the `queries` given: an OpenAI CLIP model leaves out
    /// the tower they do not need ([`Queries`]); a Hugging Face model loads both.
    pub fn load_for(
        spec: &str,
        device: &Device,
        precision: EncoderPrecision,
        queries: Queries,
    ) -> Result<Self> {
        let load_clip = |file: &Path| OpenAiClip::load_for(file, device, precision, queries);
        let path = Path::new(spec);
        // OpenAI's names (RN50x64, ViT-B/32, …), fetched as clip.load does; recorded by name.
        let looks_like_a_name = spec.starts_with("RN") || spec.starts_with("ViT-");
        if !path.exists() && (openai_models::is_model_name(spec) || looks_like_a_name) {
            let file = openai_models::model_file(spec)?;
            let model = load_clip(&file)?;
            return Ok(Self {
                description: format!("openai-clip:{}", model.dims().name()),
                model: Model::OpenAi(model),
                provenance: ProvenanceCell::Known(Provenance {
                    spec: spec.to_string(),
                    local: false,
                    weights_sha256: openai_models::sha256_of_name(spec)?,
                }),
                device: device.clone(),
            });
        }
        if path.is_file() {
            // Text queries build and search stores, which record and check the weights' hash:
            // it is computed beside the load. Image queries (captioning) may never need it.
            let provenance = match queries {
                Queries::Texts => ProvenanceCell::hashing(path),
                _ => ProvenanceCell::File(path.to_path_buf(), Default::default()),
            };
            let model = load_clip(path)?;
            return Ok(Self {
                description: format!("openai-clip:{}", model.dims().name()),
                model: Model::OpenAi(model),
                provenance,
                device: device.clone(),
            });
        }
        let files = hub::model_files(spec)?;
        let model = HfClip::load(&files.config, &files.weights, device)?;
        let weights_sha256 = openai_models::sha256_of(&files.weights)?;
        let local = Path::new(spec).is_dir();
        let spec = match local {
            true => std::fs::canonicalize(spec)
                .map_err(|e| Error::io(Path::new(spec), e))?
                .display()
                .to_string(),
            false => spec.to_string(),
        };
        let v = model.vision_config();
        Ok(Self {
            description: format!(
                "hf-clip:ViT(width={},layers={},patch={},res={},embed={})",
                v.hidden_size,
                v.num_hidden_layers,
                v.patch_size,
                v.image_size,
                model.head().embed_dim()
            ),
            model: Model::Hf(model),
            provenance: ProvenanceCell::Known(Provenance {
                spec,
                local,
                weights_sha256,
            }),
            device: device.clone(),
        })
    }

    /// `"<description> @ <spec> sha256:<hex>"`: the description (`openai-clip:RN50x64`) says
    /// which embedding space a store is in, the spec (an OpenAI name, a hub id, or here a local
    /// path) where to load the encoder again, the SHA256 which weights exactly.
    pub fn identity(&self) -> Result<String> {
        let p = self.provenance.get()?;
        Ok(format!(
            "{}{IDENTITY_SEP}{}{SHA_SEP}{}",
            self.description, p.spec, p.weights_sha256
        ))
    }

    /// [`RetrievalEncoder::identity`] as a store in `store_dir` records it: never an absolute
    /// path, a local encoder's path relative to the store (`./…`, `../…`), so that a store moved
    /// together with its encoder still finds it.
    pub fn identity_for_store(&self, store_dir: &Path) -> Result<String> {
        let p = self.provenance.get()?;
        let spec = match p.local {
            true => relative_to(&absolute(store_dir)?, Path::new(&p.spec)),
            false => p.spec.clone(),
        };
        Ok(format!(
            "{}{IDENTITY_SEP}{spec}{SHA_SEP}{}",
            self.description, p.weights_sha256
        ))
    }

    /// SHA256 (hex) of the encoder's weight file (hashed on first use for a local file).
    pub fn weights_sha256(&self) -> Result<&str> {
        Ok(&self.provenance.get()?.weights_sha256)
    }

    /// The model description, e.g. `openai-clip:RN50x64`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The spec recorded in an identity string written by [`RetrievalEncoder::identity`] (or
    /// by earlier versions, which recorded no SHA256).
    pub fn spec_of_identity(identity: &str) -> Option<&str> {
        let (_, rest) = identity.split_once(IDENTITY_SEP)?;
        Some(rest.rsplit_once(SHA_SEP).map_or(rest, |(s, _)| s))
    }

    /// A store's identity as a PostgreSQL table records it: a path relative to the store folder
    /// `store_dir` becomes absolute (a table has no folder to be relative to); names, hub ids and
    /// identities without a spec are kept.
    pub fn identity_for_table(identity: &str, store_dir: &Path) -> String {
        let Some(spec) = Self::spec_of_identity(identity) else {
            return identity.to_string();
        };
        if !(spec.starts_with("./") || spec.starts_with("../")) {
            return identity.to_string();
        }
        let resolved = Self::resolve_recorded_spec(spec, Some(store_dir));
        let absolute =
            std::fs::canonicalize(&resolved).map_or(resolved, |p| p.display().to_string());
        let description = Self::description_of_identity(identity);
        match Self::sha256_of_identity(identity) {
            Some(sha) => format!("{description}{IDENTITY_SEP}{absolute}{SHA_SEP}{sha}"),
            None => format!("{description}{IDENTITY_SEP}{absolute}"),
        }
    }

    /// The weights' SHA256 recorded in an identity string, if it records one.
    pub(crate) fn sha256_of_identity(identity: &str) -> Option<&str> {
        let (_, rest) = identity.split_once(IDENTITY_SEP)?;
        rest.rsplit_once(SHA_SEP).map(|(_, sha)| sha)
    }

    /// Where to load the encoder a store records: a relative path (`./…`, `../…`) is relative to
    /// the store's folder `store_dir`.
    pub fn resolve_recorded_spec(spec: &str, store_dir: Option<&Path>) -> String {
        match store_dir {
            Some(dir) if spec.starts_with("./") || spec.starts_with("../") => {
                dir.join(spec).display().to_string()
            }
            _ => spec.to_string(),
        }
    }

    /// The description part of an identity string.
    pub(crate) fn description_of_identity(identity: &str) -> &str {
        identity
            .split_once(IDENTITY_SEP)
            .map_or(identity, |(d, _)| d)
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        match &self.model {
            Model::OpenAi(m) => m.dims().embed_dim,
            Model::Hf(m) => m.head().embed_dim(),
        }
    }

    /// The square input size of the image tower.
    pub fn image_size(&self) -> usize {
        match &self.model {
            Model::OpenAi(m) => m.dims().image_resolution,
            Model::Hf(m) => m.vision_config().image_size,
        }
    }

    /// The model's own preprocessing of a decoded image: `[3, n, n]` CHW values.
    pub fn preprocess(&self, img: &smallcap_image::SourceImage) -> Vec<f32> {
        let n = self.image_size() as u32;
        match &self.model {
            Model::OpenAi(_) => smallcap_image::clip_transform(img, n),
            Model::Hf(_) => smallcap_image::clip_feature_extractor(&img.to_rgb(), n),
        }
    }

    /// Preprocessed images (each `[3, n, n]` as [`RetrievalEncoder::preprocess`] returns) →
    /// L2-normalised rows, `images.len() × dim`.
    pub fn encode_pixels(&self, images: &[Vec<f32>]) -> Result<Vec<f32>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.image_size();
        let flat: Vec<f32> = images.iter().flatten().copied().collect();
        if flat.len() != images.len() * 3 * n * n {
            return Err(Error::Input(format!("each image must be [3, {n}, {n}]")));
        }
        let x = Tensor::from_vec(flat, (images.len(), 3, n, n), &self.device)?;
        self.encode_image_tensor(&x)
    }

    /// `[B, 3, n, n]` pixel values → L2-normalised rows.
    pub fn encode_image_tensor(&self, x: &Tensor) -> Result<Vec<f32>> {
        let feats = match &self.model {
            Model::OpenAi(m) => m.encode_image(x)?,
            Model::Hf(m) => m.encode_image(x)?,
        };
        self.normalised(&feats)
    }

    /// For a Hugging Face CLIP encoder whose vision tower is the captioning encoder's (SmallCap's
    /// frozen `openai/clip-vit-base-patch32`): the image rows from the captioner's
    /// `last_hidden_state` `[B, T, H]`, so that retrieval costs only the class token's
    /// `post_layernorm` and `visual_projection` on top of captioning.
    pub fn encode_from_vision_states(&self, states: &Tensor) -> Result<Vec<f32>> {
        match &self.model {
            Model::Hf(m) => {
                let h = m.head().hidden_size();
                if states.rank() != 3 || states.dim(2)? != h {
                    return Err(Error::Input(format!(
                        "vision states have shape {:?}; this encoder's tower has width {h}",
                        states.dims()
                    )));
                }
                self.normalised(&m.head().forward(states)?)
            }
            Model::OpenAi(_) => Err(Error::Input(format!(
                "{} does not share the captioning encoder's vision tower (use a Hugging Face CLIPModel such as openai/clip-vit-base-patch32)",
                self.description
            ))),
        }
    }

    /// Decoded images → L2-normalised rows.
    pub fn encode_images(&self, images: &[smallcap_image::SourceImage]) -> Result<Vec<f32>> {
        let px: Vec<Vec<f32>> = images.iter().map(|i| self.preprocess(i)).collect();
        self.encode_pixels(&px)
    }

    /// `clip.tokenize(texts, truncate=True)` rows for this model's context.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let ctx = match &self.model {
            Model::OpenAi(m) => m.dims().context_length,
            Model::Hf(m) => m.text_dims().context_length.min(CONTEXT_LENGTH),
        };
        ClipTokenizer::global().tokenize_batch(texts, ctx, true)
    }

    /// Texts → L2-normalised rows (`clip.tokenize` with truncation, `encode_text`).
    pub fn encode_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.tokenize(texts)?;
        let feats = match &self.model {
            Model::OpenAi(m) => m.encode_text(&rows)?,
            Model::Hf(m) => m.encode_text(&rows, &self.device)?,
        };
        self.normalised(&feats)
    }

    fn normalised(&self, feats: &Tensor) -> Result<Vec<f32>> {
        let mut v = feats
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        normalize_l2(&mut v, self.dim());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store's relative encoder path is relative to its folder; a table gets it absolute.
    #[test]
    fn recorded_paths_are_relative_to_the_store_and_absolute_in_a_table() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(root.join("clip")).unwrap();
        std::fs::write(root.join("clip/x.pt"), b"x").unwrap();
        let store = root.join("stores/coco");
        std::fs::create_dir_all(&store).unwrap();
        assert_eq!(
            relative_to(&store, &root.join("clip/x.pt")),
            "../../clip/x.pt"
        );
        assert_eq!(relative_to(&root, &root.join("clip/x.pt")), "./clip/x.pt");
        let identity = "openai-clip:RN50 @ ../../clip/x.pt sha256:ab12";
        assert_eq!(
            RetrievalEncoder::spec_of_identity(identity),
            Some("../../clip/x.pt")
        );
        assert_eq!(RetrievalEncoder::sha256_of_identity(identity), Some("ab12"));
        assert_eq!(
            RetrievalEncoder::identity_for_table(identity, &store),
            format!(
                "openai-clip:RN50 @ {} sha256:ab12",
                root.join("clip/x.pt").display()
            )
        );
        // Names and identities of earlier versions are kept as they are.
        for kept in [
            "openai-clip:RN50x64 @ RN50x64 sha256:ab12",
            "openai-clip:RN50 @ /abs/RN50.pt",
        ] {
            assert_eq!(RetrievalEncoder::identity_for_table(kept, &store), kept);
        }
        assert_eq!(
            RetrievalEncoder::spec_of_identity("openai-clip:RN50 @ /abs/RN50.pt"),
            Some("/abs/RN50.pt")
        );
    }
}
