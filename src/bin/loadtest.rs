//! `loadtest`: a bounded load test of `smallcap serve` on loopback. It starts the server binary
//! (next to this one) on 127.0.0.1 with the given model, then for each client count runs that
//! many closed-loop clients for a fixed time, each posting a fixture image with 4 prompt
//! captions (infer.py's decoding: 3 beams, early stopping), and reports requests per second,
//! p50/p99 latency, the mean images per forward pass and every non-200 answer. It runs once
//! with dynamic batching and once with `--max-batch 1`, and samples the server's resident memory
//! from `/proc/<pid>/status` throughout; `--soak SECS` adds a long run at the largest client count
//! to show whether memory grows.
//!
//! `cargo build --release && target/release/loadtest [--seconds 10] [--clients 1,8,32] [--soak 300]`

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "tests/fixtures/smallcap-tiny/model")]
    model: String,
    #[arg(long, default_value = "tests/fixtures/smallcap-tiny/tokenizer")]
    tokenizer: String,
    /// Images posted in turn.
    #[arg(long, default_value = "tests/fixtures/smallcap-tiny/images")]
    images: PathBuf,
    /// Concurrent clients, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clients: Vec<usize>,
    /// Length of each run (after a 2 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The batched server's --max-batch.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    #[arg(long, default_value_t = 10)]
    batch_wait_ms: u64,
    /// The server's --queue (requests beyond it are answered 503, counted, not retried).
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Also run this many seconds at the largest client count, sampling memory.
    #[arg(long, default_value_t = 0.0)]
    soak: f64,
    /// Decoding: beams.
    #[arg(long, default_value_t = 3)]
    beams: usize,
}

const CAPTIONS: [&str; 4] = [
    "a dog running on the beach",
    "a brown dog playing with a ball on the sand",
    "two dogs on a beach near the water",
    "a dog jumping in the air at the beach",
];

struct ServerProc {
    child: Child,
    addr: String,
}

impl ServerProc {
    fn start(args: &Args, max_batch: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let bin = exe.with_file_name("smallcap");
        if !bin.is_file() {
            bail!(
                "{} not found: build it (cargo build --release)",
                bin.display()
            );
        }
        let mut child = Command::new(&bin)
            .args([
                "serve",
                "--model",
                &args.model,
                "--tokenizer",
                &args.tokenizer,
            ])
            .args(["--addr", "127.0.0.1:0"])
            .args(["--max-batch", &max_batch.to_string()])
            .args(["--batch-wait-ms", &args.batch_wait_ms.to_string()])
            .args(["--queue", &args.queue.to_string()])
            .env("SMALLCAP_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(rest) = line.split("listening on http://").nth(1) {
                addr = rest.split_whitespace().next().map(str::to_string);
            }
            if line.contains("ready") {
                break;
            }
        }
        // Keep draining the server's stderr so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let addr = addr.context("the server did not say where it listens")?;
        Ok(Self { child, addr })
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, then wait: the server finishes what it accepted and exits 0.
    fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the server exited with {status} after SIGTERM");
        }
        Ok(())
    }
}

struct Sample {
    latency: Duration,
    status: u16,
    batch_images: u64,
}

fn multipart(image: &[u8], name: &str, beams: usize) -> (String, Vec<u8>) {
    let b = "----loadtest-boundary-x8b2";
    let mut out = Vec::new();
    out.extend_from_slice(
        format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(image);
    out.extend_from_slice(b"\r\n");
    let beams = beams.to_string();
    let mut fields: Vec<(&str, &str)> = CAPTIONS.iter().map(|c| ("captions", *c)).collect();
    fields.push(("beams", &beams));
    for (n, v) in fields {
        out.extend_from_slice(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    out.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), out)
}

/// `clients` closed-loop clients for `warmup + seconds`; returns the requests that finished
/// in the last `seconds`.
fn run_level(
    addr: &str,
    bodies: &[(String, Vec<u8>)],
    clients: usize,
    warmup: f64,
    seconds: f64,
) -> Vec<Sample> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let measure_from = t0 + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let url = format!("http://{addr}/v1/captions");
    std::thread::scope(|scope| {
        for c in 0..clients {
            let (samples, stop, url) = (samples.clone(), stop.clone(), url.clone());
            scope.spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(120))
                    .build();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let (ct, body) = &bodies[i % bodies.len()];
                    i += 1;
                    let t = Instant::now();
                    let r = agent.post(&url).set("Content-Type", ct).send_bytes(body);
                    let latency = t.elapsed();
                    let (status, batch_images) = match r {
                        Ok(resp) => {
                            let mut s = String::new();
                            let _ = resp.into_reader().read_to_string(&mut s);
                            let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
                            (200, v["batch_images"].as_u64().unwrap_or(0))
                        }
                        Err(ureq::Error::Status(code, _)) => (code, 0),
                        Err(_) => (0, 0),
                    };
                    if status == 503 {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    // Throughput counts the requests that finished inside the window.
                    let done = Instant::now();
                    if done >= measure_from && done <= end {
                        samples.lock().expect("lock").push(Sample {
                            latency,
                            status,
                            batch_images,
                        });
                    }
                }
            });
        }
    });
    stop.store(true, Ordering::Relaxed);
    Arc::try_unwrap(samples)
        .ok()
        .expect("threads joined")
        .into_inner()
        .expect("lock")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut bodies = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&args.images)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for p in entries {
        let bytes = std::fs::read(&p)?;
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        bodies.push(multipart(&bytes, &name, args.beams));
    }
    if bodies.is_empty() {
        bail!("no images in {}", args.images.display());
    }
    println!(
        "| server | clients | requests | req/s | p50 ms | p99 ms | mean images/pass | non-200 | RSS start → end MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|");
    for max_batch in [args.max_batch, 1] {
        let server = ServerProc::start(&args, max_batch)?;
        for &clients in &args.clients {
            let before = server.rss_kib();
            let samples = run_level(&server.addr, &bodies, clients, 2.0, args.seconds);
            let after = server.rss_kib();
            report(
                &format!("--max-batch {max_batch}"),
                clients,
                &samples,
                args.seconds,
                before,
                after,
            );
        }
        if max_batch == args.max_batch && args.soak > 0.0 {
            let clients = args.clients.iter().copied().max().unwrap_or(8);
            let rss = Arc::new(Mutex::new(Vec::new()));
            let done = Arc::new(AtomicBool::new(false));
            let sampler = {
                let (rss, done) = (rss.clone(), done.clone());
                let pid = server.child.id();
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
                            .unwrap_or_default();
                        let kib: u64 = s
                            .lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| v.split_whitespace().next()?.parse().ok())
                            .unwrap_or(0);
                        rss.lock().expect("lock").push(kib);
                        std::thread::sleep(Duration::from_secs(5));
                    }
                })
            };
            let samples = run_level(&server.addr, &bodies, clients, 0.0, args.soak);
            done.store(true, Ordering::Relaxed);
            let _ = sampler.join();
            let rss = rss.lock().expect("lock").clone();
            report(
                &format!("--max-batch {max_batch}, soak {:.0} s", args.soak),
                clients,
                &samples,
                args.soak,
                rss.first().copied().unwrap_or(0),
                rss.last().copied().unwrap_or(0),
            );
            let mib: Vec<String> = rss
                .iter()
                .map(|k| format!("{:.0}", *k as f64 / 1024.0))
                .collect();
            eprintln!("soak RSS every 5 s (MiB): {}", mib.join(" "));
        }
        server.stop()?;
    }
    Ok(())
}

fn report(server: &str, clients: usize, samples: &[Sample], seconds: f64, before: u64, after: u64) {
    let mut ok: Vec<Duration> = samples
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.latency)
        .collect();
    ok.sort();
    let mut others = std::collections::BTreeMap::new();
    for s in samples.iter().filter(|s| s.status != 200) {
        *others.entry(s.status).or_insert(0usize) += 1;
    }
    let others = if others.is_empty() {
        "none".to_string()
    } else {
        others
            .iter()
            .map(|(s, n)| format!("{n}× {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let batch: f64 = samples
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.batch_images as f64)
        .sum::<f64>()
        / ok.len().max(1) as f64;
    println!(
        "| {server} | {clients} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {others} | {:.0} → {:.0} |",
        ok.len(),
        ok.len() as f64 / seconds,
        percentile(&ok, 0.5),
        percentile(&ok, 0.99),
        batch,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
    );
}
