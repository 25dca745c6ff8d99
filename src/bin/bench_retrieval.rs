//! `bench_retrieval`: per-image retrieval time at full size — CLIP RN50x64 (width 128, layers
//! (3, 15, 36, 10), 448 px, embed 1024, random weights made here) encoding one image followed by
//! an exact top-4 search over a datastore of 565,497 random unit vectors (the COCO store's
//! shape, generated once into `target/bench-retrieval/` and reused) — and the lighter options:
//! HF CLIP ViT-B/32 as retrieval encoder (224 px, 512-d store), and reusing the captioning
//! encoder's ViT-B/32 output (only `post_layernorm` + `visual_projection` + search are extra).
//! Prints a Markdown table (median of the runs).
//!
//! `cargo run --release --bin bench_retrieval -- [--runs 3] [--n 565497] [--image IMG]`

#[path = "support/measure.rs"]
mod measure;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Parser;

use smallcap::models::clip_openai::{ClipDims, OpenAiClip, VisionLayers, Weights};
use smallcap::EncoderPrecision;
use smallcap_datastore::faiss::FlatIpWriter;
use smallcap_datastore::store::{normalize_l2, StoreOptions};
use smallcap_datastore::{Datastore, Dtype};
use smallcap_util::rng::SplitMix64;
use smallcap_util::stats::median;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Datastore size.
    #[arg(long, default_value_t = 565_497)]
    n: usize,
    /// Where the random stores are kept.
    #[arg(long, default_value = "target/bench-retrieval")]
    dir: PathBuf,
    /// The query image.
    #[arg(
        long,
        default_value = "tests/fixtures/smallcap-tiny/images/synth_0_640x480_RGB.jpg"
    )]
    image: PathBuf,
    /// Skip the RN50x64 rows.
    #[arg(long)]
    no_resnet: bool,
    /// The RN50x64 kernels to time, the first the baseline of the agreement columns: `nchw`
    /// (f32: Winograd 3 × 3 convolutions and GEMMs), `split3` / `split2` (f32 operands split into 3 / 2 bf16 parts on the bf16
    /// blocks), `bf16` (`--encoder-precision bf16`).
    #[arg(long, value_delimiter = ',', default_value = "nchw,split3,split2,bf16")]
    kernels: Vec<String>,
    /// Images whose embeddings and top-4 are compared between kernels.
    #[arg(long, default_value = "tests/fixtures/smallcap-tiny/images")]
    agreement_images: PathBuf,
    /// Only time opening a cached hub datastore (`hf://bench/coco/coco_index`, an `n` × 1024
    /// FAISS file with COCO-length captions, laid out in a hub cache under `dir`).
    #[arg(long)]
    hub_open: bool,
    /// Only write the random RN50x64 as a PyTorch checkpoint (`dir/RN50x64.pt`) and the store of
    /// `n` random 1024-d vectors, then print their paths: loading is timed on them in fresh
    /// processes (`smallcap retrieve --encoder dir/RN50x64.pt ...`, BENCHMARKS.md).
    #[arg(long)]
    write_archive: bool,
}

/// A hub cache under `dir/hf` holding `bench/coco` at one commit: `coco_index` (a flat-IP FAISS
/// file of the random `n` × 1024 store) and `coco_index_captions.json` (`n` captions of about
/// COCO's length). Made once.
fn hub_cache(dir: &Path, n: usize) -> anyhow::Result<PathBuf> {
    let home = dir.join(format!("hf-{n}"));
    let repo = home.join("hub/models--bench--coco");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    if snapshot.join("coco_index_captions.json").is_file() {
        return Ok(home);
    }
    std::fs::create_dir_all(&snapshot)?;
    std::fs::create_dir_all(repo.join("refs"))?;
    let store = random_store(dir, n, 1024)?;
    let tmp_caps = dir.join("hub-captions.tmp.json");
    store.to_faiss(snapshot.join("coco_index"), &tmp_caps)?;
    std::fs::remove_file(&tmp_caps)?;
    let words = [
        "a", "man", "riding", "on", "the", "back", "of", "horse", "near", "field",
    ];
    let caps: Vec<String> = (0..n)
        .map(|i| {
            let w: Vec<&str> = (0..10)
                .map(|j| words[(i * 7 + j * 3) % words.len()])
                .collect();
            format!("{} {i}", w.join(" "))
        })
        .collect();
    std::fs::write(
        snapshot.join("coco_index_captions.json"),
        serde_json::to_vec(&caps)?,
    )?;
    std::fs::write(repo.join("refs/main"), commit)?;
    Ok(home)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Opening `hf://bench/coco/coco_index` from the cache, offline: time and resident memory.
fn time_hub_open(args: &Args) -> anyhow::Result<()> {
    let home = hub_cache(&args.dir, args.n)?;
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let spec = "hf://bench/coco/coco_index";
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..args.runs {
        let before = rss_mib();
        let t = Instant::now();
        let store = smallcap::retrieval::CaptionStore::open(spec)?;
        times.push(t.elapsed().as_secs_f64());
        rss.push(rss_mib() - before);
        assert_eq!(store.len(), args.n);
        drop(store);
    }
    let index = home.join(
        "hub/models--bench--coco/snapshots/0123456789abcdef0123456789abcdef01234567/coco_index",
    );
    println!(
        "| open {spec} ({} × 1024, {:.2} GB file, cached) | {:.3} s | +{:.0} MiB resident (peak {:.0} MiB) |",
        args.n,
        std::fs::metadata(index)?.len() as f64 / 1e9,
        median(times),
        median(rss),
        measure::peak_rss_mib()
    );
    Ok(())
}

/// SplitMix64 uniform in [-1, 1).
fn uniform_pm1(rng: &mut SplitMix64) -> f32 {
    rng.next_f32() * 2.0 - 1.0
}

/// A store of `n` random unit vectors of dimension `dim` at `dir/random_{n}x{dim}` (made once).
fn random_store(dir: &Path, n: usize, dim: usize) -> anyhow::Result<Datastore> {
    let out = dir.join(format!("random_{n}x{dim}"));
    if out.is_dir() {
        return Ok(Datastore::open(&out)?);
    }
    std::fs::create_dir_all(dir)?;
    let index = dir.join(format!("random_{n}x{dim}.faiss.tmp"));
    let caps = dir.join(format!("random_{n}.captions.json.tmp"));
    let mut w = FlatIpWriter::create(&index, dim, n)?;
    let mut rng = SplitMix64(dim as u64);
    let mut rows = vec![0f32; 4096 * dim];
    let mut left = n;
    while left > 0 {
        let m = left.min(4096);
        rows[..m * dim]
            .iter_mut()
            .for_each(|x| *x = uniform_pm1(&mut rng));
        normalize_l2(&mut rows[..m * dim], dim);
        w.push(&rows[..m * dim])?;
        left -= m;
    }
    w.finish()?;
    let names: Vec<String> = (0..n).map(|i| format!("caption {i}")).collect();
    std::fs::write(&caps, serde_json::to_vec(&names)?)?;
    let opts = StoreOptions {
        encoder: "random".into(),
        dtype: Dtype::F32,
    };
    let ds = Datastore::from_faiss(&index, &caps, &out, &opts)?;
    std::fs::remove_file(&index)?;
    std::fs::remove_file(&caps)?;
    Ok(ds)
}

type Init<'a> = dyn FnMut(String, &[usize], f64) -> anyhow::Result<()> + 'a;

/// Random OpenAI text-tower weights (12 layers of width `tw`, projection to `embed`).
fn add_text_tower(t: &mut Init<'_>, tw: usize, embed: usize) -> anyhow::Result<()> {
    t("token_embedding.weight".into(), &[49408, tw], 0.02)?;
    t("positional_embedding".into(), &[77, tw], 0.01)?;
    t("text_projection".into(), &[tw, embed], 0.03)?;
    t("ln_final.weight".into(), &[tw], -1.0)?;
    t("ln_final.bias".into(), &[tw], 0.0)?;
    add_blocks(t, "transformer", tw, 12)
}

/// Random `ResidualAttentionBlock` weights at `<prefix>.resblocks.{i}`.
fn add_blocks(t: &mut Init<'_>, prefix: &str, tw: usize, layers: usize) -> anyhow::Result<()> {
    for i in 0..layers {
        let p = format!("{prefix}.resblocks.{i}");
        t(format!("{p}.attn.in_proj_weight"), &[3 * tw, tw], 0.02)?;
        t(format!("{p}.attn.in_proj_bias"), &[3 * tw], 0.0)?;
        t(format!("{p}.attn.out_proj.weight"), &[tw, tw], 0.02)?;
        t(format!("{p}.attn.out_proj.bias"), &[tw], 0.0)?;
        for ln in ["ln_1", "ln_2"] {
            t(format!("{p}.{ln}.weight"), &[tw], -1.0)?;
            t(format!("{p}.{ln}.bias"), &[tw], 0.0)?;
        }
        t(format!("{p}.mlp.c_fc.weight"), &[4 * tw, tw], 0.02)?;
        t(format!("{p}.mlp.c_fc.bias"), &[4 * tw], 0.0)?;
        t(format!("{p}.mlp.c_proj.weight"), &[tw, 4 * tw], 0.02)?;
        t(format!("{p}.mlp.c_proj.bias"), &[tw], 0.0)?;
    }
    Ok(())
}

/// A filler for random weights: std > 0: N(0, std²); std == 0: zeros; std < 0: ones.
fn filler<'a>(
    m: &'a mut HashMap<String, Tensor>,
    dev: &'a Device,
) -> impl FnMut(String, &[usize], f64) -> anyhow::Result<()> + 'a {
    move |name, shape, std| {
        let v = if std > 0.0 {
            (Tensor::randn(0f32, 1f32, shape, dev)? * std)?
        } else if std == 0.0 {
            Tensor::zeros(shape, DType::F32, dev)?
        } else {
            Tensor::ones(shape, DType::F32, dev)?
        };
        m.insert(name, v);
        Ok(())
    }
}

/// Random OpenAI ViT-B/32 weights (the architecture of SmallCap's captioning encoder).
fn vit_b32_weights(dev: &Device) -> anyhow::Result<(Weights, ClipDims)> {
    let dims = ClipDims {
        embed_dim: 512,
        image_resolution: 224,
        vision_layers: VisionLayers::Vit(12),
        vision_width: 768,
        vision_patch_size: Some(32),
        context_length: 77,
        vocab_size: 49408,
        transformer_width: 512,
        transformer_heads: 8,
        transformer_layers: 12,
    };
    let mut m = HashMap::new();
    {
        let mut t = filler(&mut m, dev);
        let w = 768;
        t("visual.conv1.weight".into(), &[w, 3, 32, 32], 0.02)?;
        t("visual.class_embedding".into(), &[w], 0.02)?;
        t("visual.positional_embedding".into(), &[50, w], 0.01)?;
        for ln in ["ln_pre", "ln_post"] {
            t(format!("visual.{ln}.weight"), &[w], -1.0)?;
            t(format!("visual.{ln}.bias"), &[w], 0.0)?;
        }
        t("visual.proj".into(), &[w, 512], 0.03)?;
        add_blocks(&mut t, "visual.transformer", w, 12)?;
        add_text_tower(&mut t, 512, 512)?;
    }
    Ok((Weights::new(Path::new("<random ViT-B/32>"), m), dims))
}

/// Random RN50x64 weights (BatchNorm statistics included), in OpenAI key names.
fn rn50x64_weights(dev: &Device) -> anyhow::Result<(Weights, ClipDims)> {
    let (m, dims) = rn50x64_tensors(dev)?;
    Ok((Weights::new(Path::new("<random RN50x64>"), m), dims))
}

/// The tensors of [`rn50x64_weights`] by name.
fn rn50x64_tensors(dev: &Device) -> anyhow::Result<(HashMap<String, Tensor>, ClipDims)> {
    let dims = ClipDims {
        embed_dim: 1024,
        image_resolution: 448,
        vision_layers: VisionLayers::ResNet([3, 15, 36, 10]),
        vision_width: 128,
        vision_patch_size: None,
        context_length: 77,
        vocab_size: 49408,
        transformer_width: 1024,
        transformer_heads: 16,
        transformer_layers: 12,
    };
    let mut m: HashMap<String, Tensor> = HashMap::new();
    let mut t = filler(&mut m, dev);
    let mut convs: Vec<(String, String, usize, usize, usize)> = Vec::new();
    let w = 128;
    for (i, (ci, co)) in [(3, w / 2), (w / 2, w / 2), (w / 2, w)]
        .into_iter()
        .enumerate()
    {
        convs.push((
            format!("visual.conv{}", i + 1),
            format!("visual.bn{}", i + 1),
            ci,
            co,
            3,
        ));
    }
    let mut inplanes = w;
    for (s, &blocks) in [3usize, 15, 36, 10].iter().enumerate() {
        let planes = w << s;
        for b in 0..blocks {
            let p = format!("visual.layer{}.{b}", s + 1);
            convs.push((
                format!("{p}.conv1"),
                format!("{p}.bn1"),
                inplanes,
                planes,
                1,
            ));
            convs.push((format!("{p}.conv2"), format!("{p}.bn2"), planes, planes, 3));
            convs.push((
                format!("{p}.conv3"),
                format!("{p}.bn3"),
                planes,
                planes * 4,
                1,
            ));
            if b == 0 {
                convs.push((
                    format!("{p}.downsample.0"),
                    format!("{p}.downsample.1"),
                    inplanes,
                    planes * 4,
                    1,
                ));
            }
            inplanes = planes * 4;
        }
    }
    for (conv, bn, ci, co, k) in convs {
        t(
            format!("{conv}.weight"),
            &[co, ci, k, k],
            (1.0 / (ci * k * k) as f64).sqrt(),
        )?;
        t(format!("{bn}.weight"), &[co], -1.0)?;
        t(format!("{bn}.bias"), &[co], 0.0)?;
        t(format!("{bn}.running_mean"), &[co], 0.0)?;
        t(format!("{bn}.running_var"), &[co], -1.0)?;
    }
    let e = w * 32;
    t(
        "visual.attnpool.positional_embedding".into(),
        &[197, e],
        0.02,
    )?;
    for p in ["q_proj", "k_proj", "v_proj"] {
        t(format!("visual.attnpool.{p}.weight"), &[e, e], 0.02)?;
        t(format!("visual.attnpool.{p}.bias"), &[e], 0.0)?;
    }
    t("visual.attnpool.c_proj.weight".into(), &[1024, e], 0.02)?;
    t("visual.attnpool.c_proj.bias".into(), &[1024], 0.0)?;
    add_text_tower(&mut t, 1024, 1024)?;
    drop(t);
    Ok((m, dims))
}

/// `--write-archive`: the random RN50x64 at `dir/RN50x64.pt` and a store of `n` vectors.
fn write_archive(args: &Args) -> anyhow::Result<()> {
    let store = random_store(&args.dir, args.n, 1024)?;
    let path = args.dir.join("RN50x64.pt");
    if !path.is_file() {
        let (m, _) = rn50x64_tensors(&Device::Cpu)?;
        let mut tensors: Vec<(String, Tensor)> = m.into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let tmp = args.dir.join("RN50x64.pt.tmp");
        smallcap::pytorch_writer::write_state_dict(&tmp, &tensors)?;
        std::fs::rename(&tmp, &path)?;
    }
    println!("{}", path.display());
    println!("{}", store.dir().display());
    Ok(())
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat` (0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which ends with ')'): utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.hub_open {
        println!("| what | median wall (runs: {}) | memory |", args.runs);
        println!("|---|---|---|");
        return time_hub_open(&args);
    }
    if args.write_archive {
        return write_archive(&args);
    }
    let dev = Device::Cpu;
    let img = smallcap_image::load(&args.image)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "threads: {threads}, store: {} vectors, runs: {}",
        args.n, args.runs
    );
    println!();
    println!("| path | preprocess | encode (wall / CPU) | search (k=4, wall / CPU) | total per image (wall) |");
    println!("|---|---|---|---|---|");
    if !args.no_resnet {
        let store = random_store(&args.dir, args.n, 1024)?;
        let (w, dims) = rn50x64_weights(&dev)?;
        let images = agreement_images(&args.agreement_images, dims.image_resolution)?;
        let mut baseline: Option<(String, Vec<f32>, Vec<Vec<u64>>)> = None;
        let mut agreement = Vec::new();
        for kernel in &args.kernels {
            let (precision, split) = match kernel.as_str() {
                "nchw" => (EncoderPrecision::F32, "off"),
                "split3" => (EncoderPrecision::F32, "3"),
                "split2" => (EncoderPrecision::F32, "2"),
                "bf16" => (EncoderPrecision::Bf16, "3"),
                other => anyhow::bail!("unknown kernel {other:?}"),
            };
            // SAFETY: no other thread reads the environment while the model loads.
            unsafe { std::env::set_var("SMALLCAP_F32_SPLIT", split) };
            let model = OpenAiClip::from_weights(&w, dims.clone(), &dev, precision)?;
            time_encoder(
                &args,
                &img,
                &model,
                &store,
                &format!("RN50x64, 448 px, {kernel}"),
            )?;
            let (emb, top) = embed_and_search(&model, &images, &store)?;
            match &baseline {
                None => baseline = Some((kernel.clone(), emb, top)),
                Some((name, e0, t0)) => {
                    let diff = e0
                        .iter()
                        .zip(&emb)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    // ‖a − b‖ / ‖b‖ per image (the fixture tests' measure), the worst.
                    let rel = e0
                        .chunks(1024)
                        .zip(emb.chunks(1024))
                        .map(|(b, a)| {
                            a.iter()
                                .zip(b)
                                .map(|(x, y)| (x - y).powi(2))
                                .sum::<f32>()
                                .sqrt()
                        })
                        .fold(0f32, f32::max);
                    let same = t0.iter().zip(&top).filter(|(a, b)| a == b).count();
                    agreement.push(format!(
                        "| {kernel} vs {name} | {diff:.2e} | {rel:.2e} | {same} of {} |",
                        top.len()
                    ));
                }
            }
        }
        drop(w);
        if !agreement.is_empty() {
            println!();
            println!("| agreement | max abs difference of normalised embeddings | worst relative (L2) difference | identical top-4 (ids and order) |");
            println!("|---|---|---|---|");
            for row in agreement {
                println!("{row}");
            }
            println!();
        }
    }
    {
        let store = random_store(&args.dir, args.n, 512)?;
        let (w, dims) = vit_b32_weights(&dev)?;
        let model = OpenAiClip::from_weights(&w, dims, &dev, EncoderPrecision::F32)?;
        drop(w);
        time_encoder(
            &args,
            &img,
            &model,
            &store,
            "ViT-B/32 retrieval encoder, 224 px, fp32",
        )?;
        time_shared_vision(&args, &store)?;
    }
    Ok(())
}

/// Reusing the captioning encoder's ViT-B/32: its `last_hidden_state` is computed for captioning
/// anyway, so retrieval adds `post_layernorm` of the class token, `visual_projection` and the
/// search ([`smallcap::retrieval::RetrievalEncoder::encode_from_vision_states`]).
fn time_shared_vision(args: &Args, store: &Datastore) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let states = Tensor::randn(0f32, 1f32, (1, 50, 768), &dev)?;
    let ln = candle_nn::LayerNorm::new(
        Tensor::ones(768, DType::F32, &dev)?,
        Tensor::zeros(768, DType::F32, &dev)?,
        1e-5,
    );
    let proj = (Tensor::randn(0f32, 1f32, (512, 768), &dev)? * 0.03)?;
    let head = smallcap::models::clip_vision::ProjectionHead::new(ln, &proj)?;
    let (mut enc, mut search) = (vec![], vec![]);
    for _ in 0..args.runs {
        let t1 = Instant::now();
        let mut q = head.forward(&states)?.flatten_all()?.to_vec1::<f32>()?;
        smallcap_datastore::store::normalize_l2(&mut q, 512);
        let t2 = Instant::now();
        let hits = store.search(&q, 512, 4)?;
        let t3 = Instant::now();
        assert_eq!(hits[0].len(), 4);
        enc.push((t2 - t1).as_secs_f64());
        search.push((t3 - t2).as_secs_f64());
    }
    let (e, s) = (median(enc), median(search));
    println!(
        "| reuse the captioning ViT-B/32 (post-LN + projection only) | 0 (shared) | {e:.4} s | {s:.3} s | {:.3} s |",
        e + s
    );
    Ok(())
}

/// The images of `dir`, as `clip._transform(r)` pixels.
fn agreement_images(dir: &Path, r: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        if let Ok(img) = smallcap_image::load(&p) {
            out.push(smallcap_image::clip_transform(&img, r as u32));
        }
    }
    Ok(out)
}

/// Normalised embeddings of `images` (one at a time) and their top-4 ids in `store`.
fn embed_and_search(
    model: &OpenAiClip,
    images: &[Vec<f32>],
    store: &Datastore,
) -> anyhow::Result<(Vec<f32>, Vec<Vec<u64>>)> {
    let r = model.dims().image_resolution;
    let dim = model.dims().embed_dim;
    let (mut all, mut tops) = (Vec::new(), Vec::new());
    for px in images {
        let x = Tensor::from_vec(px.clone(), (1, 3, r, r), &Device::Cpu)?;
        let mut q = model.encode_image(&x)?.flatten_all()?.to_vec1::<f32>()?;
        normalize_l2(&mut q, dim);
        let hits = store.search(&q, dim, 4)?;
        tops.push(hits[0].iter().map(|h| h.0 as u64).collect());
        all.extend(q);
    }
    Ok((all, tops))
}

fn time_encoder(
    args: &Args,
    img: &smallcap_image::SourceImage,
    model: &OpenAiClip,
    store: &Datastore,
    label: &str,
) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let r = model.dims().image_resolution;
    let dim = model.dims().embed_dim;
    {
        let (mut pre, mut enc, mut search, mut enc_cpu, mut search_cpu) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..args.runs {
            let t0 = Instant::now();
            let px = smallcap_image::clip_transform(img, r as u32);
            let x = Tensor::from_vec(px, (1, 3, r, r), &dev)?;
            let (t1, c1) = (Instant::now(), cpu_seconds());
            let mut q = model.encode_image(&x)?.flatten_all()?.to_vec1::<f32>()?;
            normalize_l2(&mut q, dim);
            let (t2, c2) = (Instant::now(), cpu_seconds());
            let hits = store.search(&q, dim, 4)?;
            let (t3, c3) = (Instant::now(), cpu_seconds());
            enc_cpu.push(c2 - c1);
            search_cpu.push(c3 - c2);
            assert_eq!(hits[0].len(), 4);
            pre.push((t1 - t0).as_secs_f64());
            enc.push((t2 - t1).as_secs_f64());
            search.push((t3 - t2).as_secs_f64());
        }
        let (p, e, s) = (median(pre), median(enc), median(search));
        let (ec, sc) = (median(enc_cpu), median(search_cpu));
        println!(
            "| {label} | {p:.3} s | {e:.2} s / {ec:.2} s | {s:.3} s / {sc:.2} s | {:.2} s |",
            p + e + s
        );
    }
    Ok(())
}
