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
