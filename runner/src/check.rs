//! Device checks behind `runner check-parity` and `runner bench-step`, the
//! building blocks of `scripts/gpu-check.sh`.
//!
//! - parity: ResNet-8 with fixed weights on the CPU and on a device, the
//!   same batch, training-mode forward and backward; the largest relative
//!   difference of the logits and of every parameter gradient. Under bf16
//!   autocast the device is compared with the CPU's bf16 (the same
//!   roundings, other summation orders) and with its f32.
//! - speed: SGD and SAM training steps of a model on a device, images per
//!   second over timed steps after warm-up steps, in f32 or bf16.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use samlab_models::{Arch, Model, Precision, cross_entropy, fixtures};
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
    Ok(fixtures::f64s(t)?)
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

/// What a parity check compares.
#[derive(Clone, Debug)]
pub struct ParityConfig {
    pub model: String,
    pub batch: usize,
    /// The parameters' dtype on the device (f64 on the CPU tests the
    /// composite path against the f32 kernels).
    pub dtype: DType,
    /// What the device computes in.
    pub precision: Precision,
    /// What the CPU reference computes in.
    pub reference: Precision,
}

/// Compares the model on `device` with the CPU model, as `c` says.
pub fn parity(device: &Device, c: &ParityConfig) -> Result<Parity> {
    let (batch, dtype) = (c.batch, c.dtype);
    let arch: Arch = c.model.parse()?;
    let mut cpu = Model::new(&arch, 10, 0, &Device::Cpu)?;
    let mut dev = Model::with_dtype(&arch, 10, 0, device, dtype)?;
    cpu.precision = c.reference;
    dev.precision = c.precision;
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

/// [`parity`] against the CPU in the device's own precision, and, when
/// that is not f32, against the CPU's f32 too (the last is the one a
/// tolerance applies to): `(reference, result)` in that order.
pub fn parities(device: &Device, c: &ParityConfig) -> Result<Vec<(Precision, Parity)>> {
    let mut refs = vec![c.precision];
    if !c.precision.is_f32() {
        refs.push(Precision::F32);
    }
    refs.into_iter()
        .map(|reference| {
            let c = ParityConfig {
                reference,
                ..c.clone()
            };
            Ok((reference, parity(device, &c)?))
        })
        .collect()
}

/// Training speed of one method.
#[derive(Debug)]
pub struct Speed {
    pub sgd_img_s: f64,
    pub sam_img_s: f64,
}

/// What a speed check times.
#[derive(Clone, Debug)]
pub struct SpeedConfig {
    pub model: String,
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    pub precision: Precision,
}

/// Times `steps` SGD steps and `steps` SAM steps (rho 0.05) after `warmup`
/// of each, at batch `batch`, lr 0.01 (the weights move, but stay finite).
pub fn speed(device: &Device, c: &SpeedConfig) -> Result<Speed> {
    let (batch, warmup, steps) = (c.batch, c.warmup, c.steps);
    let arch: Arch = c.model.parse()?;
    let mut model = Model::new(&arch, 10, 0, device)?;
    model.precision = c.precision;
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
    fn config(dtype: DType, precision: Precision, reference: Precision) -> ParityConfig {
        ParityConfig {
            model: "resnet8".into(),
            batch: 4,
            dtype,
            precision,
            reference,
        }
    }

    /// f32 kernels against f64: rounding ~1e-7 relative on every kernel
    /// path; the bounds (1e-4, 1e-3) are generous on purpose, for a check
    /// of the tool's plumbing (readings: docs/numerics.md).
    #[test]
    fn parity_of_the_cpu_with_itself_in_f64() {
        let c = config(DType::F64, Precision::F32, Precision::F32);
        let p = parity(&Device::Cpu, &c).unwrap();
        eprintln!("{p:?}");
        assert!(p.logits < 1e-4, "{p:?}");
        assert!(p.worst_grad.1 < 1e-3, "{p:?}");
        assert!(p.logits > 0.0, "two paths, not one: {p:?}");
        assert_eq!(p.params, 29);
    }

    /// bf16 against itself is exact on one device; against f32 it is off
    /// by bf16's rounding, within the bounds of `precision::tests`.
    #[test]
    fn parity_of_bf16_with_itself_and_with_f32() {
        let same = parity(
            &Device::Cpu,
            &config(DType::F32, Precision::Bf16, Precision::Bf16),
        )
        .unwrap();
        assert_eq!((same.logits, same.worst_grad.1), (0.0, 0.0), "{same:?}");
        let off = parity(
            &Device::Cpu,
            &config(DType::F32, Precision::Bf16, Precision::F32),
        )
        .unwrap();
        eprintln!("{off:?}");
        assert!(off.logits > 0.0 && off.logits < 0.02, "{off:?}");
        assert!(off.worst_grad.1 > 0.0 && off.worst_grad.1 < 0.35, "{off:?}");
    }

    #[test]
    fn speed_measures_both_methods() {
        for precision in [Precision::F32, Precision::Bf16] {
            let c = SpeedConfig {
                model: "resnet8".into(),
                batch: 4,
                warmup: 1,
                steps: 1,
                precision,
            };
            let s = speed(&Device::Cpu, &c).unwrap();
            assert!(s.sgd_img_s > 0.0 && s.sam_img_s > 0.0, "{s:?}");
        }
    }
}
