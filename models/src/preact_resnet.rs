//! Pre-activation ResNet with bottleneck blocks (He et al. 2016, "Identity
//! Mappings in Deep Residual Networks"): depth 9n+2, stages of n blocks with
//! widths 16/32/64 and expansion 4. PreAct-ResNet-164 is n = 18 (1,703,258
//! parameters at 10 classes).
//!
//! Names: `conv1`, `layer{s}.{b}.{bn1,conv1,bn2,conv2,bn3,conv3,shortcut.0}`,
//! `bn` (the final BatchNorm before pooling), `linear`.
//!
//! # Shapes
//! input (N, 3, H, W) -> logits (N, classes); H, W divisible by 4.

use candle_core::Tensor;

use crate::error::{ErrorKind, Result};
use crate::layers::{BatchNorm2d, Conv2d, ConvSpec, Linear, global_avg_pool, stage_blocks};
use crate::params::Builder;

pub const EXPANSION: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub depth: usize,
}

impl Config {
    pub fn blocks_per_stage(&self) -> Result<usize> {
        if self.depth < 11 || !(self.depth - 2).is_multiple_of(9) {
            return Err(ErrorKind::BadConfig(format!(
                "PreAct-ResNet depth must be 9n+2 (11, 20, ..., 164), not {}",
                self.depth
            ))
            .into());
        }
        Ok((self.depth - 2) / 9)
    }
}

#[derive(Clone, Debug)]
struct Bottleneck {
    bn1: BatchNorm2d,
    conv1: Conv2d,
    bn2: BatchNorm2d,
    conv2: Conv2d,
    bn3: BatchNorm2d,
    conv3: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Bottleneck {
    fn new(cin: usize, planes: usize, stride: usize, b: &Builder) -> Result<Self> {
        let cout = planes * EXPANSION;
        let shortcut = if stride != 1 || cin != cout {
            Some(Conv2d::new(
                ConvSpec::new(cin, cout, 1, stride),
                &b.pp("shortcut").pp(0),
            )?)
        } else {
            None
        };
        Ok(Bottleneck {
            bn1: BatchNorm2d::new(cin, &b.pp("bn1"))?,
            conv1: Conv2d::new(ConvSpec::new(cin, planes, 1, 1), &b.pp("conv1"))?,
            bn2: BatchNorm2d::new(planes, &b.pp("bn2"))?,
            conv2: Conv2d::new(ConvSpec::new(planes, planes, 3, stride), &b.pp("conv2"))?,
            bn3: BatchNorm2d::new(planes, &b.pp("bn3"))?,
            conv3: Conv2d::new(ConvSpec::new(planes, cout, 1, 1), &b.pp("conv3"))?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let pre = self.bn1.forward_relu(x, train)?;
        let short = match &self.shortcut {
            Some(conv) => conv.forward(&pre)?,
            None => x.clone(),
        };
        let y = self.bn2.forward_relu_after(&self.conv1, &pre, train)?;
        let y = self.bn3.forward_relu_after(&self.conv2, &y, train)?;
        let y = self.conv3.forward(&y)?;
        Ok((y + short)?)
    }
}

#[derive(Clone, Debug)]
pub struct PreActResNet {
    conv1: Conv2d,
    layers: Vec<Bottleneck>,
    bn: BatchNorm2d,
    linear: Linear,
}

impl PreActResNet {
    pub fn new(cfg: &Config, classes: usize, b: &Builder) -> Result<Self> {
        let n = cfg.blocks_per_stage()?;
        let mut layers = Vec::new();
        let mut cin = 16;
        for (bb, s, stride) in stage_blocks(b, &[n; 3]) {
            let planes = 16 << s;
            layers.push(Bottleneck::new(cin, planes, stride, &bb)?);
            cin = planes * EXPANSION;
        }
        Ok(PreActResNet {
            conv1: Conv2d::new(ConvSpec::new(3, 16, 3, 1), &b.pp("conv1"))?,
            layers,
            bn: BatchNorm2d::new(cin, &b.pp("bn"))?,
            linear: Linear::new(cin, classes, &b.pp("linear"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.conv1.forward(x)?;
        for block in &self.layers {
            y = block.forward(&y, train)?;
        }
        let y = self.bn.forward_relu(&y, train)?;
        self.linear.forward(&global_avg_pool(&y)?)
    }
}

impl crate::Family for PreActResNet {
    type Config = Config;
    const CATALOGUE: &'static [(&'static str, &'static str)] =
        &[("preactresnet164", "thesis: PreAct-ResNet-164 (bottleneck)")];
    const SYNTAX: &'static str = "preactresnetN (N = 9n+2: preactresnet164, ...)";

    fn parse(name: &str) -> Option<Result<Config>> {
        let rest = name
            .strip_prefix("preactresnet")
            .or(name.strip_prefix("preact-resnet"))?;
        Some((|| {
            let c = Config {
                depth: crate::number(rest.trim_start_matches('-'), name)?,
            };
            c.blocks_per_stage()?;
            Ok(c)
        })())
    }

    fn name(c: &Config) -> String {
        format!("preactresnet{}", c.depth)
    }

    fn build(c: &Config, classes: usize, b: &Builder) -> Result<Self> {
        PreActResNet::new(c, classes, b)
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        PreActResNet::forward(self, x, train)
    }
}
