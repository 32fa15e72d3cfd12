//! Device checks behind `runner check-parity` and `runner bench-step`, the
//! building blocks of `scripts/gpu-check.sh`.
//!
//! - parity: ResNet-8 with fixed weights on the CPU and on a device, the
//!   same batch, training-mode forward and backward; the largest relative
//!   difference of the logits and of every parameter gradient.
//! - speed: SGD and SAM training steps of a model on a device, images per
//!   second over timed steps after warm-up steps.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use samlab_models::{Arch, Model, cross_entropy, fixtures};
use samlab_optim::{SamConfig, Sgd, SgdConfig, sam_step, sgd_step};

use crate::error::{ErrorKind, Result};

/// Result of a parity check.
#[derive(Debug)]
pub struct Parity {
    /// max |a - b| / max |b| over the logits.
    pub logits: f64,
    /// The worst parameter: name and ||ga - gb|| / ||gb||.
    pub worst_grad: (String, f64),
    pub params: usize,
}

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// Forward and backward of `model` on `dtype`/`device` copies of one batch.
fn grads(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
) -> Result<(Tensor, candle_core::backprop::GradStore)> {
    let logits = model.forward(x, true)?;
    let g = cross_entropy(&logits, y)?.backward()?;
    Ok((logits, g))
}

/// Compares `model` on `device` (in `dtype`) with the f32 CPU model.
pub fn parity(arch: &str, device: &Device, dtype: DType, batch: usize) -> Result<Parity> {
    let arch: Arch = arch.parse()?;
    let cpu = Model::new(&arch, 10, 0, &Device::Cpu)?;
    let dev = Model::with_dtype(&arch, 10, 0, device, dtype)?;
    fixtures::set_fixed(&cpu)?;
    fixtures::set_fixed(&dev)?;
    let x = fixtures::images(batch, 11, &Device::Cpu)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| (3 * i + 1) % 10).collect();
    let y = Tensor::from_vec(labels, batch, &Device::Cpu)?;
    let (la, ga) = grads(&cpu, &x, &y)?;
    let (lb, gb) = grads(
        &dev,
        &x.to_dtype(dtype)?.to_device(device)?,
        &y.to_device(device)?,
    )?;
    let (a, b) = (f64s(&la)?, f64s(&lb)?);
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    let logits = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (p, q)| m.max((p - q).abs() / scale));
    let dev_params = dev.params.all();
    let mut worst = (String::new(), 0f64);
    let mut params = 0;
    for (name, var) in cpu.params.trainable() {
        let missing = || ErrorKind::Device(format!("no gradient for {name}"));
        let ga = f64s(ga.get(var.as_tensor()).ok_or_else(missing)?)?;
        let gb = f64s(gb.get(dev_params[name].as_tensor()).ok_or_else(missing)?)?;
        let nb = gb.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        let nd = ga
            .iter()
            .zip(&gb)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f64>()
            .sqrt();
        if nd / nb > worst.1 || worst.0.is_empty() {
            worst = (name.to_string(), nd / nb);
        }
        params += 1;
    }
    Ok(Parity {
        logits,
        worst_grad: worst,
        params,
    })
}

/// Training speed of one method.
#[derive(Debug)]
pub struct Speed {
    pub sgd_img_s: f64,
    pub sam_img_s: f64,
}

/// Times `steps` SGD steps and `steps` SAM steps (rho 0.05) after `warmup`
/// of each, at batch `batch`, lr 0.01 (the weights move, but stay finite).
pub fn speed(
    arch: &str,
    device: &Device,
    batch: usize,
    warmup: usize,
    steps: usize,
) -> Result<Speed> {
    let arch: Arch = arch.parse()?;
    let model = Model::new(&arch, 10, 0, device)?;
    let x = fixtures::images(batch, 5, device)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| (7 * i + 1) % 10).collect();
    let y = Tensor::from_vec(labels, batch, device)?;
    let mut opt = Sgd::new(SgdConfig::default())?;
    let sam = SamConfig::new(0.05);
    let mut time = |use_sam: bool| -> Result<f64> {
        for _ in 0..warmup {
            step(&model, &mut opt, &sam, use_sam, &x, &y)?;
        }
        device.synchronize()?;
        let t0 = Instant::now();
        for _ in 0..steps {
            step(&model, &mut opt, &sam, use_sam, &x, &y)?;
        }
        device.synchronize()?;
        Ok((batch * steps) as f64 / t0.elapsed().as_secs_f64())
    };
    let sgd_img_s = time(false)?;
    let sam_img_s = time(true)?;
    Ok(Speed {
        sgd_img_s,
        sam_img_s,
    })
}

fn step(
    model: &Model,
    opt: &mut Sgd,
    sam: &SamConfig,
    use_sam: bool,
    x: &Tensor,
    y: &Tensor,
) -> Result<()> {
    if use_sam {
        sam_step(model, opt, sam, x, y, 0.01)?;
    } else {
        sgd_step(model, opt, x, y, 0.01)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU in f64 the check compares the f32 CPU path with the
    /// composite f64 one: close, but not equal.
    #[test]
    fn parity_of_the_cpu_with_itself_in_f64() {
        let p = parity("resnet8", &Device::Cpu, DType::F64, 4).unwrap();
        assert!(p.logits < 1e-4, "{p:?}");
        assert!(p.worst_grad.1 < 1e-3, "{p:?}");
        assert!(p.logits > 0.0, "two paths, not one: {p:?}");
        assert_eq!(p.params, 29);
    }

    #[test]
    fn speed_measures_both_methods() {
        let s = speed("resnet8", &Device::Cpu, 4, 1, 1).unwrap();
        assert!(s.sgd_img_s > 0.0 && s.sam_img_s > 0.0, "{s:?}");
    }
}
