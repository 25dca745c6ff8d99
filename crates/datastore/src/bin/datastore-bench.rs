//! Benchmark: exact inner-product search over 565,497 × 1024 random L2-normalised f32 vectors
//! (SmallCap's COCO datastore shape), generated deterministically into a temporary FAISS
//! `IndexFlatIP` file; our search on the FAISS file (memory-mapped, unaligned) and on our store
//! (aligned f32), single query and a batch of 64 (k = 4), plus open times; and faiss-cpu
//! `IndexFlatIP` on the same file in the same run (Python subprocess, 2 OpenMP threads).
//! Prints a Markdown table. The temporary files are deleted at the end.
//!
//! Usage: `datastore-bench [--n N] [--dim D] [--dir DIR] [--python PY]` (Python from
//! `$SMALLCAP_PYTHON` by default; the faiss rows are left out when it has no faiss).
//!
//! `datastore-bench ann [--n N] [--dim D] [--nlist L] [--ppc P] [--niter I] [--noise X] [--dir DIR]`:
//! approximate against exact search on a clustered synthetic store (default 5,000,000 × 256:
//! N / 50 random centres, each vector its centre plus Gaussian noise of norm ≈ X (default 0.96),
//! normalised;
//! 256 queries drawn the same way). Builds the IVF index (`Datastore::build_ann`; default nlist
//! round(4·√N), k-means on `P`·nlist sampled vectors for `I` iterations), tunes nprobe to
//! recall@4 ≥ 0.99 on the queries (`Datastore::tune_ann`), and times exact and approximate
//! search for one query and a batch of 64 (k = 4, median of 5).

use smallcap_datastore::faiss::{FlatIndex, FlatIpWriter};
use smallcap_datastore::store::{normalize_l2, StoreOptions};
use smallcap_datastore::{top_k, Datastore, Dtype};
use smallcap_util::rng::SplitMix64;
use smallcap_util::stats::median;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Uniform in `[-1, 1)` from SplitMix64 (deterministic).
fn uniform_pm1(rng: &mut SplitMix64) -> f32 {
    rng.next_f32() * 2.0 - 1.0
}

fn time_ms<R>(reps: usize, mut f: impl FnMut() -> R) -> (f64, R) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(times), last.expect("reps > 0"))
}

const FAISS_SCRIPT: &str = r#"
import sys, time, json
import numpy as np
import faiss
faiss.omp_set_num_threads(2)
path, qpath, d, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t = time.perf_counter(); ix = faiss.read_index(path); t_open = (time.perf_counter() - t) * 1e3
q = np.fromfile(qpath, dtype="<f4").reshape(-1, d)
def bench(x):
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); D, I = ix.search(x, 4); ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[len(ts) // 2], I.tolist()
t1, i1 = bench(q[:1])
t64, i64 = bench(q)
print(json.dumps({"version": faiss.__version__, "open_ms": t_open, "single_ms": t1, "batch_ms": t64, "batch_ids": i64}))
"#;

fn main() {
    let mut n = 565_497usize;
    let mut dim = 1024usize;
    let mut dir = std::env::temp_dir();
    let mut py = std::env::var("SMALLCAP_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("ann") {
        args.remove(0);
        return ann_main(&args);
    }
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--n" => n = v.parse().expect("--n N"),
            "--dim" => dim = v.parse().expect("--dim D"),
            "--dir" => dir = PathBuf::from(v),
            "--python" => py = v,
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let work = dir.join(format!("datastore-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("create bench folder");
    let result = run(&work, n, dim, &py);
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(work: &Path, n: usize, dim: usize, py: &str) -> smallcap_datastore::Result<()> {
    let index = work.join("index");
    let t = Instant::now();
    let mut w = FlatIpWriter::create(&index, dim, n)?;
    let mut rng = SplitMix64(42);
    let mut queries = Vec::new();
    let step = 4096;
    let mut done = 0;
    while done < n {
        let rows = step.min(n - done);
        let mut buf: Vec<f32> = (0..rows * dim).map(|_| uniform_pm1(&mut rng)).collect();
        normalize_l2(&mut buf, dim);
        // queries: 64 stored rows (spread over the store) plus noise, normalised
        for r in 0..rows {
            let id = done + r;
            if queries.len() < 64 * dim && id % (n / 64).max(1) == 7 {
                queries.extend(
                    buf[r * dim..(r + 1) * dim]
                        .iter()
                        .map(|x| x + 0.02 * uniform_pm1(&mut rng)),
                );
            }
        }
        w.push(&buf)?;
        done += rows;
    }
    w.finish()?;
    let nq = queries.len() / dim;
    normalize_l2(&mut queries, dim);
    eprintln!(
        "generated {n} × {dim} ({:.1} GB) in {:.1} s; {nq} queries",
        (n * dim * 4) as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    let qpath = work.join("queries.f32");
    std::fs::write(
        &qpath,
        queries
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .expect("write queries");

    let reps = 5;
    let mut rows: Vec<(String, f64, f64, f64)> = Vec::new();
    // ours on the FAISS file
    let (open_ms, idx) = time_ms(reps, || FlatIndex::open(&index));
    let idx = idx?;
    let _ = top_k(&idx.vectors(), &queries[..dim], dim, 4)?; // warm the page cache
    let (s1, _) = time_ms(reps, || top_k(&idx.vectors(), &queries[..dim], dim, 4));
    let (s64, ours) = time_ms(reps, || top_k(&idx.vectors(), &queries, dim, 4));
    let ours = ours?;
    rows.push((
        "smallcap-datastore, FAISS file (mmap, unaligned)".into(),
        open_ms,
        s1,
        s64,
    ));
    // ours on our store format
    let t = Instant::now();
    let store = work.join("store");
    let opts = StoreOptions {
        encoder: "bench:random".into(),
        dtype: Dtype::F32,
    };
    drop(Datastore::from_faiss(
        &index,
        write_caps(work, n)?,
        &store,
        &opts,
    )?);
    eprintln!(
        "converted to our store in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (open_ms, ds) = time_ms(reps, || Datastore::open(&store));
    let ds = ds?;
    let _ = ds.search(&queries[..dim], dim, 4)?;
    let (s1, _) = time_ms(reps, || ds.search(&queries[..dim], dim, 4));
    let (s64, ours2) = time_ms(reps, || ds.search(&queries, dim, 4));
    assert_eq!(ours, ours2?, "same results on both layouts");
    rows.push((
        "smallcap-datastore, our store (mmap, aligned f32)".into(),
        open_ms,
        s1,
        s64,
    ));
    drop(ds);
    let _ = std::fs::remove_dir_all(&store);

    let out = Command::new(py)
        .args([
            "-c",
            FAISS_SCRIPT,
            index.to_str().expect("utf-8 path"),
            qpath.to_str().expect("utf-8 path"),
            &dim.to_string(),
            &reps.to_string(),
        ])
        .output();
    let mut agree = String::from("faiss not run");
    match out {
        Ok(o) if o.status.success() => {
            let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("faiss output");
            let faiss_ids: Vec<Vec<i64>> =
                serde_json::from_value(r["batch_ids"].clone()).expect("ids");
            let ours_ids: Vec<Vec<i64>> = ours
                .iter()
                .map(|h| h.iter().map(|x| x.0).collect())
                .collect();
            agree = format!(
                "ids identical to faiss for {}/{} batch queries",
                ours_ids
                    .iter()
                    .zip(&faiss_ids)
                    .filter(|(a, b)| a == b)
                    .count(),
                nq
            );
            rows.push((
                format!(
                    "faiss-cpu {} IndexFlatIP (read_index into RAM, 2 OpenMP threads)",
                    r["version"].as_str().unwrap_or("?")
                ),
                r["open_ms"].as_f64().unwrap_or(f64::NAN),
                r["single_ms"].as_f64().unwrap_or(f64::NAN),
                r["batch_ms"].as_f64().unwrap_or(f64::NAN),
            ));
        }
        Ok(o) => eprintln!("faiss run failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => eprintln!("cannot run {py}: {e}"),
    }
    println!(
        "\n{n} × {dim} f32, k = 4, median of {reps}, {} rayon threads; {agree}\n",
        rayon::current_num_threads()
    );
    println!(
        "| implementation | open (ms) | 1 query (ms) | 64 queries (ms) | per query in batch (ms) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, o, s1, s64) in rows {
        println!(
            "| {name} | {o:.1} | {s1:.1} | {s64:.1} | {:.2} |",
            s64 / nq as f64
        );
    }
    Ok(())
}

fn write_caps(work: &Path, n: usize) -> smallcap_datastore::Result<PathBuf> {
    let p = work.join("captions.json");
    let caps: Vec<String> = (0..n).map(|i| format!("caption {i}")).collect();
    std::fs::write(&p, serde_json::to_vec(&caps).expect("json")).map_err(|e| {
        smallcap_datastore::Error::Io {
            path: p.clone(),
            source: e,
        }
    })?;
    Ok(p)
}

/// Arguments of `datastore-bench ann`.
struct AnnArgs {
    n: usize,
    dim: usize,
    nlist: Option<usize>,
    ppc: usize,
    niter: usize,
    noise: f32,
    dir: PathBuf,
}

fn ann_main(args: &[String]) {
    let mut a = AnnArgs {
        n: 5_000_000,
        dim: 256,
        nlist: None,
        ppc: 256,
        niter: 25,
        noise: 0.96,
        dir: std::env::temp_dir(),
    };
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        let num = |what: &str| -> usize { v.parse().unwrap_or_else(|_| panic!("{what} N")) };
        match args[i].as_str() {
            "--n" => a.n = num("--n"),
            "--dim" => a.dim = num("--dim"),
            "--nlist" => a.nlist = Some(num("--nlist")),
            "--ppc" => a.ppc = num("--ppc"),
            "--niter" => a.niter = num("--niter"),
            "--noise" => a.noise = v.parse().expect("--noise X"),
            "--dir" => a.dir = PathBuf::from(v),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let work = a
        .dir
        .join(format!("datastore-bench-ann-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("create bench folder");
    let result = run_ann(&work, &a);
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run_ann(work: &Path, a: &AnnArgs) -> smallcap_datastore::Result<()> {
    use smallcap_datastore::ivf::IvfParams;
    let (n, dim) = (a.n, a.dim);
    let t = Instant::now();
    let mut rng = SplitMix64(2024);
    let ncent = (n / 50).max(1);
    let mut centres: Vec<f32> = (0..ncent * dim).map(|_| rng.normal()).collect();
    normalize_l2(&mut centres, dim);
    let sigma = a.noise / (dim as f32).sqrt();
    let draw = |rows: usize, rng: &mut SplitMix64| {
        let mut v = Vec::with_capacity(rows * dim);
        for _ in 0..rows {
            let c = rng.below(ncent);
            v.extend((0..dim).map(|j| centres[c * dim + j] + sigma * rng.normal()));
        }
        normalize_l2(&mut v, dim);
        v
    };
    let index = work.join("flat");
    let mut w = FlatIpWriter::create(&index, dim, n)?;
    let mut done = 0;
    while done < n {
        let rows = 65_536.min(n - done);
        w.push(&draw(rows, &mut rng))?;
        done += rows;
    }
    w.finish()?;
    let queries = draw(256, &mut rng);
    let store = work.join("store");
    let opts = StoreOptions {
        encoder: "bench:clustered".into(),
        dtype: Dtype::F32,
    };
    let mut ds = Datastore::from_faiss(&index, write_caps(work, n)?, &store, &opts)?;
    std::fs::remove_file(&index).ok();
    eprintln!(
        "generated {n} × {dim} ({:.1} GB, {ncent} centres) in {:.1} s",
        (n * dim * 4) as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    let mut params = IvfParams::for_len(n);
    if let Some(l) = a.nlist {
        params.nlist = l;
    }
    params.max_points_per_centroid = a.ppc;
    params.niter = a.niter;
    let t = Instant::now();
    ds.build_ann(&params)?;
    let build_s = t.elapsed().as_secs_f64();
    eprintln!("built IVF (nlist {}) in {build_s:.1} s", params.nlist);
    let t = Instant::now();
    let (nprobe, recall) = ds.tune_ann(&queries, dim, 4, 0.99)?;
    eprintln!(
        "tuned nprobe {nprobe} (recall@4 {recall}) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let reps = 5;
    let q1 = &queries[..dim];
    let q64 = &queries[..64 * dim];
    let _ = ds.search(q1, dim, 4)?; // warm the page cache
    let (e1, _) = time_ms(reps, || ds.search(q1, dim, 4));
    let (e64, _) = time_ms(reps, || ds.search(q64, dim, 4));
    let (a1, _) = time_ms(reps, || ds.search_approx(q1, dim, 4, None));
    let (a64, _) = time_ms(reps, || ds.search_approx(q64, dim, 4, None));
    let r64 = ds.ann_recall(q64, dim, 4, None)?;
    println!(
        "\n{n} × {dim} f32 clustered (noise {}), k = 4, median of {reps}, {} rayon threads; IVF-flat nlist {}, \
         k-means {} iterations on {} sampled vectors, build {build_s:.1} s; nprobe {nprobe} \
         (smallest with recall@4 ≥ 0.99 on 256 queries: {recall:.4}; on the 64 timed: {r64:.4})\n",
        a.noise,
        rayon::current_num_threads(),
        params.nlist,
        params.niter,
        (params.nlist * params.max_points_per_centroid).min(n),
    );
    println!("| search | 1 query (ms) | 64 queries (ms) | per query in batch (ms) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| exact (GEMM, all rows) | {e1:.1} | {e64:.1} | {:.2} |",
        e64 / 64.0
    );
    println!(
        "| IVF-flat, nprobe {nprobe} | {a1:.2} | {a64:.1} | {:.3} |",
        a64 / 64.0
    );
    println!("| speed-up | {:.0}× | {:.0}× | |", e1 / a1, e64 / a64);
    Ok(())
}
