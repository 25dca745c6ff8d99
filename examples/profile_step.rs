use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let m = smallcap::SmallCap::load_dir(std::path::Path::new("target/bench-model"), &dev)?;
    let enc = Tensor::zeros((50, 768), candle_core::DType::F32, &dev)?;
    let prompt: Vec<u32> = (0..60).map(|i| 100 + i).collect();
    for _ in 0..3 {
        let mut seq = m.decoder.start(&enc)?;
        let t = Instant::now();
        m.decoder.forward(&prompt, 60, &mut [&mut seq])?;
        let pre = t.elapsed().as_secs_f64();
        seq.reorder(&[0, 0, 0])?;
        let t = Instant::now();
        let (mut tf, mut tl, mut tr) = (0.0, 0.0, 0.0);
        for s in 0..25 {
            let t1 = Instant::now();
            let l = m.decoder.forward(&[1, 2, 3], 1, &mut [&mut seq])?;
            tf += t1.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let _ = smallcap::models::gpt2::log_softmax(&l)?.to_vec2::<f32>()?;
            tl += t1.elapsed().as_secs_f64();
            let t1 = Instant::now();
            seq.reorder(&[0, 1, 2])?;
            tr += t1.elapsed().as_secs_f64();
            let _ = s;
        }
        let dec = t.elapsed().as_secs_f64();
        println!("forward {tf:.3} logsoftmax {tl:.3} reorder {tr:.3}");
        // pure weight matmuls at M=3
        let x = Tensor::zeros((3, 768), candle_core::DType::F32, &dev)?;
        let w1 = Tensor::zeros((768, 2304), candle_core::DType::F32, &dev)?;
        let w2 = Tensor::zeros((768, 3072), candle_core::DType::F32, &dev)?;
        let w3 = Tensor::zeros((3072, 768), candle_core::DType::F32, &dev)?;
        let w4 = Tensor::zeros((768, 768), candle_core::DType::F32, &dev)?;
        let head = Tensor::zeros((50257, 768), candle_core::DType::F32, &dev)?;
        let t = Instant::now();
        for _ in 0..25 {
            for _ in 0..12 {
                x.matmul(&w1)?;
                x.matmul(&w4)?;
                x.matmul(&w2)?;
                Tensor::zeros((3, 3072), candle_core::DType::F32, &dev)?.matmul(&w3)?;
            }
        }
        let body = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..25 {
            x.matmul(&head.t()?)?;
        }
        let lm = t.elapsed().as_secs_f64();
        println!("prefill {pre:.3}  25 steps {dec:.3}  (body matmuls {body:.3}, lm head {lm:.3})");
    }
    Ok(())
}
