use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let st = unsafe {
        candle_core::safetensors::MmapedSafetensors::new("target/bench-model/model.safetensors")?
    };
    let ws: Vec<Tensor> = (0..12)
        .map(|i| st.load(&format!("decoder.transformer.h.{i}.mlp.c_fc.weight"), &dev))
        .collect::<Result<_, _>>()?;
    let x = Tensor::randn(0f32, 1.0, (3, 768), &dev)?;
    let bytes = 12.0 * 768.0 * 3072.0 * 4.0;
    for round in 0..2 {
        let t = Instant::now();
        for _ in 0..5 {
            for w in &ws {
                x.matmul(w)?;
            }
        }
        let v1 = t.elapsed().as_secs_f64() / 60.0;
        let t = Instant::now();
        for _ in 0..5 {
            for w in &ws {
                w.t()?.matmul(&x.t()?)?.t()?.contiguous()?;
            }
        }
        let v2 = t.elapsed().as_secs_f64() / 60.0;
        // hand axpy: y[r] += x[r][i] * W[i,:]
        let xv = x.to_vec2::<f32>()?;
        let wv: Vec<Vec<f32>> = ws
            .iter()
            .map(|w| w.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        let t = Instant::now();
        for _ in 0..5 {
            for w in &wv {
                let out = 3072;
                let mut y = vec![0f32; 3 * out];
                for i in 0..768 {
                    let row = &w[i * out..(i + 1) * out];
                    for r in 0..3 {
                        let a = xv[r][i];
                        let yr = &mut y[r * out..(r + 1) * out];
                        for (yy, ww) in yr.iter_mut().zip(row) {
                            *yy += a * ww;
                        }
                    }
                }
                std::hint::black_box(&y);
            }
        }
        let v3 = t.elapsed().as_secs_f64() / 60.0;
        println!("round {round}: x@W {:.3} ms ({:.1} GB/s) | (W^T x^T)^T {:.3} ms ({:.1} GB/s) | axpy 1 thread {:.3} ms ({:.1} GB/s)",
            v1*1e3, bytes/12.0/v1/1e9, v2*1e3, bytes/12.0/v2/1e9, v3*1e3, bytes/12.0/v3/1e9);
    }
    Ok(())
}
