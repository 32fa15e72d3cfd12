//! Support for tests and benchmarks: deterministic weights and inputs shared
//! with the JAX reference generators
//! (`models/tests/reference/gen_resnet_reference.py`, `hashed` and `value`
//! there), labels and the benchmarks' training step, and the process's
//! peak memory. Training never uses them.

use candle_core::{Device, Tensor};

use crate::Model;
use crate::error::Result;

/// Uniform in [-1, 1) from an exact 32-bit integer hash of (index, stream).
pub fn hashed(k: usize, stream: u32) -> f64 {
    let mut h = (k as u32).wrapping_add(stream.wrapping_mul(0x632B_E5AB));
    h = h.wrapping_mul(0x9E37_79B1);
    h ^= h >> 15;
    h = h.wrapping_mul(0x85EB_CA77);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE3D);
    h ^= h >> 16;
    h as f64 / 2f64.powi(31) - 1.0
}

/// The fixed value of tensor `name` of `shape`, the `p`-th in sorted-name order.
pub fn fixed_value(name: &str, shape: &[usize], p: usize) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|k| {
            let s = hashed(k, p as u32 + 1);
            let v = match shape.len() {
                4 => s * (6.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt(),
                2 => s / (shape[1] as f64).sqrt(),
                _ if name.ends_with("running_var") => 1.0 + 0.25 * (1.0 + s),
                _ if name.ends_with("weight") => 1.0 + 0.1 * s,
                _ => 0.1 * s,
            };
            v as f32
        })
        .collect()
}

/// Sets every parameter and buffer of `model` to its fixed value.
pub fn set_fixed(model: &Model) -> Result<()> {
    for (p, (name, var)) in model.params.all().into_iter().enumerate() {
        let v = fixed_value(name, var.dims(), p);
        var.set(&Tensor::from_vec(v, var.dims(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// `n` images (N, 3, 32, 32) from stream `stream` of the hash.
pub fn images(n: usize, stream: u32, device: &Device) -> Result<Tensor> {
    let x: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|k| hashed(k, stream) as f32)
        .collect();
    Ok(Tensor::from_vec(x, (n, 3, 32, 32), device)?)
}

/// Every element of `t`, in order, as f64 (any float dtype): for
/// comparing tensors in tests and checks.
pub fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?)
}

/// An f32 tensor's bits, flattened (what bit-for-bit tests compare).
pub fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f32::to_bits)
        .collect())
}

/// Every parameter's f32 bits, in name order (what bit-for-bit tests
/// compare).
pub fn param_bits(model: &Model) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for v in model.params.all().values() {
        out.extend(
            v.as_tensor()
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f32::to_bits),
        );
    }
    Ok(out)
}

/// `n` labels of 10 classes, label `i` being `(7 i + 1) mod 10`.
pub fn labels(n: usize, device: &Device) -> Result<Tensor> {
    let y: Vec<u32> = (0..n as u32).map(|i| (7 * i + 1) % 10).collect();
    Ok(Tensor::from_vec(y, n, device)?)
}

/// The benchmarks' training step: forward in training mode, cross-entropy,
/// backward, and a plain SGD update `w -= lr * g` of every trainable
/// parameter. Returns the loss (a scalar tensor, not read back).
pub fn plain_sgd_step(model: &Model, x: &Tensor, y: &Tensor, lr: f64) -> Result<Tensor> {
    let loss = crate::cross_entropy(&model.forward(x, true)?, y)?;
    let grads = loss.backward()?;
    for (_, var) in model.params.trainable() {
        if let Some(g) = grads.get(var.as_tensor()) {
            var.set(&(var.as_tensor().detach() - (g.detach() * lr)?)?)?;
        }
    }
    Ok(loss)
}

/// The process's peak resident set size in MiB (`VmHWM`; NaN where
/// `/proc/self/status` does not exist).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}
