//! SGD with (Nesterov) momentum and L2 weight decay, as PyTorch's
//! `torch.optim.SGD(momentum, nesterov, weight_decay, dampening=0)`:
//! `g += wd * w; v = mu * v + g; w -= lr * (g + mu * v)` (Nesterov) or
//! `w -= lr * v` (heavy ball). On the first step `v = g`.

use std::collections::BTreeMap;

use candle_core::Tensor;
use samlab_models::ParamStore;
use serde::{Deserialize, Serialize};

use crate::error::{Result, bad};

/// Gradients by parameter name.
pub type Grads = BTreeMap<String, Tensor>;

/// Gradients of every trainable parameter from a backward pass, detached:
/// a gradient computed by candle may still carry the backprop ops of its
/// pass, and keeping it (in a momentum buffer, say) would keep that whole
/// pass's graph, activations included, alive.
pub fn collect_grads(
    params: &ParamStore,
    store: &candle_core::backprop::GradStore,
) -> Result<Grads> {
    let mut out = Grads::new();
    for (name, var) in params.trainable() {
        let g = match store.get(var.as_tensor()) {
            Some(g) => g.detach(),
            // A parameter the loss does not reach has a zero gradient.
            None => var.as_tensor().zeros_like()?,
        };
        out.insert(name.to_string(), g);
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Where weight decay enters (see [`Decay`]); left out of serialised
    /// settings when `Update`, the convention before there was a choice.
    #[serde(default, skip_serializing_if = "Decay::is_update")]
    pub decay: Decay,
}

/// Where weight decay enters a step. The two agree for SGD steps; for SAM
/// they differ near a minimum, where `wd w` is comparable to the gradient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decay {
    /// `wd w` is added to the gradient in the update (PyTorch's
    /// `SGD(weight_decay=)`): SAM perturbs along the loss gradient alone.
    #[default]
    Update,
    /// `0.5 wd ||w||^2` is part of the loss of every pass (the SAM authors'
    /// JAX code): SAM perturbs along `g + wd w` and takes the second
    /// gradient of the decayed loss at `w + e`, `g' + wd (w + e)`.
    Loss,
}

impl Decay {
    fn is_update(&self) -> bool {
        *self == Decay::Update
    }
}

impl Default for SgdConfig {
    /// The thesis' recipe: Nesterov momentum 0.9, weight decay 5e-4.
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            decay: Decay::Update,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Sgd {
    pub config: SgdConfig,
    /// Momentum buffers by parameter name (absent before the first step).
    momentum: BTreeMap<String, Tensor>,
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Result<Self> {
        let c = &config;
        let momentum_ok = (0.0..1.0).contains(&c.momentum);
        let decay_ok = c.weight_decay >= 0.0 && c.weight_decay.is_finite();
        if !momentum_ok || !decay_ok {
            return Err(bad(format!(
                "SGD needs momentum in [0, 1) and weight decay >= 0, got {} and {}",
                c.momentum, c.weight_decay
            )));
        }
        if c.nesterov && c.momentum == 0.0 {
            return Err(bad("Nesterov SGD needs a momentum above 0"));
        }
        Ok(Sgd {
            config,
            momentum: BTreeMap::new(),
        })
    }

    /// One update of every trainable parameter with `grads` at rate `lr`.
    pub fn step(&mut self, params: &ParamStore, grads: &Grads, lr: f64) -> Result<()> {
        self.update(params, grads, lr, self.config.weight_decay)
    }

    /// A step with gradients of a loss that already holds the weight
    /// decay (`Decay::Loss`): the update adds none.
    pub fn step_decayed(&mut self, params: &ParamStore, grads: &Grads, lr: f64) -> Result<()> {
        self.update(params, grads, lr, 0.0)
    }

    fn update(&mut self, params: &ParamStore, grads: &Grads, lr: f64, wd: f64) -> Result<()> {
        let SgdConfig {
            momentum: mu,
            nesterov,
            ..
        } = self.config;
        for (name, var) in params.trainable() {
            let g = grads
                .get(name)
                .ok_or_else(|| bad(format!("no gradient for `{name}`")))?;
            // Detached, so nothing below records backprop ops.
            let w = var.as_tensor().detach();
            let g = g.detach();
            let g = if wd != 0.0 { (&g + (&w * wd)?)? } else { g };
            let d = if mu != 0.0 {
                let v = match self.momentum.get(name) {
                    Some(v) => ((v * mu)? + &g)?,
                    None => g.clone(),
                };
                self.momentum.insert(name.to_string(), v.clone());
                if nesterov { (g + (v * mu)?)? } else { v }
            } else {
                g
            };
            var.set(&(w - (d * lr)?)?)?;
        }
        Ok(())
    }

    /// The momentum buffers, by parameter name.
    pub fn state(&self) -> &BTreeMap<String, Tensor> {
        &self.momentum
    }

    /// Replaces the momentum buffers (checked against the parameters).
    pub fn set_state(
        &mut self,
        params: &ParamStore,
        state: BTreeMap<String, Tensor>,
    ) -> Result<()> {
        for (name, t) in &state {
            let var = params
                .trainable()
                .find(|(n, _)| n == name)
                .ok_or_else(|| bad(format!("momentum for unknown parameter `{name}`")))?
                .1;
            if t.dims() != var.dims() {
                return Err(bad(format!(
                    "momentum of `{name}` has shape {:?}, the parameter {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
        }
        self.momentum = state;
        Ok(())
    }
}
