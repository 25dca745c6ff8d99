//! Choosing where the networks run: `--device cpu|cuda[:N]|auto` on every command.

use candle_core::Device;

use crate::error::{Error, Result};

/// Parses a device spec: `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto` (the first CUDA GPU when
/// this build has the `cuda` feature and one is present, else the CPU). CUDA in a build without
/// the `cuda` feature is refused with the way to get one.
pub fn parse(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "auto" => return Ok(Device::cuda_if_available(0)?),
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(Error::Input(format!(
                    "--device {spec}: unknown device; give cpu, cuda, cuda:N or auto"
                )))
            }
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::Input(format!(
            "--device {spec}: this build has no CUDA support; rebuild with `cargo build --release --features cuda`"
        )));
    }
    Ok(Device::new_cuda(ordinal)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert!(matches!(parse("cpu").unwrap(), Device::Cpu));
        for bad in ["gpu", "cuda:", "cuda:x", ""] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("cpu, cuda, cuda:N or auto"), "{e}");
        }
        if !cfg!(feature = "cuda") {
            let e = parse("cuda:1").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
            assert!(matches!(parse("auto").unwrap(), Device::Cpu));
        }
    }
}
