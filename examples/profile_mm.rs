use candle_core::{Device, Tensor};
use std::time::Instant;

fn small_m(x: &[f32], m: usize, w: &[f32], k: usize, n: usize, threads: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    let chunk = n.div_ceil(threads);
    // split columns among threads
    let mut cols: Vec<Vec<f32>> = Vec::new();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let n0 = t * chunk;
                let n1 = ((t + 1) * chunk).min(n);
                s.spawn(move || {
                    let width = n1 - n0;
                    let mut acc = vec![0f32; m * width];
                    for kk in 0..k {
                        let row = &w[kk * n + n0..kk * n + n1];
                        for r in 0..m {
                            let a = x[r * k + kk];
                            let out = &mut acc[r * width..(r + 1) * width];
                            for (o, wv) in out.iter_mut().zip(row) {
                                *o += a * wv;
                            }
                        }
                    }
                    (n0, acc)
                })
            })
            .collect();
        for h in hs {
            let (n0, acc) = h.join().unwrap();
            let width = acc.len() / m;
            for r in 0..m {
                y[r * n + n0..r * n + n0 + width].copy_from_slice(&acc[r * width..(r + 1) * width]);
            }
        }
    });
    let _ = &mut cols;
    y
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let st = unsafe {
        candle_core::safetensors::MmapedSafetensors::new("target/bench-model/model.safetensors")?
    };
    let ws: Vec<Tensor> = (0..12)
        .map(|i| st.load(&format!("decoder.transformer.h.{i}.mlp.c_fc.weight"), &dev))
        .collect::<Result<_, _>>()?;
    let wv: Vec<Vec<f32>> = ws
        .iter()
        .map(|w| w.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    let x = Tensor::randn(0f32, 1.0, (3, 768), &dev)?;
    let xv = x.flatten_all()?.to_vec1::<f32>()?;
    let bytes = 768.0 * 3072.0 * 4.0;
    for round in 0..3 {
        let t = Instant::now();
        for _ in 0..5 {
            for w in &ws {
                x.matmul(w)?;
            }
        }
        let v1 = t.elapsed().as_secs_f64() / 60.0;
        let t = Instant::now();
        let mut last = vec![];
        for _ in 0..5 {
            for w in &wv {
                last = small_m(&xv, 3, w, 768, 3072, 2);
            }
        }
        let v2 = t.elapsed().as_secs_f64() / 60.0;
        let r = x.matmul(&ws[11])?.flatten_all()?.to_vec1::<f32>()?;
        let err = r
            .iter()
            .zip(&last)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("round {round}: candle {:.3} ms ({:.1} GB/s) | small_m {:.3} ms ({:.1} GB/s) maxerr {err:e}", v1*1e3, bytes/v1/1e9, v2*1e3, bytes/v2/1e9);
    }
    Ok(())
}
