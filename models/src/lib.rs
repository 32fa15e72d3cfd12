//! The thesis' convolutional networks on candle: ResNet-18,
//! PreAct-ResNet-164, WideResNet-28-10, PyramidNet-110, and CPU-sized
//! relatives (ResNet-(6n+2), WRN-d-k for small d, k).
//!
//! Each model lives in its own file with a `Config`. A [`Model`] holds the
//! network and its [`ParamStore`]: trainable parameters and BatchNorm
//! buffers by PyTorch-style name (`layer1.0.conv1.weight`,
//! `layer1.0.bn1.running_mean`), in sorted-name order, saved and loaded as
//! safetensors. Initialisation is a function of `(seed, name)`.
//!
//! This crate knows nothing about RON, study files or the runner's cache.

mod batchnorm_cpu;
mod conv_cpu;
mod error;
pub mod fixtures;
pub mod params;
pub mod preact_resnet;
pub mod pyramidnet;
pub mod resnet;
pub mod wide_resnet;

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};

pub use error::{Error, ErrorKind, Result};
pub use params::{Builder, ParamStore};

/// Shortens how long candle's CPU pool threads spin after each of candle's
/// own elementwise ops before they sleep (candle's default: 25,000 spins),
/// unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is already set. On two cores a
/// spinning candle thread takes a core from the convolutions that rayon
/// runs meanwhile: a ResNet-8 training step took 0.074 s with 2,000 spins
/// against 0.081 s with the default (ResNet-18 unchanged;
/// docs/cpu-profile.md).
///
/// # Safety
///
/// Sets an environment variable: call it at the start of `main`, before
/// any other thread exists (see [`std::env::set_var`]).
pub unsafe fn shorten_candle_spin() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        // SAFETY: the caller guarantees no other thread reads or writes
        // the environment now.
        unsafe { std::env::set_var(VAR, "2000") };
    }
}

/// An architecture and its configuration.
#[derive(Clone, Debug, PartialEq)]
pub enum Arch {
    ResNet(resnet::Config),
    PreActResNet(preact_resnet::Config),
    WideResNet(wide_resnet::Config),
    PyramidNet(pyramidnet::Config),
}

impl Arch {
    /// The canonical name: `resnet18`, `resnet20`, `preactresnet164`,
    /// `wrn28-10`, `pyramidnet110` (`pyramidnet110-a48` for alpha other than 270).
    pub fn name(&self) -> String {
        match self {
            Arch::ResNet(c) if *c == resnet::Config::resnet18() => "resnet18".into(),
            Arch::ResNet(c) => {
                let n = c.stages.first().map(|s| s.1).unwrap_or(0);
                format!("resnet{}", 6 * n + 2)
            }
            Arch::PreActResNet(c) => format!("preactresnet{}", c.depth),
            Arch::WideResNet(c) => format!("wrn{}-{}", c.depth, c.widen),
            Arch::PyramidNet(c) if c.alpha == 270.0 => format!("pyramidnet{}", c.depth),
            Arch::PyramidNet(c) => format!("pyramidnet{}-a{}", c.depth, c.alpha),
        }
    }

    /// The models `runner models` lists: the thesis' four and the CPU-sized ones.
    pub fn catalogue() -> Vec<(Arch, &'static str)> {
        [
            ("resnet18", "thesis: ResNet-18 (CIFAR variant)"),
            ("preactresnet164", "thesis: PreAct-ResNet-164 (bottleneck)"),
            ("wrn28-10", "thesis: WideResNet-28-10"),
            ("pyramidnet110", "thesis: PyramidNet-110, alpha 270"),
            ("resnet8", "CPU-sized: ResNet-8, widths 16/32/64"),
            ("resnet20", "CPU-sized: ResNet-20, widths 16/32/64"),
            ("resnet32", "CPU-sized: ResNet-32, widths 16/32/64"),
            ("wrn16-2", "CPU-sized: WideResNet-16-2"),
            ("wrn10-1", "CPU-sized: WideResNet-10-1"),
        ]
        .into_iter()
        .map(|(n, d)| (n.parse().expect("catalogue names parse"), d))
        .collect()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

const CHOICES: &str = "resnet18, resnetN (N = 6n+2: resnet8, resnet20, ...), preactresnetN (N = 9n+2: \
     preactresnet164, ...), wrnD-K (D = 6n+4: wrn28-10, wrn16-2, ...), pyramidnetN (N = 6n+2: \
     pyramidnet110; pyramidnetN-aALPHA for alpha other than 270)";

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Arch> {
        let name = s.to_ascii_lowercase().replace('_', "-");
        let unknown = || -> Error {
            ErrorKind::UnknownModel {
                name: s.to_string(),
                choices: CHOICES.to_string(),
            }
            .into()
        };
        let num = |t: &str| t.parse::<usize>().map_err(|_| unknown());
        let arch = if name == "resnet18" || name == "resnet-18" {
            Arch::ResNet(resnet::Config::resnet18())
        } else if let Some(rest) = name
            .strip_prefix("preactresnet")
            .or(name.strip_prefix("preact-resnet"))
        {
            let c = preact_resnet::Config {
                depth: num(rest.trim_start_matches('-'))?,
            };
            c.blocks_per_stage()?;
            Arch::PreActResNet(c)
        } else if let Some(rest) = name.strip_prefix("resnet") {
            let d = num(rest.trim_start_matches('-'))?;
            if d < 8 || (d - 2) % 6 != 0 {
                return Err(ErrorKind::BadConfig(format!(
                    "CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, ...) or 18, not {d}"
                ))
                .into());
            }
            Arch::ResNet(resnet::Config::cifar((d - 2) / 6))
        } else if let Some(rest) = name.strip_prefix("wrn").or(name.strip_prefix("wideresnet")) {
            let (d, k) = rest
                .trim_start_matches('-')
                .split_once('-')
                .ok_or_else(unknown)?;
            let c = wide_resnet::Config {
                depth: num(d)?,
                widen: num(k)?,
            };
            c.blocks_per_stage()?;
            Arch::WideResNet(c)
        } else if let Some(rest) = name.strip_prefix("pyramidnet") {
            let rest = rest.trim_start_matches('-');
            let (d, alpha) = match rest.split_once("-a") {
                Some((d, a)) => (d, a.parse::<f64>().map_err(|_| unknown())?),
                None => (rest, 270.0),
            };
            let c = pyramidnet::Config {
                depth: num(d)?,
                alpha,
            };
            c.blocks_per_stage()?;
            Arch::PyramidNet(c)
        } else {
            return Err(unknown());
        };
        Ok(arch)
    }
}

enum Net {
    Res(resnet::ResNet),
    PreAct(preact_resnet::PreActResNet),
    Wide(wide_resnet::WideResNet),
    Pyramid(pyramidnet::PyramidNet),
}

/// A network with its parameters.
pub struct Model {
    pub arch: Arch,
    pub num_classes: usize,
    pub params: ParamStore,
    net: Net,
}

impl Model {
    /// Builds `arch` for `num_classes` classes in f32, initialised from `seed`.
    pub fn new(arch: &Arch, num_classes: usize, seed: u64, device: &Device) -> Result<Model> {
        Model::with_dtype(arch, num_classes, seed, device, candle_core::DType::F32)
    }

    /// As [`new`](Self::new), with parameters of `dtype` (f64 runs the
    /// composite BatchNorm path on the CPU, as other devices do).
    pub fn with_dtype(
        arch: &Arch,
        num_classes: usize,
        seed: u64,
        device: &Device,
        dtype: candle_core::DType,
    ) -> Result<Model> {
        if num_classes == 0 {
            return Err(ErrorKind::BadConfig("a model needs at least one class".into()).into());
        }
        let b = Builder::with_dtype(seed, device, dtype);
        let net = match arch {
            Arch::ResNet(c) => Net::Res(resnet::ResNet::new(c, num_classes, &b)?),
            Arch::PreActResNet(c) => {
                Net::PreAct(preact_resnet::PreActResNet::new(c, num_classes, &b)?)
            }
            Arch::WideResNet(c) => Net::Wide(wide_resnet::WideResNet::new(c, num_classes, &b)?),
            Arch::PyramidNet(c) => Net::Pyramid(pyramidnet::PyramidNet::new(c, num_classes, &b)?),
        };
        Ok(Model {
            arch: arch.clone(),
            num_classes,
            params: b.finish(),
            net,
        })
    }

    /// Logits (N, classes) for images (N, 3, H, W). With `train`, BatchNorm
    /// uses batch statistics and updates its running statistics.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.net {
            Net::Res(n) => n.forward(x, train),
            Net::PreAct(n) => n.forward(x, train),
            Net::Wide(n) => n.forward(x, train),
            Net::Pyramid(n) => n.forward(x, train),
        }
    }
}

/// Mean softmax cross-entropy of logits (N, C) against u32 labels (N,).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}
