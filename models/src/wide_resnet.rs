//! Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016), pre-activation wide
//! basic blocks, widths 16k/32k/64k with (d-4)/6 blocks per stage.
//! WRN-28-10 has 36,479,194 parameters at 10 classes (convolutions without
//! biases). Dropout is off in the thesis' setting and not implemented.
//!
//! Names: `conv1`, `layer{s}.{b}.{bn1,conv1,bn2,conv2,shortcut.0}`, `bn1`, `linear`.
//!
//! # Shapes
//! input (N, 3, H, W) -> logits (N, classes); H, W divisible by 4.

use candle_core::Tensor;

use crate::error::{ErrorKind, Result};
use crate::layers::{BatchNorm2d, Conv2d, ConvSpec, Linear, global_avg_pool, stage_blocks};
use crate::params::Builder;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub depth: usize,
    pub widen: usize,
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
    shortcut: Option<Conv2d>,
}

impl WideBlock {
    fn new(cin: usize, cout: usize, stride: usize, b: &Builder) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            Some(Conv2d::new(
                ConvSpec::new(cin, cout, 1, stride),
                &b.pp("shortcut").pp(0),
            )?)
        } else {
            None
        };
        Ok(WideBlock {
            bn1: BatchNorm2d::new(cin, &b.pp("bn1"))?,
            conv1: Conv2d::new(ConvSpec::new(cin, cout, 3, 1), &b.pp("conv1"))?,
            bn2: BatchNorm2d::new(cout, &b.pp("bn2"))?,
            conv2: Conv2d::new(ConvSpec::new(cout, cout, 3, stride), &b.pp("conv2"))?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.conv1.forward(&self.bn1.forward_relu(x, train)?)?;
        let y = self.conv2.forward(&self.bn2.forward_relu(&y, train)?)?;
        let short = match &self.shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
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
        for (bb, s, stride) in stage_blocks(b, &[n; 3]) {
            let width = (16 << s) * cfg.widen;
            layers.push(WideBlock::new(cin, width, stride, &bb)?);
            cin = width;
        }
        Ok(WideResNet {
            conv1: Conv2d::new(ConvSpec::new(3, 16, 3, 1), &b.pp("conv1"))?,
            layers,
            bn1: BatchNorm2d::new(cin, &b.pp("bn1"))?,
            linear: Linear::new(cin, classes, &b.pp("linear"))?,
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
        ("wrn16-2", "CPU-sized: WideResNet-16-2"),
        ("wrn10-1", "CPU-sized: WideResNet-10-1"),
    ];
    const SYNTAX: &'static str = "wrnD-K (D = 6n+4: wrn28-10, wrn16-2, ...)";

    fn parse(name: &str) -> Option<Result<Config>> {
        let rest = name
            .strip_prefix("wrn")
            .or(name.strip_prefix("wideresnet"))?;
        Some((|| {
            let (d, k) = rest
                .trim_start_matches('-')
                .split_once('-')
                .ok_or_else(|| crate::unknown_model(name))?;
            let c = Config {
                depth: crate::number(d, name)?,
                widen: crate::number(k, name)?,
            };
            c.blocks_per_stage()?;
            Ok(c)
        })())
    }

    fn name(c: &Config) -> String {
        format!("wrn{}-{}", c.depth, c.widen)
    }

    fn build(c: &Config, classes: usize, b: &Builder) -> Result<Self> {
        WideResNet::new(c, classes, b)
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        WideResNet::forward(self, x, train)
    }
}
