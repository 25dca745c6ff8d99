//! The captioning API: load a checkpoint and tokenizer once, then caption many images, several
//! sharing each forward pass. `Captioner` is `Send + Sync`, so a server can share one.
//!
//! ```
//! use smallcap::captioner::{Captioner, Retrieval};
//! # fn main() -> smallcap::Result<()> {
//! let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smallcap-tiny");
//! let captioner = Captioner::from_specs(
//!     &format!("{fixture}/model"),
//!     Some(&format!("{fixture}/tokenizer")),
//!     &candle_core::Device::Cpu,
//! )?;
//! let pixels = captioner.load_image(format!("{fixture}/images/chelsea.png").as_ref())?;
//! let captions = vec!["a dog on a beach".to_string(); 4];
//! let item = captioner.prepare(pixels, Retrieval::Captions(captions), 4)?;
//! let out = captioner.caption(&[item], &captioner.default_generation())?;
//! assert!(!out[0].generated_ids.is_empty());
//! println!("{}", out[0].caption);
//! # Ok(()) }
//! ```

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::generation::{generate, GenerationConfig, Request};
use crate::hub;
use crate::kernels::packed_linear::WeightType;
use crate::models::SmallCap;
use crate::prompt;
use crate::tokenizer::Tokenizer;

/// Where an image's prompt captions come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Retrieval {
    /// The no-retrieval prompt `This image shows `.
    None,
    /// Retrieved captions, best first; the first k are used.
    Captions(Vec<String>),
}

/// An image ready to caption: its pixels and its prompt.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `[3, size, size]`, as CLIPFeatureExtractor outputs.
    pub pixel_values: Tensor,
    /// The prompt's GPT-2 token ids.
    pub prompt_ids: Vec<u32>,
    /// The captions in the prompt.
    pub retrieved_captions: Vec<String>,
    /// The vision tower's `last_hidden_state` `[tokens, n_embd]` when already computed (see
    /// [`Captioner::encode`]); otherwise [`Captioner::caption`] encodes the pixels.
    pub encoder_hidden_states: Option<Tensor>,
}

/// One image's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Caption {
    /// The caption, post-processed as the reference's `postprocess_preds`.
    pub caption: String,
    /// The new tokens as the reference's `generate` returns them (eos included when emitted).
    pub generated_ids: Vec<u32>,
    /// The prompt's GPT-2 token ids.
    pub prompt_ids: Vec<u32>,
    /// The captions in the prompt.
    pub retrieved_captions: Vec<String>,
}

/// A loaded SmallCap and its tokenizer: prepared images in, captions out.
pub struct Captioner {
    model: SmallCap,
    tokenizer: Tokenizer,
    device: Device,
}

impl Captioner {
    /// Wraps a loaded model; its decoder is packed for decoding in f32 unless
    /// [`SmallCap::pack_decoder`] already chose a weight type.
    pub fn new(mut model: SmallCap, tokenizer: Tokenizer, device: Device) -> Result<Self> {
        tokenizer.check_for(&model.config.decoder)?;
        model.pack_decoder(WeightType::F32)?;
        Ok(Self {
            model,
            tokenizer,
            device,
        })
    }

    /// Loads from a model folder or hub id, and a tokenizer folder or hub id. Without a
    /// tokenizer, the model folder's own `vocab.json`/`merges.txt` are used when present,
    /// otherwise the hub's `gpt2` (`facebook/opt-125m` for an OPT checkpoint).
    pub fn from_specs(model: &str, tokenizer: Option<&str>, device: &Device) -> Result<Self> {
        Self::from_specs_with_weights(model, tokenizer, device, WeightType::F32)
    }

    /// [`Captioner::from_specs`] with the decoder's weights kept in `weights` (f32, f16, bf16 or int8).
    pub fn from_specs_with_weights(
        model: &str,
        tokenizer: Option<&str>,
        device: &Device,
        weights: WeightType,
    ) -> Result<Self> {
        let files = hub::model_files(model)?;
        let tokenizer_dir = hub::tokenizer_dir_for(&files, tokenizer)?;
        let tokenizer = Tokenizer::from_dir(&tokenizer_dir)?;
        let mut model = SmallCap::load(&files, device)?;
        model.pack_decoder(weights)?;
        Self::new(model, tokenizer, device.clone())
    }

    /// The model.
    pub fn model(&self) -> &SmallCap {
        &self.model
    }

    /// The decoder's tokenizer (GPT-2's BPE, or OPT's).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// infer.py's decoding settings with this checkpoint's eos and pad tokens.
    pub fn default_generation(&self) -> GenerationConfig {
        GenerationConfig {
            eos_token_id: self.model.config.eos_token_id,
            pad_token_id: self.model.config.pad_token_id,
            ..GenerationConfig::default()
        }
    }

    /// Reads and preprocesses an image file (see [`smallcap_image`]).
    pub fn load_image(&self, path: &Path) -> Result<Tensor> {
        let img = smallcap_image::load_rgb(path)?;
        self.pixel_values(&img)
    }

    /// Decodes and preprocesses an image held in memory (`name` is used in errors).
    pub fn decode_image(&self, bytes: &[u8], name: &str) -> Result<Tensor> {
        let img = smallcap_image::decode_rgb(bytes, name)?;
        self.pixel_values(&img)
    }

    /// CLIPFeatureExtractor at the encoder's resolution: `[3, size, size]`.
    pub fn pixel_values(&self, img: &smallcap_image::RgbImage) -> Result<Tensor> {
        let size = self.model.config.encoder.image_size;
        let chw = smallcap_image::clip_feature_extractor(img, size as u32);
        Ok(Tensor::from_vec(chw, (3, size, size), &self.device)?)
    }

    /// The prompt ids for `retrieval` with the first `k` captions, checked against the model.
    pub fn prompt_ids(&self, retrieval: &Retrieval, k: usize) -> Result<(Vec<u32>, Vec<String>)> {
        let (text, used) = match retrieval {
            Retrieval::None => (prompt::prompt_text(None, 0), Vec::new()),
            Retrieval::Captions(caps) => {
                if k == 0 {
                    return Err(Error::Input(
                        "k must be at least 1 (the prompt without captions is --no-retrieval)"
                            .into(),
                    ));
                }
                if k > caps.len() {
                    return Err(Error::Input(format!(
                        "k = {k}, but only {} retrieved captions were given",
                        caps.len()
                    )));
                }
                (prompt::prompt_text(Some(caps), k), caps[..k].to_vec())
            }
        };
        let ids = self.tokenizer.encode(&text)?;
        let n_positions = self.model.config.decoder.n_positions;
        if ids.len() >= n_positions {
            return Err(Error::Input(format!(
                "the prompt has {} tokens; the model has only {n_positions} positions",
                ids.len()
            )));
        }
        Ok((ids, used))
    }

    /// Pairs an image's pixels with its prompt.
    pub fn prepare(
        &self,
        pixel_values: Tensor,
        retrieval: Retrieval,
        k: usize,
    ) -> Result<Prepared> {
        let (prompt_ids, retrieved_captions) = self.prompt_ids(&retrieval, k)?;
        Ok(Prepared {
            pixel_values,
            prompt_ids,
            retrieved_captions,
            encoder_hidden_states: None,
        })
    }

    /// The vision tower on one image's `pixel_values` `[3, size, size]`: its
    /// `encoder_hidden_states` `[tokens, n_embd]`, for reuse (retrieval from the same tower,
    /// [`Prepared::encoder_hidden_states`]).
    pub fn encode(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.model.encode(&pixel_values.unsqueeze(0)?)?.squeeze(0)?)
    }

    /// Captions a batch: one encoder pass over all images, then decoding with every step shared.
    pub fn caption(
        &self,
        items: &[Prepared],
        generation: &GenerationConfig,
    ) -> Result<Vec<Caption>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // One encoder pass over the images not encoded yet.
        let pixels: Vec<&Tensor> = items
            .iter()
            .filter(|p| p.encoder_hidden_states.is_none())
            .map(|p| &p.pixel_values)
            .collect();
        let mut fresh = Vec::with_capacity(pixels.len());
        if !pixels.is_empty() {
            let encoded = self.model.encode(&Tensor::stack(&pixels, 0)?)?;
            for i in 0..pixels.len() {
                fresh.push(encoded.get(i)?);
            }
        }
        let mut fresh = fresh.into_iter();
        let mut requests = Vec::with_capacity(items.len());
        for p in items {
            let states = match &p.encoder_hidden_states {
                Some(states) => states.clone(),
                None => fresh
                    .next()
                    .ok_or_else(|| Error::Input("an image was not encoded".into()))?,
            };
            requests.push(Request {
                prompt_ids: &p.prompt_ids,
                encoder_hidden_states: states,
            });
        }
        let generated = generate(&self.model.decoder, &requests, generation)?;
        items
            .iter()
            .zip(generated)
            .map(|(p, generated_ids)| {
                let mut full = p.prompt_ids.clone();
                full.extend(&generated_ids);
                Ok(Caption {
                    caption: self.tokenizer.caption(&full)?,
                    generated_ids,
                    prompt_ids: p.prompt_ids.clone(),
                    retrieved_captions: p.retrieved_captions.clone(),
                })
            })
            .collect()
    }
}
