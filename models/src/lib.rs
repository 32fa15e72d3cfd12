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

mod cpu;
#[doc(hidden)]
pub use cpu::measure;
pub mod device_conv;
mod error;
pub mod fixtures;
pub mod layers;
pub mod params;
pub mod precision;
pub mod slices;

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};

pub use device_conv::ConvGrad;
pub use error::{Error, ErrorKind, Result};
pub use params::{Builder, ParamStore};
pub use precision::Precision;

/// Shortens how long candle's CPU pool threads spin after each of candle's
/// own elementwise ops before they sleep (candle's default: 25,000 spins),
/// unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is already set. On two cores a
/// spinning candle thread takes a core from the convolutions that rayon
/// runs meanwhile (docs/cpu-profile.md, "candle's pool spins less", has
/// the measured effect and the command that reruns it).
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

/// mimalloc hands freed memory back to the kernel after a delay (1 s), and
/// later steps fault it in again as zeroed huge pages: 7,457 page faults
/// and about 7% more CPU time over 14 ResNet-8 steps (docs/cpu-profile.md,
/// "mimalloc never purges"). This sets mimalloc's purge delay to never, so
/// one step's pages serve the next. It acts only in a process whose global
/// allocator is mimalloc (the runner's and the benchmarks'); call it first
/// in `main`.
pub fn keep_freed_pages() {
    // `mi_option_purge_delay` in mimalloc 3's option enum (libmimalloc-sys
    // 0.1.49 names no constant for it); -1 = never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets an allocator option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// A family of networks: one file with its `Config`, how its names parse
/// and print, how it is built and how it runs. `models!` lists the
/// families; adding one is a new file that implements this trait plus one
/// line there (ARCHITECTURE.md walks through it).
pub trait Family: Sized {
    type Config: Clone + fmt::Debug + PartialEq;
    /// The names `runner models` lists, each with a description.
    const CATALOGUE: &'static [(&'static str, &'static str)];
    /// How its names are written, for the list of choices in errors.
    const SYNTAX: &'static str;
    /// The config a lower-case, `-`-separated name stands for; `None` when
    /// the name is not of this family (another may take it).
    fn parse(name: &str) -> Option<Result<Self::Config>>;
    /// The canonical name of a config (what keys and tables show).
    fn name(c: &Self::Config) -> String;
    /// The network for `classes` classes, its tensors made by `b`.
    fn build(c: &Self::Config, classes: usize, b: &Builder) -> Result<Self>;
    /// Logits (N, classes) for images (N, 3, H, W); with `train`, BatchNorm
    /// uses batch statistics and updates its running statistics.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor>;
}

/// Declares each family's module and defines [`Arch`] (a family with its
/// config) and the network it builds from the list of families:
/// `Variant => module::Net`.
macro_rules! models {
    ($($variant:ident => $module:ident :: $net:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// An architecture and its configuration.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Arch {
            $($variant(<$module::$net as Family>::Config),)*
        }

        #[allow(clippy::enum_variant_names)] // the families are named so
        enum Net {
            $($variant($module::$net),)*
        }

        impl Arch {
            /// The canonical name: `resnet18`, `resnet20`, `preactresnet164`,
            /// `wrn28-10`, `pyramidnet110` (`pyramidnet110-a48` for alpha other than 270).
            pub fn name(&self) -> String {
                match self { $(Arch::$variant(c) => <$module::$net as Family>::name(c),)* }
            }

            /// The models `runner models` lists: the thesis' four, then the CPU-sized ones.
            pub fn catalogue() -> Vec<(Arch, &'static str)> {
                let mut all: Vec<(&str, &str)> = Vec::new();
                $(all.extend(<$module::$net as Family>::CATALOGUE);)*
                all.sort_by_key(|(_, about)| !about.starts_with("thesis"));
                all.into_iter()
                    .map(|(n, d)| (n.parse().expect("catalogue names parse"), d))
                    .collect()
            }

            fn parse_lower(name: &str) -> Result<Arch> {
                $(
                    if let Some(c) = <$module::$net as Family>::parse(name) {
                        return c.map(Arch::$variant);
                    }
                )*
                Err(unknown_model(name))
            }

            fn build(&self, classes: usize, b: &Builder) -> Result<Net> {
                Ok(match self { $(Arch::$variant(c) => Net::$variant(<$module::$net as Family>::build(c, classes, b)?),)* })
            }
        }

        impl Net {
            fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
                match self { $(Net::$variant(n) => Family::forward(n, x, train),)* }
            }
        }

        /// Every family's name syntax, for error messages.
        fn choices() -> String {
            [$(<$module::$net as Family>::SYNTAX),*].join(", ")
        }
    };
}

models! {
    ResNet => resnet::ResNet,
    PreActResNet => preact_resnet::PreActResNet,
    WideResNet => wide_resnet::WideResNet,
    PyramidNet => pyramidnet::PyramidNet,
}

/// The error for a name no family takes.
pub(crate) fn unknown_model(name: &str) -> Error {
    ErrorKind::UnknownModel {
        name: name.to_string(),
        choices: choices(),
    }
    .into()
}

/// A whole number in a model name.
pub(crate) fn number(t: &str, name: &str) -> Result<usize> {
    t.parse::<usize>().map_err(|_| unknown_model(name))
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Arch> {
        let name = s.to_ascii_lowercase().replace('_', "-");
        Arch::parse_lower(&name).map_err(|e| match e.kind {
            // Name the model as the user wrote it.
            ErrorKind::UnknownModel { choices, .. } => ErrorKind::UnknownModel {
                name: s.to_string(),
                choices,
            }
            .into(),
            _ => e,
        })
    }
}

/// A network with its parameters.
pub struct Model {
    pub arch: Arch,
    pub num_classes: usize,
    pub params: ParamStore,
    /// What the passes compute in ([`Precision::F32`] unless set); the
    /// parameters stay in the dtype they were built with.
    pub precision: Precision,
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
        let net = arch.build(num_classes, &b)?;
        Ok(Model {
            arch: arch.clone(),
            num_classes,
            params: b.finish(),
            precision: Precision::F32,
            net,
        })
    }

    /// Logits (N, classes) for images (N, 3, H, W). With `train`, BatchNorm
    /// uses batch statistics and updates its running statistics.
    /// Under [`Precision::Bf16`] the logits come back in f32.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.precision.is_f32() {
            return self.net.forward(x, train);
        }
        let logits = precision::autocast(self.precision, || self.net.forward(x, train))?;
        Ok(logits.to_dtype(candle_core::DType::F32)?)
    }

    /// The logits of an evaluation-mode pass ([`forward`](Self::forward)
    /// with `train` false), bit for bit, computed in [`layers::inference`]
    /// mode and detached: for evaluation, where no gradient is taken.
    pub fn infer(&self, x: &Tensor) -> Result<Tensor> {
        Ok(layers::inference(|| self.forward(x, false))?.detach())
    }
}

impl Model {
    /// The FLOPs of one image's forward pass at `height` x `width`: the
    /// convolutions' and the linear layers' multiply-adds, 2 FLOPs each,
    /// counted from the shapes one evaluation-mode pass of a zero image
    /// runs through ([`layers::forward_flops`]; evaluation mode changes no
    /// running statistic). The convention the step benchmark uses: a
    /// training step costs three times this per image, the forward pass
    /// and the two gradients (input and weight) of the same products.
    pub fn forward_flops_per_image(&self, height: usize, width: usize) -> Result<usize> {
        let var = self
            .params
            .trainable()
            .next()
            .map(|(_, v)| v)
            .ok_or_else(|| ErrorKind::BadConfig("a model without parameters".into()))?;
        let x = Tensor::zeros((1, 3, height, width), var.dtype(), var.device())?;
        Ok(layers::forward_flops(|| self.forward(&x, false))?.1)
    }
}

/// Mean softmax cross-entropy of logits (N, C) against u32 labels (N,).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(label_log_probs(logits, labels)?.mean_all()?.neg()?)
}

/// The labels' log-probabilities (n x 1) under `logits` (n x C), the
/// per-sample terms [`cross_entropy`] averages (negated): a log-softmax
/// shifted by each row's maximum.
pub fn label_log_probs(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    Ok(logp.gather(&labels.unsqueeze(1)?, 1)?)
}
