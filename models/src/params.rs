//! Named parameters and buffers, seeded initialisation, checkpoints.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use candle_core::{DType, Device, Shape, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::{ErrorKind, Result};

/// How a tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Const(f64),
    /// Normal(0, sqrt(2 / fan_out)), fan_out = out_channels * kernel area
    /// (PyTorch `kaiming_normal_(mode="fan_out", nonlinearity="relu")`).
    KaimingNormalFanOut,
    /// Uniform(-b, b): PyTorch's default for `nn.Linear` uses b = 1/sqrt(fan_in).
    Uniform(f64),
}

/// The trainable parameters and the buffers (BatchNorm running statistics)
/// of a model, by PyTorch-style name, iterated in sorted-name order.
#[derive(Debug, Default)]
pub struct ParamStore {
    params: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Var>,
}

impl ParamStore {
    /// Trainable parameters, sorted by name.
    pub fn trainable(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Buffers (running means and variances), sorted by name.
    pub fn buffers(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.buffers.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Parameters and buffers together, sorted by name.
    pub fn all(&self) -> BTreeMap<&str, &Var> {
        self.params
            .iter()
            .chain(self.buffers.iter())
            .map(|(k, v)| (k.as_str(), v))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.params.get(name).or_else(|| self.buffers.get(name))
    }

    /// The number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// Copies of the buffers, to put back with [`restore_buffers`](Self::restore_buffers).
    pub fn snapshot_buffers(&self) -> Result<Vec<Tensor>> {
        Ok(self
            .buffers
            .values()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?)
    }

    pub fn restore_buffers(&self, snapshot: &[Tensor]) -> Result<()> {
        if snapshot.len() != self.buffers.len() {
            return Err(ErrorKind::BadConfig(format!(
                "buffer snapshot has {} tensors, the model {}",
                snapshot.len(),
                self.buffers.len()
            ))
            .into());
        }
        for (v, t) in self.buffers.values().zip(snapshot) {
            v.set(t)?;
        }
        Ok(())
    }

    /// Saves parameters and buffers as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: std::collections::HashMap<String, Tensor> = self
            .all()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors, path).map_err(|e| ErrorKind::BadCheckpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// Loads parameters and buffers from safetensors, in place. Fails, and
    /// changes nothing, unless the file holds exactly this model's tensors
    /// with their shapes; the error lists missing, unexpected and mis-shaped names.
    pub fn load(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| ErrorKind::BadCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(ErrorKind::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            }
            .into());
        }
        let device = self
            .params
            .values()
            .next()
            .map(|v| v.device().clone())
            .unwrap_or(Device::Cpu);
        let loaded =
            candle_core::safetensors::load(path, &device).map_err(|e| bad(e.to_string()))?;
        let mine = self.all();
        let mut missing = Vec::new();
        let mut misshaped = Vec::new();
        for (name, var) in &mine {
            match loaded.get(*name) {
                None => missing.push(name.to_string()),
                Some(t) if t.dims() != var.dims() || t.dtype() != var.dtype() => {
                    misshaped.push(format!(
                        "{name} (file {:?} {:?}, model {:?} {:?})",
                        t.dims(),
                        t.dtype(),
                        var.dims(),
                        var.dtype()
                    ))
                }
                Some(_) => {}
            }
        }
        let mut unexpected: Vec<String> = loaded
            .keys()
            .filter(|k| !mine.contains_key(k.as_str()))
            .cloned()
            .collect();
        unexpected.sort();
        if !(missing.is_empty() && misshaped.is_empty() && unexpected.is_empty()) {
            let list = |v: &[String]| {
                if v.len() > 8 {
                    format!("{} (+{} more)", v[..8].join(", "), v.len() - 8)
                } else {
                    v.join(", ")
                }
            };
            return Err(ErrorKind::CheckpointMismatch {
                path: path.to_path_buf(),
                detail: format!(
                    "{} missing [{}], {} unexpected [{}], {} mis-shaped [{}]",
                    missing.len(),
                    list(&missing),
                    unexpected.len(),
                    list(&unexpected),
                    misshaped.len(),
                    list(&misshaped)
                ),
            }
            .into());
        }
        for (name, var) in mine {
            var.set(&loaded[name])?;
        }
        Ok(())
    }
}

struct Inner {
    store: ParamStore,
    device: Device,
    dtype: DType,
    seed: u64,
}

/// Creates named tensors during model construction (like candle's
/// `VarBuilder`, with a path prefix), initialised from `(seed, name)` so that
/// values do not depend on the order of creation.
#[derive(Clone)]
pub struct Builder {
    inner: Rc<RefCell<Inner>>,
    prefix: String,
}

impl Builder {
    /// A builder of f32 tensors.
    pub fn new(seed: u64, device: &Device) -> Self {
        Builder::with_dtype(seed, device, DType::F32)
    }

    /// A builder of `dtype` tensors (initial values are drawn in f32 and
    /// converted, so they agree across dtypes up to f32 rounding).
    pub fn with_dtype(seed: u64, device: &Device, dtype: DType) -> Self {
        Builder {
            inner: Rc::new(RefCell::new(Inner {
                store: ParamStore::default(),
                device: device.clone(),
                dtype,
                seed,
            })),
            prefix: String::new(),
        }
    }

    /// A builder whose names start with `prefix.`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Builder {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Builder {
            inner: self.inner.clone(),
            prefix,
        }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// A trainable parameter.
    pub fn param(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        Ok(self
            .create(name, shape.into(), init, false)?
            .as_tensor()
            .clone())
    }

    /// A buffer (saved in checkpoints, not trained), updated in place by the model.
    pub fn buffer(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Var> {
        self.create(name, shape.into(), init, true)
    }

    fn create(&self, name: &str, shape: Shape, init: Init, buffer: bool) -> Result<Var> {
        let full = self.full(name);
        let mut inner = self.inner.borrow_mut();
        if inner.store.get(&full).is_some() {
            return Err(ErrorKind::BadConfig(format!("tensor `{full}` created twice")).into());
        }
        let values = init_values(inner.seed, &full, &shape, init);
        let t = Tensor::from_vec(values, shape, &inner.device)?.to_dtype(inner.dtype)?;
        let var = Var::from_tensor(&t)?;
        let map = if buffer {
            &mut inner.store.buffers
        } else {
            &mut inner.store.params
        };
        map.insert(full, var.clone());
        Ok(var)
    }

    /// The finished store. Call once, after the model is built.
    pub fn finish(self) -> ParamStore {
        std::mem::take(&mut self.inner.borrow_mut().store)
    }
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn init_values(seed: u64, name: &str, shape: &Shape, init: Init) -> Vec<f32> {
    let n = shape.elem_count();
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&fnv1a(name).to_le_bytes());
    key[16..24].copy_from_slice(b"samlabin");
    let mut rng = ChaCha8Rng::from_seed(key);
    let unit = |rng: &mut ChaCha8Rng| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform(b) => (0..n)
            .map(|_| ((2.0 * unit(&mut rng) - 1.0) * b) as f32)
            .collect(),
        Init::KaimingNormalFanOut => {
            let dims = shape.dims();
            let fan_out = dims[0] * dims[2..].iter().product::<usize>();
            let std = (2.0 / fan_out as f64).sqrt();
            (0..n)
                .map(|_| {
                    // Box-Muller; 1 - u keeps the log finite.
                    let (u1, u2) = (1.0 - unit(&mut rng), unit(&mut rng));
                    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
                })
                .collect()
        }
    }
}

/// Two-dimensional batch normalisation with PyTorch's semantics: batch
/// statistics (biased variance) in training, running statistics updated with
/// momentum 0.1 and the unbiased variance; running statistics in evaluation.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    pub fn new(channels: usize, b: &Builder) -> Result<Self> {
        let weight = b.param("weight", channels, Init::Const(1.0))?;
        let bias = b.param("bias", channels, Init::Const(0.0))?;
        Ok(BatchNorm2d {
            weight,
            bias,
            running_mean: b.buffer("running_mean", channels, Init::Const(0.0))?,
            running_var: b.buffer("running_var", channels, Init::Const(1.0))?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_maybe_relu(x, train, false)
    }

    /// `relu(self.forward(x, train))`, in one pass on the CPU.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_maybe_relu(x, train, true)
    }

    fn forward_maybe_relu(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        // The fused op serves f32 on the CPU; other dtypes and devices use
        // the composite of candle ops.
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            self.forward_cpu(x, train, relu)
        } else if relu {
            Ok(self.forward_composite(x, train)?.relu()?)
        } else {
            self.forward_composite(x, train)
        }
    }

    /// One fused custom op with f64 per-channel sums (see `batchnorm_cpu`).
    fn forward_cpu(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        use crate::batchnorm_cpu::{BnOp, Stats};
        let stats = std::sync::Arc::new(std::sync::Mutex::new(Stats::default()));
        let running = if train {
            None
        } else {
            Some((
                self.running_mean.as_tensor().to_vec1::<f32>()?,
                self.running_var.as_tensor().to_vec1::<f32>()?,
            ))
        };
        let op = BnOp {
            running,
            eps: self.eps,
            relu,
            stats: stats.clone(),
        };
        let y = x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?;
        if train {
            let (n, _, h, w) = x.dims4()?;
            let count = (n * h * w) as f64;
            let unbiased = if count > 1.0 {
                count / (count - 1.0)
            } else {
                1.0
            };
            let m = self.momentum;
            let s = stats.lock().expect("batch-norm stats lock");
            let rm = self.running_mean.as_tensor().to_vec1::<f32>()?;
            let rv = self.running_var.as_tensor().to_vec1::<f32>()?;
            let new_mean: Vec<f32> = rm
                .iter()
                .zip(&s.mean)
                .map(|(&r, &b)| ((1.0 - m) * r as f64 + m * b) as f32)
                .collect();
            let new_var: Vec<f32> = rv
                .iter()
                .zip(&s.var)
                .map(|(&r, &b)| ((1.0 - m) * r as f64 + m * b * unbiased) as f32)
                .collect();
            let dev = x.device();
            self.running_mean
                .set(&Tensor::from_vec(new_mean, rm.len(), dev)?)?;
            self.running_var
                .set(&Tensor::from_vec(new_var, rv.len(), dev)?)?;
        }
        Ok(y)
    }

    /// Composed from candle ops (devices without the fused op).
    fn forward_composite(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let shape = (1, c, 1, 1);
        let (mean, var) = if train {
            let mean = x.mean_keepdim(3)?.mean_keepdim(2)?.mean_keepdim(0)?;
            let centered = x.broadcast_sub(&mean)?;
            let var = centered
                .sqr()?
                .mean_keepdim(3)?
                .mean_keepdim(2)?
                .mean_keepdim(0)?;
            let count = (n * h * w) as f64;
            let m = self.momentum;
            let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))?
                + (mean.detach().flatten_all()? * m)?)?;
            let unbiased = if count > 1.0 {
                count / (count - 1.0)
            } else {
                1.0
            };
            let new_var = ((self.running_var.as_tensor() * (1.0 - m))?
                + (var.detach().flatten_all()? * (m * unbiased))?)?;
            self.running_mean.set(&new_mean)?;
            self.running_var.set(&new_var)?;
            (mean, var)
        } else {
            (
                self.running_mean.as_tensor().reshape(shape)?,
                self.running_var.as_tensor().reshape(shape)?,
            )
        };
        let scale = (var + self.eps)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&self.weight.reshape(shape)?)?;
        let shift = self.bias.reshape(shape)?;
        Ok(x.broadcast_sub(&mean)?
            .broadcast_mul(&scale)?
            .broadcast_add(&shift)?)
    }
}

/// A 2-D convolution (weights (out, in, k, k), Kaiming-normal fan-out), optional bias (zero).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

/// How a [`Conv2d`] is shaped.
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
}

impl ConvSpec {
    /// k x k, "same" padding, no bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize, stride: usize) -> Self {
        ConvSpec {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding: kernel / 2,
            bias: false,
        }
    }
}

impl Conv2d {
    pub fn new(spec: ConvSpec, b: &Builder) -> Result<Self> {
        let weight = b.param(
            "weight",
            (
                spec.out_channels,
                spec.in_channels,
                spec.kernel,
                spec.kernel,
            ),
            Init::KaimingNormalFanOut,
        )?;
        let bias = if spec.bias {
            Some(b.param("bias", spec.out_channels, Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            stride: spec.stride,
            padding: spec.padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // With candle's own CPU convolution (and the system allocator) a ResNet-8
        // training step was 4.1x slower (`cargo bench -p samlab-models --bench step`,
        // docs/cpu-profile.md).
        let y = if x.device().is_cpu() && x.dtype() == DType::F32 {
            x.contiguous()?.apply_op2(
                &self.weight,
                crate::conv_cpu::ConvOp {
                    stride: self.stride,
                    padding: self.padding,
                },
            )?
        } else {
            x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => y,
        })
    }
}

/// A fully connected layer with PyTorch's default initialisation.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize, b: &Builder) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        Ok(Linear {
            weight: b.param("weight", (out_features, in_features), Init::Uniform(bound))?,
            bias: b.param("bias", out_features, Init::Uniform(bound))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }
}

/// Every block of a CIFAR-style residual network with `blocks[s]` blocks in
/// stage `s`: `(builder for "layer{s+1}.{i}", stage, stride)`, where the first
/// block of every stage after the first has stride 2.
pub fn stage_blocks(b: &Builder, blocks: &[usize]) -> Vec<(Builder, usize, usize)> {
    let mut out = Vec::new();
    for (s, &n) in blocks.iter().enumerate() {
        for i in 0..n {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            out.push((b.pp(format!("layer{}", s + 1)).pp(i), s, stride));
        }
    }
    out
}

/// `relu(a + b)`: the end of a residual block, one pass on the CPU (f32).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        Ok(a.contiguous()?
            .apply_op2(&b.contiguous()?, crate::batchnorm_cpu::AddRelu)?)
    } else {
        Ok((a + b)?.relu()?)
    }
}

/// Global average pooling (N, C, H, W) -> (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean(3)?.mean(2)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused CPU op and the composite path (used on other devices) agree.
    #[test]
    fn fused_and_composite_batch_norm_agree() {
        for (train, relu) in [(true, false), (false, false), (true, true), (false, true)] {
            let b = Builder::new(3, &Device::Cpu);
            let bn = BatchNorm2d::new(5, &b).unwrap();
            let store = b.finish();
            for (_, v) in store.all() {
                let n = v.elem_count();
                let vals: Vec<f32> = (0..n).map(|i| 0.8 + 0.1 * (i as f32).sin()).collect();
                v.set(&Tensor::from_vec(vals, n, &Device::Cpu).unwrap())
                    .unwrap();
            }
            let xs: Vec<f32> = (0..4 * 5 * 6 * 6)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let x = Var::from_tensor(&Tensor::from_vec(xs, (4, 5, 6, 6), &Device::Cpu).unwrap())
                .unwrap();
            let snap = store.snapshot_buffers().unwrap();
            let run = |fused: bool| {
                store.restore_buffers(&snap).unwrap();
                let y = if fused {
                    bn.forward_cpu(x.as_tensor(), train, relu).unwrap()
                } else {
                    let y = bn.forward_composite(x.as_tensor(), train).unwrap();
                    if relu { y.relu().unwrap() } else { y }
                };
                let loss = (y.sqr().unwrap().sum_all().unwrap() + y.sum_all().unwrap()).unwrap();
                let g = loss.backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let mut out = vec![
                    flat(&y),
                    flat(g.get(x.as_tensor()).unwrap()),
                    flat(g.get(&bn.weight).unwrap()),
                ];
                out.push(flat(g.get(&bn.bias).unwrap()));
                out.push(flat(bn.running_mean.as_tensor()));
                out.push(flat(bn.running_var.as_tensor()));
                out
            };
            for (i, (a, b)) in run(true).iter().zip(run(false)).enumerate() {
                for (p, q) in a.iter().zip(&b) {
                    assert!(
                        (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                        "train {train} relu {relu} output {i}: {p} vs {q}"
                    );
                }
            }
        }
    }

    /// The fused `relu(a + b)` matches the composite in value and in both
    /// gradients (inputs keep away from 0, where conventions differ).
    #[test]
    fn fused_add_relu_matches_composite() {
        let dev = Device::Cpu;
        let n = 3 * 4 * 5 * 7;
        let a: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.3) / 25.0)
            .collect();
        let b: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 89) as f32 - 44.1) / 30.0)
            .collect();
        let va = Var::from_tensor(&Tensor::from_vec(a, (3, 4, 5, 7), &dev).unwrap()).unwrap();
        let vb = Var::from_tensor(&Tensor::from_vec(b, (3, 4, 5, 7), &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (3, 4, 5, 7), &dev).unwrap();
        let run = |fused: bool| {
            let y = if fused {
                add_relu(va.as_tensor(), vb.as_tensor()).unwrap()
            } else {
                (va.as_tensor() + vb.as_tensor()).unwrap().relu().unwrap()
            };
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            [
                flat(&y),
                flat(g.get(va.as_tensor()).unwrap()),
                flat(g.get(vb.as_tensor()).unwrap()),
            ]
        };
        let (f, c) = (run(true), run(false));
        assert!(f[0].contains(&0.0) && f[0].iter().any(|&v| v > 0.0));
        assert_eq!(f, c);
    }
}
