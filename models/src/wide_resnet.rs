//! Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016), pre-activation wide
//! basic blocks, widths 16k/32k/64k with (d-4)/6 blocks per stage.
//! Dropout is off in the thesis' setting and not implemented. Two variants
//! (the thesis names only "WideResNet-28x10"; docs/thesis-protocol.md):
//!
//! - `wrnD-K` (a common PyTorch variant): the second convolution of a
//!   block strides, and where the shape changes a 1x1 convolution projects
//!   the block's raw input. WRN-28-10 has 36,479,194 parameters at 10 classes.
//! - `wrnD-K-jax` (the SAM authors' JAX code, google-research/sam, after
//!   the AutoAugment WRN): the first convolution strides; shortcuts have no
//!   parameters (average pooling by the stride, then zero-padded channels);
//!   the first block of the first group takes its shortcut after its
//!   BatchNorm and ReLU ("activate before residual"); the classifier's
//!   weight is Uniform(+-1/sqrt(classes)) and its bias zero. 36,220,634
//!   parameters. Convolutions are Kaiming-normal (fan-out) in both.
//!
//! Names: `conv1`, `layer{s}.{b}.{bn1,conv1,bn2,conv2,shortcut.0}`, `bn1`,
//! `linear` (no `shortcut` in the JAX variant).
//!
//! # Shapes
//! input (N, 3, H, W) -> logits (N, classes); H, W divisible by 4.

use candle_core::Tensor;

use crate::error::{ErrorKind, Result};
use crate::layers::{BatchNorm2d, Conv2d, ConvSpec, Linear, global_avg_pool, stage_blocks};
use crate::params::{Builder, Init};

/// Which WideResNet (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Strided second convolution, 1x1 projection shortcuts.
    Torch,
    /// The SAM authors' JAX code: strided first convolution,
    /// parameter-free shortcuts.
    Jax,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub depth: usize,
    pub widen: usize,
    pub variant: Variant,
}

impl Config {
    pub fn blocks_per_stage(&self) -> Result<usize> {
        if self.depth < 10 || !(self.depth - 4).is_multiple_of(6) || self.widen == 0 {
            return Err(ErrorKind::BadConfig(format!(
                "WideResNet depth must be 6n+4 (10, 16, 22, 28, ...) and width k >= 1, not {}-{}",
                self.depth, self.widen
            ))
            .into());
        }
        Ok((self.depth - 4) / 6)
    }
}

#[derive(Clone, Debug)]
struct WideBlock {
    bn1: BatchNorm2d,
    conv1: Conv2d,
    bn2: BatchNorm2d,
    conv2: Conv2d,
    shortcut: Shortcut,
}

#[derive(Clone, Debug)]
enum Shortcut {
    Identity,
    /// A 1x1 convolution of the raw input (Torch variant).
    Projection(Conv2d),
    /// Average pooling by `stride`, then `extra` zero channels (JAX
    /// variant); `activated`: taken after the block's first BatchNorm and
    /// ReLU.
    PoolPad {
        stride: usize,
        extra: usize,
        activated: bool,
    },
}

impl WideBlock {
    fn new(
        cin: usize,
        cout: usize,
        stride: usize,
        variant: Variant,
        activate_first: bool,
        b: &Builder,
    ) -> Result<Self> {
        let reshape = stride != 1 || cin != cout;
        let (s1, s2) = match variant {
            Variant::Torch => (1, stride),
            Variant::Jax => (stride, 1),
        };
        let shortcut = match variant {
            Variant::Torch if reshape => Shortcut::Projection(Conv2d::new(
                ConvSpec::new(cin, cout, 1, stride),
                &b.pp("shortcut").pp(0),
            )?),
            Variant::Jax if reshape || activate_first => {
                if cout < cin {
                    return Err(ErrorKind::BadConfig(format!(
                        "a parameter-free shortcut cannot go from {cin} to {cout} channels"
                    ))
                    .into());
                }
                Shortcut::PoolPad {
                    stride,
                    extra: cout - cin,
                    activated: activate_first,
                }
            }
            _ => Shortcut::Identity,
        };
        Ok(WideBlock {
            bn1: BatchNorm2d::new(cin, &b.pp("bn1"))?,
            conv1: Conv2d::new(ConvSpec::new(cin, cout, 3, s1), &b.pp("conv1"))?,
            bn2: BatchNorm2d::new(cout, &b.pp("bn2"))?,
            conv2: Conv2d::new(ConvSpec::new(cout, cout, 3, s2), &b.pp("conv2"))?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let a = self.bn1.forward_relu(x, train)?;
        let y = self.conv2.forward(&self.bn2.forward_relu_after(&self.conv1, &a, train)?)?;
        let short = match &self.shortcut {
            Shortcut::Identity => x.clone(),
            Shortcut::Projection(conv) => conv.forward(x)?,
            Shortcut::PoolPad {
                stride,
                extra,
                activated,
            } => {
                let s = if *activated { a } else { x.clone() };
                let s = if *stride > 1 {
                    s.avg_pool2d(*stride)?
                } else {
                    s
                };
                if *extra > 0 {
                    s.pad_with_zeros(1, 0, *extra)?
                } else {
                    s
                }
            }
        };
        Ok((y + short)?)
    }
}

#[derive(Clone, Debug)]
pub struct WideResNet {
    conv1: Conv2d,
    layers: Vec<WideBlock>,
    bn1: BatchNorm2d,
    linear: Linear,
}

impl WideResNet {
    pub fn new(cfg: &Config, classes: usize, b: &Builder) -> Result<Self> {
        let n = cfg.blocks_per_stage()?;
        let mut layers = Vec::new();
        let mut cin = 16;
        for (i, (bb, s, stride)) in stage_blocks(b, &[n; 3]).into_iter().enumerate() {
            let width = (16 << s) * cfg.widen;
            layers.push(WideBlock::new(cin, width, stride, cfg.variant, i == 0, &bb)?);
            cin = width;
        }
        let linear = match cfg.variant {
            Variant::Torch => Linear::new(cin, classes, &b.pp("linear"))?,
            Variant::Jax => Linear::with_init(
                cin,
                classes,
                Init::Uniform(1.0 / (classes as f64).sqrt()),
                Init::Const(0.0),
                &b.pp("linear"),
            )?,
        };
        Ok(WideResNet {
            conv1: Conv2d::new(ConvSpec::new(3, 16, 3, 1), &b.pp("conv1"))?,
            layers,
            bn1: BatchNorm2d::new(cin, &b.pp("bn1"))?,
            linear,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.conv1.forward(x)?;
        for block in &self.layers {
            y = block.forward(&y, train)?;
        }
        let y = self.bn1.forward_relu(&y, train)?;
        self.linear.forward(&global_avg_pool(&y)?)
    }
}

impl crate::Family for WideResNet {
    type Config = Config;
    const CATALOGUE: &'static [(&'static str, &'static str)] = &[
        ("wrn28-10", "thesis: WideResNet-28-10"),
        ("wrn28-10-jax", "thesis, as the SAM authors' JAX code builds it"),
        ("wrn16-2", "CPU-sized: WideResNet-16-2"),
        ("wrn10-1", "CPU-sized: WideResNet-10-1"),
    ];
    const SYNTAX: &'static str =
        "wrnD-K or wrnD-K-jax (D = 6n+4: wrn28-10, wrn16-2, wrn28-10-jax, ...)";

    fn parse(name: &str) -> Option<Result<Config>> {
        let rest = name
            .strip_prefix("wrn")
            .or(name.strip_prefix("wideresnet"))?;
        let (rest, variant) = match rest.strip_suffix("-jax") {
            Some(r) => (r, Variant::Jax),
            None => (rest, Variant::Torch),
        };
        Some((|| {
            let (d, k) = rest
                .trim_start_matches('-')
                .split_once('-')
                .ok_or_else(|| crate::unknown_model(name))?;
            let c = Config {
                depth: crate::number(d, name)?,
                widen: crate::number(k, name)?,
                variant,
            };
            c.blocks_per_stage()?;
            Ok(c)
        })())
    }

    fn name(c: &Config) -> String {
        let suffix = match c.variant {
            Variant::Torch => "",
            Variant::Jax => "-jax",
        };
        format!("wrn{}-{}{suffix}", c.depth, c.widen)
    }

    fn build(c: &Config, classes: usize, b: &Builder) -> Result<Self> {
        WideResNet::new(c, classes, b)
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        WideResNet::forward(self, x, train)
    }
}
