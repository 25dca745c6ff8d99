use candle_core::{DType, Device, Tensor};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let st = unsafe {
        candle_core::safetensors::MmapedSafetensors::new("target/bench-model/model.safetensors")?
    };
    let w = st.load("decoder.transformer.h.0.mlp.c_fc.weight", &dev)?;
    let xr = Tensor::randn(0f32, 1.0, (3, 768), &dev)?;
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let ww = w.to_dtype(dt)?;
        let t = Instant::now();
        for _ in 0..300 {
            xr.to_dtype(dt)?.matmul(&ww)?.to_dtype(DType::F32)?;
        }
        println!(
            "{dt:?}: {:.3} ms/matmul",
            t.elapsed().as_secs_f64() * 1000.0 / 300.0
        );
        let wt = ww.t()?.contiguous()?;
        let t = Instant::now();
        for _ in 0..300 {
            xr.to_dtype(dt)?.matmul(&wt.t()?)?.to_dtype(DType::F32)?;
        }
        println!(
            "{dt:?} transposed: {:.3} ms/matmul",
            t.elapsed().as_secs_f64() * 1000.0 / 300.0
        );
    }
    Ok(())
}
