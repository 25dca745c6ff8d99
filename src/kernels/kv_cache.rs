//! Growing a self-attention cache by one decoding step in a single copy.
//!
//! Beam search reorders the beams after every step (row `i` continues old row `order[i]`), and
//! the next step appends the new keys and values. Done as `index_select` then `cat`, the whole
//! cache is copied twice per step and layer; here the reorder is remembered and applied while
//! appending: `out[i] = past[order[i]] ++ new[i]` along the sequence axis, one pass over the cache.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::fused::contiguous_f32;

/// `past` `[old_rows, heads, len, dim]` and `new` `[rows, heads, t, dim]` → `[rows, heads, len + t,
/// dim]` whose row `i` is `past[order[i]]` followed by `new[i]` (`order` of `rows` entries; `None`
/// keeps the rows as they are).
pub fn append(past: &Tensor, new: &Tensor, order: Option<&[u32]>) -> Result<Tensor> {
    let (old_rows, heads, len, dim) = past.dims4()?;
    let (rows, h2, _, d2) = new.dims4()?;
    if heads != h2 || dim != d2 {
        candle_core::bail!("kv cache: appending {:?} to {:?}", new.dims(), past.dims());
    }
    let identity: Vec<u32>;
    let order = match order {
        Some(o) => o,
        None => {
            identity = (0..rows as u32).collect();
            &identity
        }
    };
    if order.len() != rows || order.iter().any(|&r| r as usize >= old_rows) {
        candle_core::bail!("kv cache: reorder {order:?} for {old_rows} cached rows and {rows} new");
    }
    let cpu_f32 = past.device().is_cpu() && past.dtype() == DType::F32 && new.dtype() == DType::F32;
    if cpu_f32 {
        past.contiguous()?.apply_op2_no_bwd(
            &new.contiguous()?,
            &Append {
                order: order.to_vec(),
                len,
            },
        )
    } else {
        let idx = Tensor::new(order, past.device())?;
        Tensor::cat(&[&past.index_select(&idx, 0)?, new], 2)
    }
}

struct Append {
    order: Vec<u32>,
    len: usize,
}

impl CustomOp2 for Append {
    fn name(&self) -> &'static str {
        "kv-cache-append"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (past, new) = (
            contiguous_f32(s1, l1, "kv cache")?,
            contiguous_f32(s2, l2, "kv cache")?,
        );
        let (rows, heads, t, dim) = l2.shape().dims4()?;
        let len = self.len;
        let (old_head, new_head, out_head) = (len * dim, t * dim, (len + t) * dim);
        let mut out = Vec::with_capacity(rows * heads * out_head);
        for (r, &from) in self.order.iter().enumerate() {
            for h in 0..heads {
                let p = (from as usize * heads + h) * old_head;
                out.extend_from_slice(&past[p..p + old_head]);
                let n = (r * heads + h) * new_head;
                out.extend_from_slice(&new[n..n + new_head]);
            }
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((rows, heads, len + t, dim)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn append_equals_index_select_then_cat() {
        let dev = Device::Cpu;
        let past = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 5.0, &dev)
            .unwrap()
            .reshape((2, 3, 4, 5))
            .unwrap();
        let new = (Tensor::arange(0f32, 3.0 * 3.0 * 5.0, &dev)
            .unwrap()
            .reshape((3, 3, 1, 5))
            .unwrap()
            * -1.0)
            .unwrap();
        let order = [1u32, 0, 1];
        let got = append(&past, &new, Some(&order)).unwrap();
        let idx = Tensor::new(&order, &dev).unwrap();
        let want = Tensor::cat(&[&past.index_select(&idx, 0).unwrap(), &new], 2).unwrap();
        assert_eq!(got.dims(), &[3, 3, 5, 5]);
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // Without a reorder: a plain append.
        let same = append(&past, &new.narrow(0, 0, 2).unwrap(), None).unwrap();
        let want = Tensor::cat(&[&past, &new.narrow(0, 0, 2).unwrap()], 2).unwrap();
        assert_eq!(
            same.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert!(append(&past, &new, Some(&[0, 2, 1])).is_err());
    }
}
