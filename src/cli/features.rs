//! `smallcap features`: the vision tower's `last_hidden_state` of every image of a Karpathy
//! annotation file, stored for training (see [`smallcap::train::features`]), or imported from the
//! reference's HDF5 feature file (`--from-hdf5`). Resumable: images whose features are already in
//! the output folder are skipped.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::Args;

use smallcap::checkpoint::{read_tensors, vision_tensors};
use smallcap::config::VisionConfig;
use smallcap::models::ClipVision;
use smallcap::train::dataset::{Annotations, KarpathyImage};
use smallcap::train::features::{FeatureStore, FeatureWriter};
use smallcap::train::init::Pretrained;

#[derive(Args)]
pub struct FeaturesArgs {
    /// Folder of the images (looked up as the name after the last `_`, then `filepath/filename`, then `filename`).
    #[arg(long, required_unless_present = "from_hdf5")]
    images: Option<PathBuf>,
    /// Karpathy-split annotations (`dataset_coco.json`).
    #[arg(long, required_unless_present = "from_hdf5")]
    annotations: Option<PathBuf>,
    /// Import the reference's HDF5 feature file (`features/train.hdf5` of `extract_features.py`)
    /// instead of encoding images. Needs a build with `--features hdf5`; without one, convert with
    /// `python -c "import h5py,sys; from safetensors.numpy import save_file; f=h5py.File(sys.argv[1]); save_file({k: f[k][()] for k in f.keys()}, sys.argv[2])" train.hdf5 OUT/train.safetensors`
    #[arg(long, value_name = "FILE", conflicts_with_all = ["images", "annotations", "splits", "encoder", "batch_size"])]
    from_hdf5: Option<PathBuf>,
    /// The CLIP checkpoint (folder or hub id; `vision_model.*` weights), or a SmallCap checkpoint (`encoder.*`).
    #[arg(long, default_value = "openai/clip-vit-base-patch32")]
    encoder: String,
    /// Output folder of `*.safetensors` feature files.
    #[arg(long)]
    out: PathBuf,
    /// Store f16 instead of f32.
    #[arg(long)]
    f16: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Images per output file.
    #[arg(long, default_value_t = 1024)]
    chunk: usize,
    /// Only these splits (repeatable; default: every image).
    #[arg(long = "split")]
    splits: Vec<String>,
    /// Where the encoder runs: cpu, cuda[:N] (a `cuda` build), or auto (the first GPU if any).
    #[arg(long, default_value = "auto", value_name = "cpu|cuda[:N]|auto")]
    device: String,
}

/// The image file of an annotation entry.
fn image_path(dir: &Path, im: &KarpathyImage) -> Option<PathBuf> {
    let mut candidates = vec![dir.join(im.short_name())];
    if let Some(fp) = &im.filepath {
        candidates.push(dir.join(fp).join(&im.filename));
    }
    candidates.push(dir.join(&im.filename));
    candidates.into_iter().find(|p| p.is_file())
}

/// The vision tower of a CLIP or SmallCap checkpoint.
pub fn load_vision(spec: &str, device: &Device) -> anyhow::Result<(ClipVision, VisionConfig)> {
    let pre = Pretrained::resolve(spec)?;
    let is_smallcap = pre.config.get("decoder").is_some();
    let section = if is_smallcap {
        &pre.config["encoder"]
    } else {
        &pre.config
    };
    let cfg = VisionConfig::from_value(section)
        .map_err(|e| anyhow::anyhow!("{spec}: config.json: {e}"))?;
    // The tensor names of the tower, as a SmallCap checkpoint holds them.
    let names: Vec<String> = vision_tensors(&cfg).into_iter().map(|t| t.name).collect();
    let source = |n: &str| {
        if is_smallcap {
            n.to_string()
        } else {
            n.replacen("encoder.", "vision_model.", 1)
        }
    };
    let wanted: Vec<String> = names.iter().map(|n| source(n)).collect();
    let refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let loaded = read_tensors(&pre.weights, &refs, device)?;
    let mut tensors = std::collections::HashMap::new();
    for n in &names {
        let t = loaded
            .get(&source(n))
            .with_context(|| format!("{}: no tensor {}", pre.weights.display(), source(n)))?;
        tensors.insert(n.clone(), t.clone());
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let vision = ClipVision::load(vb.pp("encoder"), &cfg)
        .with_context(|| format!("{}", pre.weights.display()))?;
    Ok((vision, cfg))
}

pub fn run(args: FeaturesArgs) -> anyhow::Result<ExitCode> {
    if args.batch_size == 0 || args.chunk == 0 {
        bail!("--batch-size and --chunk must be at least 1");
    }
    if let Some(file) = &args.from_hdf5 {
        return import_hdf5(&args, file);
    }
    let (Some(annotations), Some(image_dir)) = (&args.annotations, &args.images) else {
        bail!("--images and --annotations are required unless --from-hdf5 is given");
    };
    let ann = Annotations::from_file(annotations)?;
    let splits: Vec<&str> = args.splits.iter().map(String::as_str).collect();
    let images: Vec<&KarpathyImage> = ann
        .images
        .iter()
        .filter(|im| splits.is_empty() || splits.contains(&im.split.as_str()))
        .collect();
    if images.is_empty() {
        bail!("{}: no images to encode", annotations.display());
    }
    let device = super::device(&args.device)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the output folder", args.out.display()))?;
    let done = FeatureStore::open(&args.out)?;
    let mut todo = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for im in images {
        if done.contains(&im.key()) || !seen.insert(im.key()) {
            continue;
        }
        let path = image_path(image_dir, im).with_context(|| {
            format!(
                "{}: no image file for {} ({}) in {}",
                annotations.display(),
                im.cocoid,
                im.filename,
                image_dir.display()
            )
        })?;
        todo.push((im.key(), path));
    }
    let already = done.len();
    drop(done);
    if todo.is_empty() {
        return report(0, &args.out, already);
    }
    let (vision, cfg) = load_vision(&args.encoder, &device)?;
    let size = cfg.image_size;
    let mut writer = FeatureWriter::new(&args.out, args.f16)?;
    let bar = super::progress_bar(todo.len(), "images");
    for chunk in todo.chunks(args.chunk) {
        let mut items = Vec::with_capacity(chunk.len());
        for batch in chunk.chunks(args.batch_size) {
            let pixels = batch
                .iter()
                .map(|(_, path)| {
                    let img = smallcap_image::load_rgb(path)?;
                    let chw = smallcap_image::clip_feature_extractor(&img, size as u32);
                    Ok(Tensor::from_vec(chw, (3, size, size), &device)?)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let states = vision.forward(&Tensor::stack(&pixels, 0)?)?;
            for (i, (id, _)) in batch.iter().enumerate() {
                items.push((id.clone(), states.get(i)?));
            }
            bar.inc(batch.len() as u64);
        }
        writer.write_chunk(&items)?;
    }
    bar.finish_and_clear();
    report(todo.len(), &args.out, already)
}

/// Says what a run added to the output folder.
fn report(written: usize, out: &Path, already: usize) -> anyhow::Result<ExitCode> {
    if written == 0 {
        eprintln!(
            "all {already} images already have features in {}",
            out.display()
        );
    } else {
        eprintln!(
            "wrote features of {written} images to {} ({already} were already there)",
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies the datasets of the reference's HDF5 file that the output folder lacks into it.
#[cfg(feature = "hdf5")]
fn import_hdf5(args: &FeaturesArgs, file: &Path) -> anyhow::Result<ExitCode> {
    let h5 = smallcap::train::hdf5::Hdf5Features::open(file)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the output folder", args.out.display()))?;
    let done = FeatureStore::open(&args.out)?;
    let todo: Vec<&String> = h5.ids().iter().filter(|id| !done.contains(id)).collect();
    let already = h5.ids().len() - todo.len();
    drop(done);
    if todo.is_empty() {
        return report(0, &args.out, already);
    }
    let mut writer = FeatureWriter::new(&args.out, args.f16)?;
    let bar = super::progress_bar(todo.len(), "images");
    for chunk in todo.chunks(args.chunk) {
        let items = chunk
            .iter()
            .map(|id| Ok(((*id).clone(), h5.read(id, &Device::Cpu)?)))
            .collect::<smallcap::Result<Vec<_>>>()?;
        writer.write_chunk(&items)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    report(todo.len(), &args.out, already)
}

#[cfg(not(feature = "hdf5"))]
fn import_hdf5(_: &FeaturesArgs, file: &Path) -> anyhow::Result<ExitCode> {
    bail!(
        "{}: this smallcap was built without HDF5 support; rebuild it with `--features hdf5` \
         (needs libhdf5, e.g. Debian's libhdf5-dev) or convert the file with the Python line \
         in `smallcap features --help`",
        file.display()
    )
}
