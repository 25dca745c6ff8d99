//! The captioning pipeline, the way every front end captions: image → (live retrieval) → prompt →
//! caption. A [`Pipeline`] holds the [`Captioner`] (SmallCap: CLIP vision tower + GPT-2) and,
//! optionally, a [`Retriever`] (the retrieval encoder and any number of named datastores), all
//! loaded once. `smallcap caption` and the server's batch worker are thin layers over it.
//!
//! Each image gets its prompt captions from a [`PromptSource`]: live retrieval from a datastore,
//! captions given by the caller, or none (`This image shows `). Retrieval encodes the images of a
//! batch together, one call per (datastore, k); the captioner then encodes and decodes the whole
//! batch at once. Results do not depend on how images are batched.
//!
//! `Pipeline` is `Send + Sync`: load it once and share it.
//!
//! ```
//! # fn main() -> smallcap::Result<()> {
//! use smallcap::{GenerationConfig, ImageInput, Pipeline, PipelineOptions, PromptSource};
//! let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smallcap-tiny");
//! let pipeline = Pipeline::load(&PipelineOptions {
//!     tokenizer: Some(format!("{fixture}/tokenizer")),
//!     datastores: vec![format!("{fixture}/retrieval/datastore_index,captions={fixture}/retrieval/datastore_captions.json")],
//!     retrieval_encoder: Some(format!("{fixture}/retrieval/clip_resnet.pt")),
//!     ..PipelineOptions::new(format!("{fixture}/model"))
//! })?;
//! let image = ImageInput::Path(format!("{fixture}/images/chelsea.png").into());
//! let generation = GenerationConfig { early_stopping: true, ..pipeline.default_generation() };
//! let out = pipeline.caption(vec![image], &PromptSource::Datastore(None), 4, &generation)?;
//! let first = out[0].as_ref().expect("captioned");
//! assert_eq!(first.retrieved_captions.len(), 4);
//! println!("{}", first.caption);
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use smallcap_image::SourceImage;

use crate::captioner::{Caption, Captioner, Prepared, Retrieval};
use crate::error::{Error, Result};
use crate::generation::GenerationConfig;
use crate::kernels::packed_linear::WeightType;
use crate::precision::EncoderPrecision;
use crate::retrieval::{NamedSpec, Queries, Retrieved, Retriever};

/// An image to caption.
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// An image file.
    Path(PathBuf),
    /// An encoded image in memory (`name` is used in errors).
    Bytes {
        /// A name for messages (a file name, an upload's field).
        name: String,
        /// The file's bytes (JPEG, PNG, WebP, GIF, BMP, TIFF).
        bytes: Arc<[u8]>,
    },
    /// An image already decoded.
    Image(Arc<SourceImage>),
}

/// Where an image's prompt captions come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptSource {
    /// The prompt without captions, `This image shows `.
    NoRetrieval,
    /// These captions, best first (the first k are used).
    Captions(Vec<String>),
    /// Live retrieval from the named datastore (the default one for `None`).
    Datastore(Option<String>),
}

/// An image decoded for the pipeline: the captioner's pixels, and the decoded image itself when
/// it is to be a retrieval query.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// `[3, size, size]`, as CLIPFeatureExtractor outputs.
    pub pixel_values: Tensor,
    /// The decoded image converted to RGB, as the reference's pipeline converts it (what the
    /// retrieval encoder preprocesses).
    pub source: Option<Arc<SourceImage>>,
}

/// One image's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PipelineCaption {
    /// The caption, post-processed as the reference's `postprocess_preds`.
    pub caption: String,
    /// The new tokens as the reference's `generate` returns them (eos included when emitted).
    pub generated_ids: Vec<u32>,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The captions in the prompt.
    pub retrieved_captions: Vec<String>,
    /// Ids and scores, when the captions were retrieved from a datastore.
    pub retrieved: Option<Retrieved>,
}

/// What [`Pipeline::load`] loads.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// A SmallCap checkpoint folder or hub id.
    pub model: String,
    /// The decoder's tokenizer folder or hub id (default: the model folder's, else the hub's
    /// `gpt2`, or `facebook/opt-125m` for an OPT checkpoint).
    pub tokenizer: Option<String>,
    /// How the decoder's weights are held while decoding.
    pub decoder_weights: WeightType,
    /// Datastores to retrieve from, `[NAME=]SPEC` (see [`crate::retrieval::spec`]); the first is
    /// the default.
    pub datastores: Vec<String>,
    /// The retrieval encoder (default: the one the first datastore records, else the checkpoint's
    /// `retrieval_encoder`, e.g. `RN50x64`).
    pub retrieval_encoder: Option<String>,
    /// Retrieve with the captioner's own vision tower (see [`Pipeline::share_vision_tower`]).
    pub share_vision_tower: bool,
    /// How the retrieval encoder's ResNet image tower computes ([`EncoderPrecision`]).
    pub encoder_precision: EncoderPrecision,
    /// The queries the retrieval encoder is loaded for: [`Queries::All`] where texts are
    /// retrieved too (the server), [`Queries::Images`] for captioning alone, which leaves the
    /// text tower out.
    pub retrieval_queries: Queries,
    /// Where the networks run.
    pub device: Device,
}

impl PipelineOptions {
    /// A model with the defaults: its own tokenizer, f32 weights, no datastore, the CPU.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            tokenizer: None,
            decoder_weights: WeightType::F32,
            datastores: Vec::new(),
            retrieval_encoder: None,
            share_vision_tower: false,
            encoder_precision: EncoderPrecision::F32,
            retrieval_queries: Queries::All,
            device: Device::Cpu,
        }
    }
}

/// One image of a batch: its pixels, prompt source and k.
#[derive(Debug, Clone)]
pub struct PipelineItem {
    /// The decoded image.
    pub image: DecodedImage,
    /// Where its prompt captions come from.
    pub prompt: PromptSource,
    /// The number of captions in its prompt (and retrieved).
    pub k: usize,
}

/// An input decoded in its own Pillow mode.
fn source_image(input: &ImageInput) -> Result<Arc<SourceImage>> {
    Ok(match input {
        ImageInput::Path(p) => Arc::new(smallcap_image::load(p)?),
        ImageInput::Bytes { name, bytes } => Arc::new(smallcap_image::decode(bytes, name)?),
        ImageInput::Image(img) => img.clone(),
    })
}

/// An image's neighbours, and with a shared vision tower its encoder states.
type Found = (Retrieved, Option<Tensor>);

/// Images retrieve together when they share a datastore and a k.
type GroupKey<'a> = (Option<&'a str>, usize);

/// The captioner and the retriever, loaded once (see the module documentation).
pub struct Pipeline {
    captioner: Captioner,
    retriever: Option<Retriever>,
    share_vision_tower: bool,
    tower_checked: AtomicBool,
}

impl Pipeline {
    /// Joins a loaded captioner and, optionally, a retriever.
    pub fn new(captioner: Captioner, retriever: Option<Retriever>) -> Self {
        Self {
            captioner,
            retriever,
            share_vision_tower: false,
            tower_checked: AtomicBool::new(false),
        }
    }

    /// Loads the checkpoint, tokenizer, retrieval encoder and datastores.
    pub fn load(opts: &PipelineOptions) -> Result<Self> {
        if opts.datastores.is_empty() && opts.retrieval_encoder.is_some() {
            return Err(Error::Input(
                "a retrieval encoder needs at least one datastore".into(),
            ));
        }
        let load_retriever = || -> Result<Option<Retriever>> {
            if opts.datastores.is_empty() {
                return Ok(None);
            }
            let specs = opts
                .datastores
                .iter()
                .map(|s| NamedSpec::parse(s))
                .collect::<Result<Vec<_>>>()?;
            // The checkpoint names the encoder it was trained with; read only its config.json.
            let default = crate::hub::model_files(&opts.model)
                .ok()
                .and_then(|f| crate::SmallCapConfig::from_file(&f.config).ok())
                .and_then(|c| c.retrieval_encoder);
            Ok(Some(Retriever::open_with_default(
                &specs,
                opts.retrieval_encoder.as_deref(),
                default.as_deref(),
                &opts.device,
                opts.encoder_precision,
                opts.retrieval_queries,
            )?))
        };
        let load_captioner = || {
            Captioner::from_specs_with_weights(
                &opts.model,
                opts.tokenizer.as_deref(),
                &opts.device,
                opts.decoder_weights,
            )
        };
        // On the CPU the two load side by side: much of loading is copying and page faults that
        // leave a core idle, which the other's packing uses. (An error of the retriever is
        // reported first, as when they load in turn.)
        let (retriever, captioner) = if opts.device.is_cpu() && !opts.datastores.is_empty() {
            std::thread::scope(|s| {
                let captioner = s.spawn(load_captioner);
                let retriever = load_retriever();
                let captioner = captioner
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                Ok::<_, Error>((retriever?, captioner?))
            })?
        } else {
            (load_retriever()?, load_captioner()?)
        };
        let pipeline = Self::new(captioner, retriever);
        if opts.share_vision_tower {
            pipeline.share_vision_tower()
        } else {
            Ok(pipeline)
        }
    }

    /// Retrieves with the captioning encoder's own vision tower: the query is the retrieval
    /// encoder's projection of the captioner's encoder states, so each image is encoded once.
    /// Needs a Hugging Face CLIPModel retrieval encoder with the same tower (SmallCap's is
    /// `openai/clip-vit-base-patch32`), checked on the first image retrieved.
    pub fn share_vision_tower(mut self) -> Result<Self> {
        let Some(r) = &self.retriever else {
            return Err(Error::Input(
                "sharing the vision tower needs a datastore".into(),
            ));
        };
        if r.encoder().as_clip().is_none() {
            return Err(Error::Input(format!(
                "sharing the vision tower needs a CLIP retrieval encoder, not {}",
                r.encoder().description()
            )));
        }
        self.share_vision_tower = true;
        Ok(self)
    }

    /// The captioner.
    pub fn captioner(&self) -> &Captioner {
        &self.captioner
    }

    /// The retriever, when datastores are loaded.
    pub fn retriever(&self) -> Option<&Retriever> {
        self.retriever.as_ref()
    }

    /// infer.py's decoding settings with this checkpoint's eos and pad tokens.
    pub fn default_generation(&self) -> GenerationConfig {
        self.captioner.default_generation()
    }

    /// Decodes an image for captioning; with `for_retrieval`, the decoded image is kept as the
    /// retrieval query.
    pub fn decode(&self, input: &ImageInput, for_retrieval: bool) -> Result<DecodedImage> {
        self.decoded(source_image(input)?, for_retrieval)
    }

    /// The retrieval query of an image alone (no captioning pixels): what [`Pipeline::decode`]
    /// keeps with `for_retrieval`.
    pub fn retrieval_query(&self, input: &ImageInput) -> Result<Arc<SourceImage>> {
        let source = source_image(input)?;
        Ok(match source.mode() {
            smallcap_image::PilMode::Rgb => source,
            _ => Arc::new(SourceImage::from(source.to_rgb())),
        })
    }

    /// [`Pipeline::decode`] of an image already decoded.
    pub fn decoded(&self, source: Arc<SourceImage>, for_retrieval: bool) -> Result<DecodedImage> {
        let rgb = source.to_rgb();
        let pixel_values = self.captioner.pixel_values(&rgb)?;
        // The reference's pipeline opens every image with `.convert("RGB")` before both
        // preprocessings, so the retrieval query is the RGB image too (P and RGBA images would
        // otherwise be resized by Pillow's rules for their own modes).
        let query = match (for_retrieval, source.mode()) {
            (false, _) => None,
            (true, smallcap_image::PilMode::Rgb) => Some(source),
            (true, _) => Some(Arc::new(SourceImage::from(rgb))),
        };
        Ok(DecodedImage {
            pixel_values,
            source: query,
        })
    }

    fn retriever_or_err(&self) -> Result<&Retriever> {
        self.retriever
            .as_ref()
            .ok_or_else(|| Error::Input("no datastore is loaded".into()))
    }

    /// Prompts for a batch: live retrieval for the images that need it (one call per
    /// (datastore, k), the images encoded together), then each image's prompt ids. Each image
    /// gets its own result; a failed retrieval fails the images that shared it.
    pub fn prepare(&self, items: Vec<PipelineItem>) -> Vec<Result<(Prepared, Option<Retrieved>)>> {
        let mut found: Vec<Option<Result<Found>>> = (0..items.len()).map(|_| None).collect();
        // Images that retrieve, grouped by (datastore, k), in order of first appearance.
        let mut groups: Vec<(GroupKey, Vec<usize>)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let PromptSource::Datastore(name) = &item.prompt {
                let key = (name.as_deref(), item.k);
                match groups.iter_mut().find(|(g, _)| *g == key) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((key, vec![i])),
                }
            }
        }
        for ((datastore, k), members) in &groups {
            match self.retrieve_group(&items, members, *datastore, *k) {
                Ok(results) => {
                    for (&i, r) in members.iter().zip(results) {
                        found[i] = Some(Ok(r));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for &i in members {
                        found[i] = Some(Err(Error::Shared(e.clone())));
                    }
                }
            }
        }
        items
            .into_iter()
            .zip(found)
            .map(|(item, found)| {
                let (retrieval, retrieved, states) = match (item.prompt, found) {
                    (PromptSource::NoRetrieval, _) => (Retrieval::None, None, None),
                    (PromptSource::Captions(c), _) => (Retrieval::Captions(c), None, None),
                    (PromptSource::Datastore(_), Some(Ok((r, states)))) => {
                        (Retrieval::Captions(r.captions.clone()), Some(r), states)
                    }
                    (PromptSource::Datastore(_), Some(Err(e))) => return Err(e),
                    (PromptSource::Datastore(_), None) => {
                        return Err(Error::Input("retrieval did not run".into()))
                    }
                };
                let mut prepared =
                    self.captioner
                        .prepare(item.image.pixel_values, retrieval, item.k)?;
                prepared.encoder_hidden_states = states;
                Ok((prepared, retrieved))
            })
            .collect()
    }

    /// Retrieval for the images `members` of `items`: their neighbours, and with a shared vision
    /// tower their encoder states.
    fn retrieve_group(
        &self,
        items: &[PipelineItem],
        members: &[usize],
        datastore: Option<&str>,
        k: usize,
    ) -> Result<Vec<Found>> {
        let r = self.retriever_or_err()?;
        let store_len = r.store(datastore)?.len();
        if k > store_len {
            return Err(Error::Input(format!(
                "k = {k} is larger than the datastore ({store_len} captions)"
            )));
        }
        if self.share_vision_tower {
            let pixels: Vec<&Tensor> = members
                .iter()
                .map(|&i| &items[i].image.pixel_values)
                .collect();
            let states = self.captioner.model().encode(&Tensor::stack(&pixels, 0)?)?;
            if !self.tower_checked.load(Ordering::Relaxed) {
                self.check_shared_tower(r, pixels[0], &states.get(0)?)?;
                self.tower_checked.store(true, Ordering::Relaxed);
            }
            let found = r.retrieve_from_vision_states(datastore, &states, k)?;
            return found
                .into_iter()
                .enumerate()
                .map(|(j, f)| Ok((f, Some(states.get(j)?))))
                .collect();
        }
        let queries = members
            .iter()
            .map(|&i| {
                items[i].image.source.as_deref().ok_or_else(|| {
                    Error::Input("an image to retrieve for was decoded without its query".into())
                })
            })
            .collect::<Result<Vec<&SourceImage>>>()?;
        let found = r.retrieve_images(datastore, &queries, k)?;
        if found.len() != members.len() {
            return Err(Error::Input(format!(
                "retrieval answered {} results for {} images",
                found.len(),
                members.len()
            )));
        }
        Ok(found.into_iter().map(|f| (f, None)).collect())
    }

    /// Sharing the tower is only right when the retrieval encoder's vision tower is the
    /// captioner's: on the same pixels, the query from the captioner's states must equal the
    /// retrieval encoder's own image embedding.
    fn check_shared_tower(&self, r: &Retriever, pixels: &Tensor, states: &Tensor) -> Result<()> {
        let clip = r.encoder().as_clip().ok_or_else(|| {
            Error::Input("sharing the vision tower needs a CLIP retrieval encoder".into())
        })?;
        let shared = clip.encode_from_vision_states(&states.unsqueeze(0)?)?;
        let own = clip.encode_image_tensor(&pixels.unsqueeze(0)?)?;
        let diff = shared
            .iter()
            .zip(&own)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Both are unit vectors from the same tower and pixels: they differ only by rounding.
        if shared.len() != own.len() || diff > 1e-4 {
            return Err(Error::Input(format!(
                "--share-vision-tower: the retrieval encoder {} does not have the captioning encoder's vision tower (its image embedding differs by {diff:.3e}); drop the option or use the captioning encoder's CLIP",
                clip.identity().unwrap_or_else(|_| clip.description().to_string())
            )));
        }
        Ok(())
    }

    /// Captions prepared images in one shared forward pass (see [`Captioner::caption`]).
    pub fn caption_prepared(
        &self,
        items: &[Prepared],
        generation: &GenerationConfig,
    ) -> Result<Vec<Caption>> {
        self.captioner.caption(items, generation)
    }

    /// Captions images, all with the same prompt source and k: decoding, retrieval and
    /// captioning batched over `images`. Each image gets its own result (a file that cannot be
    /// read fails alone); the outer error is a failure of the shared forward pass.
    pub fn caption(
        &self,
        images: Vec<ImageInput>,
        prompt: &PromptSource,
        k: usize,
        generation: &GenerationConfig,
    ) -> Result<Vec<Result<PipelineCaption>>> {
        let items = images
            .into_iter()
            .map(|image| (image, prompt.clone(), k))
            .collect();
        self.caption_each(items, generation)
    }

    /// [`Pipeline::caption`] with a prompt source and k per image.
    pub fn caption_each(
        &self,
        items: Vec<(ImageInput, PromptSource, usize)>,
        generation: &GenerationConfig,
    ) -> Result<Vec<Result<PipelineCaption>>> {
        self.finish(self.stage(items), generation)
    }

    /// The first half of [`Pipeline::caption_each`]: decoding, retrieval and the vision
    /// tower's encoding of a batch, ready for [`Pipeline::finish`]. A front end captioning many
    /// batches can stage the next batch while the current one decodes (`smallcap caption`
    /// does), so that the retrieval encoder fills the cores beam search leaves idle.
    pub fn stage(&self, items: Vec<(ImageInput, PromptSource, usize)>) -> Staged {
        // One result per input, in order; `at` says which input each later stage's entry is.
        let mut out: Vec<Option<Result<PipelineCaption>>> = Vec::with_capacity(items.len());
        let (mut ready, mut at) = (Vec::new(), Vec::new());
        for (input, prompt, k) in items {
            let retrieving = matches!(prompt, PromptSource::Datastore(_));
            match self.decode(&input, retrieving && !self.share_vision_tower) {
                Ok(image) => {
                    at.push(out.len());
                    ready.push(PipelineItem { image, prompt, k });
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let mut staged = Staged {
            out,
            prepared: Vec::new(),
            retrieved: Vec::new(),
            prepared_at: Vec::new(),
        };
        for (r, n) in self.prepare(ready).into_iter().zip(at) {
            match r {
                Ok((p, found)) => {
                    staged.prepared.push(p);
                    staged.retrieved.push(found);
                    staged.prepared_at.push(n);
                }
                Err(e) => staged.out[n] = Some(Err(e)),
            }
        }
        staged
    }

    /// The second half of [`Pipeline::caption_each`]: beam search over a staged batch, one
    /// result per image given to [`Pipeline::stage`], in order; the outer error is a failure of
    /// the shared forward pass.
    pub fn finish(
        &self,
        staged: Staged,
        generation: &GenerationConfig,
    ) -> Result<Vec<Result<PipelineCaption>>> {
        let Staged {
            mut out,
            prepared,
            retrieved,
            prepared_at,
        } = staged;
        let captions = self.caption_prepared(&prepared, generation)?;
        for ((c, retrieved), n) in captions.into_iter().zip(retrieved).zip(prepared_at) {
            out[n] = Some(Ok(PipelineCaption {
                caption: c.caption,
                generated_ids: c.generated_ids,
                prompt_ids: c.prompt_ids,
                retrieved_captions: c.retrieved_captions,
                retrieved,
            }));
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Input("an image was not captioned".into()))))
            .collect())
    }
}

/// A batch decoded, retrieved for and encoded by [`Pipeline::stage`], waiting for
/// [`Pipeline::finish`].
pub struct Staged {
    /// Per input: its result where it already failed.
    out: Vec<Option<Result<PipelineCaption>>>,
    prepared: Vec<Prepared>,
    retrieved: Vec<Option<Retrieved>>,
    /// Which input each prepared image is.
    prepared_at: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Pipeline>();
        // A staged batch crosses to the thread that finishes it (`smallcap caption`).
        fn send<T: Send>() {}
        send::<Staged>();
    }
}
