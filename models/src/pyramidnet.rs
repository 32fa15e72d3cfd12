//! PyramidNet (Han et al. 2017, "Deep Pyramidal Residual Networks") with
//! additive widening and basic blocks, as in the authors' PyTorch code:
//! depth 6n+2 (PyramidNet-110: n = 18), widening `alpha` spread evenly
//! over the 3n blocks (channel counts rounded half-to-even, as Python's
//! `round`), shortcut = 2x2 average pooling when downsampling plus zero-padded
//! channels. alpha = 270 gives 28,485,477 parameters for 10 classes
//! (pinned in `models/tests/counts.rs`; the PyramidNet paper rounds to 28.3M).
//!
//! Names: `conv1`, `bn1`, `layer{s}.{b}.{bn1,conv1,bn2,conv2,bn3}`, `bn_final`, `fc`.
//!
//! # Shapes
//! input (N, 3, H, W) -> logits (N, classes); H, W divisible by 4.

use candle_core::Tensor;

use crate::error::{ErrorKind, Result};
use crate::layers::{BatchNorm2d, Conv2d, ConvSpec, Linear, global_avg_pool, stage_blocks};
use crate::params::Builder;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub depth: usize,
    pub alpha: f64,
}

impl Config {
    pub fn pyramidnet110() -> Self {
        Config {
            depth: 110,
            alpha: 270.0,
        }
    }

    pub fn blocks_per_stage(&self) -> Result<usize> {
        if self.depth < 8
            || !(self.depth - 2).is_multiple_of(6)
            || self.alpha.is_nan()
            || self.alpha < 0.0
        {
            return Err(ErrorKind::BadConfig(format!(
                "PyramidNet depth must be 6n+2 and alpha >= 0, not depth {} alpha {}",
                self.depth, self.alpha
            ))
            .into());
        }
        Ok((self.depth - 2) / 6)
    }
}

#[derive(Clone, Debug)]
struct Block {
    bn1: BatchNorm2d,
    conv1: Conv2d,
    bn2: BatchNorm2d,
    conv2: Conv2d,
    bn3: BatchNorm2d,
    downsample: bool,
}

impl Block {
    fn new(cin: usize, cout: usize, stride: usize, b: &Builder) -> Result<Self> {
        Ok(Block {
            bn1: BatchNorm2d::new(cin, &b.pp("bn1"))?,
            conv1: Conv2d::new(ConvSpec::new(cin, cout, 3, stride), &b.pp("conv1"))?,
            bn2: BatchNorm2d::new(cout, &b.pp("bn2"))?,
            conv2: Conv2d::new(ConvSpec::new(cout, cout, 3, 1), &b.pp("conv2"))?,
            bn3: BatchNorm2d::new(cout, &b.pp("bn3"))?,
            downsample: stride != 1,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn2.forward_relu_after(&self.conv1, &self.bn1.forward(x, train)?, train)?;
        let y = self.bn3.forward_after(&self.conv2, &y, train)?;
        let short = if self.downsample {
            x.avg_pool2d(2)?
        } else {
            x.clone()
        };
        let (n, c_out, h, w) = y.dims4()?;
        let c_in = short.dim(1)?;
        let short = if c_out > c_in {
            let pad = Tensor::zeros((n, c_out - c_in, h, w), short.dtype(), short.device())?;
            Tensor::cat(&[&short, &pad], 1)?
        } else {
            short
        };
        Ok((y + short)?)
    }
}

#[derive(Clone, Debug)]
pub struct PyramidNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Block>,
    bn_final: BatchNorm2d,
    fc: Linear,
}

impl PyramidNet {
    pub fn new(cfg: &Config, classes: usize, b: &Builder) -> Result<Self> {
        let n = cfg.blocks_per_stage()?;
        let addrate = cfg.alpha / (3 * n) as f64;
        let round = |x: f64| x.round_ties_even() as usize;
        let mut dim = 16.0f64;
        let mut cin = 16;
        let mut layers = Vec::new();
        for (bb, _, stride) in stage_blocks(b, &[n; 3]) {
            dim += addrate;
            let cout = round(dim);
            layers.push(Block::new(cin, cout, stride, &bb)?);
            cin = cout;
        }
        Ok(PyramidNet {
            conv1: Conv2d::new(ConvSpec::new(3, 16, 3, 1), &b.pp("conv1"))?,
            bn1: BatchNorm2d::new(16, &b.pp("bn1"))?,
            layers,
            bn_final: BatchNorm2d::new(cin, &b.pp("bn_final"))?,
            fc: Linear::new(cin, classes, &b.pp("fc"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.bn1.forward_after(&self.conv1, x, train)?;
        for block in &self.layers {
            y = block.forward(&y, train)?;
        }
        let y = self.bn_final.forward_relu(&y, train)?;
        self.fc.forward(&global_avg_pool(&y)?)
    }
}

impl crate::Family for PyramidNet {
    type Config = Config;
    const CATALOGUE: &'static [(&'static str, &'static str)] =
        &[("pyramidnet110", "thesis: PyramidNet-110, alpha 270")];
    const SYNTAX: &'static str =
        "pyramidnetN (N = 6n+2: pyramidnet110; pyramidnetN-aALPHA for alpha other than 270)";

    fn parse(name: &str) -> Option<Result<Config>> {
        let rest = name.strip_prefix("pyramidnet")?.trim_start_matches('-');
        Some((|| {
            let (d, alpha) = match rest.split_once("-a") {
                Some((d, a)) => (d, a.parse::<f64>().map_err(|_| crate::unknown_model(name))?),
                None => (rest, 270.0),
            };
            let c = Config {
                depth: crate::number(d, name)?,
                alpha,
            };
            c.blocks_per_stage()?;
            Ok(c)
        })())
    }

    fn name(c: &Config) -> String {
        if c.alpha == 270.0 {
            format!("pyramidnet{}", c.depth)
        } else {
            format!("pyramidnet{}-a{}", c.depth, c.alpha)
        }
    }

    fn build(c: &Config, classes: usize, b: &Builder) -> Result<Self> {
        PyramidNet::new(c, classes, b)
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        PyramidNet::forward(self, x, train)
    }
}
