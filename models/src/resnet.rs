//! ResNet for CIFAR with basic blocks and 1x1 projection shortcuts: ResNet-18
//! (stem 64, stages 64/128/256/512 x 2 blocks; 11,173,962 parameters at 10
//! classes) and the ResNet-(6n+2) family (stem 16, stages 16/32/64 x n).
//!
//! Names follow the common PyTorch CIFAR implementation (kuangliu):
//! `conv1`, `bn1`, `layer{s}.{b}.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}`, `linear`.
//!
//! # Shapes
//! input (N, 3, H, W) -> logits (N, classes); H, W divisible by 2^(stages-1).

use candle_core::Tensor;

use crate::error::Result;
use crate::layers::{
    BatchNorm2d, Conv2d, ConvSpec, Linear, global_avg_pool, stage_blocks,
};
use crate::params::Builder;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Channels of the stem convolution.
    pub stem: usize,
    /// (width, blocks) per stage; every stage after the first halves the resolution.
    pub stages: Vec<(usize, usize)>,
}

impl Config {
    pub fn resnet18() -> Self {
        Config {
            stem: 64,
            stages: vec![(64, 2), (128, 2), (256, 2), (512, 2)],
        }
    }

    /// ResNet-(6n+2): ResNet-8 is n = 1, ResNet-20 n = 3.
    pub fn cifar(n: usize) -> Self {
        Config {
            stem: 16,
            stages: vec![(16, n), (32, n), (64, n)],
        }
    }
}

#[derive(Clone, Debug)]
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    shortcut: Option<(Conv2d, BatchNorm2d)>,
}

impl Block {
    fn new(cin: usize, cout: usize, stride: usize, b: &Builder) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            let s = b.pp("shortcut");
            Some((
                Conv2d::new(ConvSpec::new(cin, cout, 1, stride), &s.pp(0))?,
                BatchNorm2d::new(cout, &s.pp(1))?,
            ))
        } else {
            None
        };
        Ok(Block {
            conv1: Conv2d::new(ConvSpec::new(cin, cout, 3, stride), &b.pp("conv1"))?,
            bn1: BatchNorm2d::new(cout, &b.pp("bn1"))?,
            conv2: Conv2d::new(ConvSpec::new(cout, cout, 3, 1), &b.pp("conv2"))?,
            bn2: BatchNorm2d::new(cout, &b.pp("bn2"))?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_relu_after(&self.conv1, x, train)?;
        let short = match &self.shortcut {
            Some((conv, bn)) => bn.forward_after(conv, x, train)?,
            None => x.clone(),
        };
        self.bn2.forward_add_relu_after(&self.conv2, &y, &short, train)
    }
}

#[derive(Clone, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Block>,
    linear: Linear,
}

impl ResNet {
    pub fn new(cfg: &Config, classes: usize, b: &Builder) -> Result<Self> {
        let mut layers = Vec::new();
        let mut cin = cfg.stem;
        let blocks: Vec<usize> = cfg.stages.iter().map(|s| s.1).collect();
        for (bb, s, stride) in stage_blocks(b, &blocks) {
            let width = cfg.stages[s].0;
            layers.push(Block::new(cin, width, stride, &bb)?);
            cin = width;
        }
        Ok(ResNet {
            conv1: Conv2d::new(ConvSpec::new(3, cfg.stem, 3, 1), &b.pp("conv1"))?,
            bn1: BatchNorm2d::new(cfg.stem, &b.pp("bn1"))?,
            layers,
            linear: Linear::new(cin, classes, &b.pp("linear"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.bn1.forward_relu_after(&self.conv1, x, train)?;
        for block in &self.layers {
            y = block.forward(&y, train)?;
        }
        self.linear.forward(&global_avg_pool(&y)?)
    }
}

impl crate::Family for ResNet {
    type Config = Config;
    const CATALOGUE: &'static [(&'static str, &'static str)] = &[
        ("resnet18", "thesis: ResNet-18 (CIFAR variant)"),
        ("resnet8", "CPU-sized: ResNet-8, widths 16/32/64"),
        ("resnet20", "CPU-sized: ResNet-20, widths 16/32/64"),
        ("resnet32", "CPU-sized: ResNet-32, widths 16/32/64"),
    ];
    const SYNTAX: &'static str = "resnet18, resnetN (N = 6n+2: resnet8, resnet20, ...)";

    fn parse(name: &str) -> Option<Result<Config>> {
        if name == "resnet18" || name == "resnet-18" {
            return Some(Ok(Config::resnet18()));
        }
        let rest = name.strip_prefix("resnet")?;
        Some((|| {
            let d = crate::number(rest.trim_start_matches('-'), name)?;
            if d < 8 || (d - 2) % 6 != 0 {
                return Err(crate::ErrorKind::BadConfig(format!(
                    "CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, ...) or 18, not {d}"
                ))
                .into());
            }
            Ok(Config::cifar((d - 2) / 6))
        })())
    }

    fn name(c: &Config) -> String {
        if *c == Config::resnet18() {
            return "resnet18".into();
        }
        let n = c.stages.first().map(|s| s.1).unwrap_or(0);
        format!("resnet{}", 6 * n + 2)
    }

    fn build(c: &Config, classes: usize, b: &Builder) -> Result<Self> {
        ResNet::new(c, classes, b)
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        ResNet::forward(self, x, train)
    }
}
