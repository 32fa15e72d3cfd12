//! BatchNorm's per-channel map in evaluation mode as an element function
//! and as what a convolution applies while writing its output
//! ([`Norm`], [`Epilogue`]): one definition, so the batch-norm op's own pass
//! (`cpu::batchnorm`) and the fused convolution (`cpu::conv`'s
//! `ConvNormOp`) give the same bits.

use std::mem::MaybeUninit;

/// BatchNorm's per-channel map as it normalises an element, `(v - mean) *
/// scale + shift` (then `max(0)` with `relu`), with `scale = weight /
/// sqrt(var + eps)` rounded once from f64: the batch-norm op applies it in its own
/// pass, and an evaluation-mode convolution can apply it as it writes its
/// output ([`Norm::eval`], `cpu::conv`), the same bits either way.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Norm {
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    /// Apply ReLU after the map.
    pub relu: bool,
}

/// Channel `(mean, scale, shift)` applied to one element, as every
/// normalising pass here computes it.
#[inline(always)]
pub(crate) fn normalise(v: f32, mean: f32, scale: f32, shift: f32) -> f32 {
    (v - mean) * scale + shift
}

/// [`normalise`] then ReLU.
#[inline(always)]
pub(crate) fn normalise_relu(v: f32, mean: f32, scale: f32, shift: f32) -> f32 {
    normalise(v, mean, scale, shift).max(0.0)
}

/// The scale of one channel from its variance, weight and `eps`, in f64.
pub(crate) fn scale_of(var: f64, weight: f64, eps: f64) -> (f64, f32) {
    let invstd = 1.0 / (var + eps).sqrt();
    (invstd, (invstd * weight) as f32)
}

impl Norm {
    /// Evaluation mode's map from the running statistics, as the batch-norm op
    /// computes it in evaluation.
    pub(crate) fn eval(
        running_mean: &[f32],
        running_var: &[f32],
        weight: &[f32],
        bias: &[f32],
        eps: f64,
        relu: bool,
    ) -> Norm {
        Norm {
            mean: running_mean.to_vec(),
            scale: running_var
                .iter()
                .zip(weight)
                .map(|(&v, &w)| scale_of(v as f64, w as f64, eps).1)
                .collect(),
            shift: bias.to_vec(),
            relu,
        }
    }
}

/// What a convolution does to each output as it writes it: a [`Norm`],
/// and at a residual block's end the block's shortcut added after it and
/// ReLU, `relu(norm(v) + short)`, as `cpu::batchnorm::AddRelu` computes it from the
/// normalised values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epilogue<'a> {
    pub norm: &'a Norm,
    /// The shortcut, laid out as the outputs this epilogue writes.
    pub residual: Option<&'a [f32]>,
}

impl<'a> Epilogue<'a> {
    /// This epilogue for the `len` outputs from `start` on.
    pub(crate) fn part(&self, start: usize, len: usize) -> Epilogue<'a> {
        Epilogue {
            norm: self.norm,
            residual: self.residual.map(|r| &r[start..][..len]),
        }
    }

    /// Channel `ch`'s map for the outputs from `at` on: the output at
    /// `at + i` from its convolution value `v` is `f(i, v)`.
    #[inline(always)]
    fn map(&self, ch: usize, at: usize, len: usize) -> impl Fn(usize, f32) -> f32 + '_ {
        let n = self.norm;
        let (mu, sc, sh, relu) = (n.mean[ch], n.scale[ch], n.shift[ch], n.relu);
        let res = self.residual.map(|r| &r[at..][..len]);
        move |i, v| match res {
            Some(r) => (normalise(v, mu, sc, sh) + r[i]).max(0.0),
            None if relu => normalise_relu(v, mu, sc, sh),
            None => normalise(v, mu, sc, sh),
        }
    }

    /// Writes channel `ch`'s `src`, the outputs from `at` on, into `dst`.
    pub(crate) fn write(
        &self,
        ch: usize,
        at: usize,
        src: impl Iterator<Item = f32>,
        dst: &mut [MaybeUninit<f32>],
    ) {
        let f = self.map(ch, at, dst.len());
        for (i, (o, v)) in dst.iter_mut().zip(src).enumerate() {
            o.write(f(i, v));
        }
    }

    /// [`write`](Self::write) in place.
    pub(crate) fn apply(&self, ch: usize, at: usize, vals: &mut [f32]) {
        let f = self.map(ch, at, vals.len());
        for (i, v) in vals.iter_mut().enumerate() {
            *v = f(i, *v);
        }
    }
}
