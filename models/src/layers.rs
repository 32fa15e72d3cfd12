//! The layers the models are built from: `Conv2d`, `BatchNorm2d` (with an
//! optional fused ReLU), `Linear`, `relu(a + b)` for residual blocks and
//! global average pooling. On the CPU in f32 they run the kernels of
//! `crate::cpu`; elsewhere the composite of candle ops, the convolution
//! with the backward of [`crate::device_conv`]. Under bf16 autocast
//! ([`crate::precision`]) convolutions and linear layers compute in bf16,
//! BatchNorm and pooling in f32.

use std::cell::{Cell, RefCell};

use candle_core::{DType, Tensor, Var};

use crate::cpu::norm::Norm;
use crate::device_conv::{self, ConvGrad};
use crate::error::{ErrorKind, Result};
use crate::params::{Builder, Init};
use crate::precision;

/// Two-dimensional batch normalisation with PyTorch's semantics: batch
/// statistics (biased variance) in training, running statistics updated with
/// momentum 0.1 and the unbiased variance; running statistics in evaluation.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    pub fn new(channels: usize, b: &Builder) -> Result<Self> {
        let weight = b.param("weight", channels, Init::Const(1.0))?;
        let bias = b.param("bias", channels, Init::Const(0.0))?;
        Ok(BatchNorm2d {
            weight,
            bias,
            running_mean: b.buffer("running_mean", channels, Init::Const(0.0))?,
            running_var: b.buffer("running_var", channels, Init::Const(1.0))?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_maybe_relu(x, train, false)
    }

    /// `relu(self.forward(x, train))`, in one pass on the CPU.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_maybe_relu(x, train, true)
    }

    /// `self.forward(&conv.forward(x)?, train)`. In [`inference`] mode, in
    /// f32 on the CPU, the convolution writes its output normalised: one
    /// pass over the activations fewer, the same bits.
    pub fn forward_after(&self, conv: &Conv2d, x: &Tensor, train: bool) -> Result<Tensor> {
        self.after(conv, x, train, false)
    }

    /// `self.forward_relu(&conv.forward(x)?, train)`, fused as
    /// [`forward_after`](Self::forward_after) is.
    pub fn forward_relu_after(&self, conv: &Conv2d, x: &Tensor, train: bool) -> Result<Tensor> {
        self.after(conv, x, train, true)
    }

    /// `add_relu(&self.forward_after(conv, x, train)?, short)`, a residual
    /// block's end; in [`inference`] mode the add and ReLU too are applied
    /// as the convolution writes its output.
    pub fn forward_add_relu_after(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        short: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        if let Some(y) = self.fused(conv, x, train, false, Some(short))? {
            return Ok(y);
        }
        add_relu(&self.forward_after(conv, x, train)?, short)
    }

    fn after(&self, conv: &Conv2d, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if let Some(y) = self.fused(conv, x, train, relu, None)? {
            return Ok(y);
        }
        self.forward_maybe_relu(&conv.forward(x)?, train, relu)
    }

    /// The fused pass of [`after`](Self::after), where it serves: in
    /// inference mode, where the unfused pass would take the fused f32
    /// batch-norm op in evaluation mode (not under ReLU masks, autocast or
    /// a sliced pass) and, with a shortcut, the f32 `relu(a + b)` op.
    fn fused(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        train: bool,
        relu: bool,
        short: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let short_ok = short.is_none_or(|s| s.device().is_cpu() && s.dtype() == DType::F32);
        if !train && inferring() && !masking() && self.weight.dtype() == DType::F32 && short_ok {
            let norm = || -> Result<Norm> {
                let v = |t: &Tensor| t.to_vec1::<f32>();
                Ok(Norm::eval(
                    &v(self.running_mean.as_tensor())?,
                    &v(self.running_var.as_tensor())?,
                    &v(&self.weight)?,
                    &v(&self.bias)?,
                    self.eps,
                    relu,
                ))
            };
            return conv.forward_normalised(x, norm, short);
        }
        Ok(None)
    }

    fn forward_maybe_relu(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        // Under bf16 autocast: statistics and normalisation in f32 (the
        // parameters' dtype), the result handed on in the input's.
        if x.dtype() != self.weight.dtype() {
            let y = self.forward_maybe_relu(&x.to_dtype(self.weight.dtype())?, train, relu)?;
            return Ok(y.to_dtype(x.dtype())?);
        }
        if relu && masking() {
            return masked_relu(self.forward_maybe_relu(x, train, false)?);
        }
        // A sliced pass (crate::slices): statistics per slice.
        if train && let Some(slices) = crate::slices::active() {
            return self.forward_sliced(x, slices, relu);
        }
        // The fused op serves f32 on the CPU; other dtypes and devices use
        // the composite of candle ops.
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            self.forward_cpu(x, train, relu)
        } else if relu {
            Ok(self.forward_composite(x, train)?.relu()?)
        } else {
            self.forward_composite(x, train)
        }
    }

    /// The factor that makes a batch variance over `count` values
    /// unbiased, as PyTorch's running variance takes it.
    fn unbiased(count: f64) -> f64 {
        if count > 1.0 {
            count / (count - 1.0)
        } else {
            1.0
        }
    }

    /// The running statistics after a training pass whose f64 batch
    /// `mean` and `var` (one per channel) the fused op measured over
    /// `count` values each, from `running`, the running mean and variance
    /// read once per pass ([`Self::running_values`]): PyTorch's momentum
    /// update, in f64, rounded to f32.
    fn running_from_fused(
        &self,
        running: &(Vec<f32>, Vec<f32>),
        mean: &[f64],
        var: &[f64],
        count: f64,
    ) -> Result<(Tensor, Tensor)> {
        let (m, unbiased) = (self.momentum, Self::unbiased(count));
        let (rm, rv) = running;
        let new_mean: Vec<f32> = rm
            .iter()
            .zip(mean)
            .map(|(&r, &b)| ((1.0 - m) * r as f64 + m * b) as f32)
            .collect();
        let new_var: Vec<f32> = rv
            .iter()
            .zip(var)
            .map(|(&r, &b)| ((1.0 - m) * r as f64 + m * b * unbiased) as f32)
            .collect();
        let dev = self.running_mean.device();
        Ok((
            Tensor::from_vec(new_mean, rm.len(), dev)?,
            Tensor::from_vec(new_var, rv.len(), dev)?,
        ))
    }

    /// The running mean and variance as f32 values.
    fn running_values(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.running_mean.as_tensor().to_vec1::<f32>()?,
            self.running_var.as_tensor().to_vec1::<f32>()?,
        ))
    }

    /// The running statistics after a training pass with batch `mean` and
    /// `var` (tensors of `c` values, detached) over `count` values each,
    /// in candle ops (the composite path's).
    fn running_from_tensors(
        &self,
        mean: &Tensor,
        var: &Tensor,
        count: f64,
    ) -> Result<(Tensor, Tensor)> {
        let m = self.momentum;
        let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let new_var =
            ((self.running_var.as_tensor() * (1.0 - m))? + (var * (m * Self::unbiased(count)))?)?;
        Ok((new_mean, new_var))
    }

    /// One fused custom op with f64 per-channel sums (see `cpu::batchnorm`).
    fn forward_cpu(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        use crate::cpu::batchnorm::{BnOp, Stats};
        let stats = std::sync::Arc::new(std::sync::Mutex::new(Stats::default()));
        let running = if train {
            None
        } else {
            Some((
                self.running_mean.as_tensor().to_vec1::<f32>()?,
                self.running_var.as_tensor().to_vec1::<f32>()?,
            ))
        };
        let op = BnOp {
            running,
            eps: self.eps,
            relu,
            stats: stats.clone(),
            slices: 1,
        };
        let y = x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?;
        if train {
            let (n, _, h, w) = x.dims4()?;
            let s = stats.lock().expect("batch-norm stats lock");
            let running = self.running_values()?;
            let (mean, var) =
                self.running_from_fused(&running, &s.mean, &s.var, (n * h * w) as f64)?;
            self.running_mean.set(&mean)?;
            self.running_var.set(&var)?;
        }
        Ok(y)
    }

    /// A training-mode pass in `slices` ([`crate::slices`]): each slice
    /// normalised by its own statistics (with its own row of the weight
    /// and bias where the pass has per-slice weights), the running
    /// statistics set to the mean of the slices' updates from their values
    /// on entry, each slice's update computed as [`Self::forward_cpu`] or
    /// [`Self::forward_composite`] computes it.
    fn forward_sliced(
        &self,
        x: &Tensor,
        slices: crate::slices::Slices,
        relu: bool,
    ) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let g = slices.count;
        if !n.is_multiple_of(g) {
            return Err(ErrorKind::BadConfig(format!(
                "sliced BatchNorm: {g} slices do not divide the batch of {n}"
            ))
            .into());
        }
        let b = n / g;
        // (g, c): each slice's weight and bias.
        let (weight, bias) = (
            crate::slices::rows_or_shared(&self.weight, g)?,
            crate::slices::rows_or_shared(&self.bias, g)?,
        );
        let count = (b * h * w) as f64;
        let (mut means, mut vars) = (Vec::with_capacity(g), Vec::with_capacity(g));
        let y = if x.device().is_cpu() && x.dtype() == DType::F32 {
            use crate::cpu::batchnorm::{BnOp, Stats};
            // Statistics s * c + k: slice s's channel k.
            let stats = std::sync::Arc::new(std::sync::Mutex::new(Stats::default()));
            let op = BnOp {
                running: None,
                eps: self.eps,
                relu,
                stats: stats.clone(),
                slices: g,
            };
            let y = x.contiguous()?.apply_op3(
                &weight.contiguous()?.reshape(g * c)?,
                &bias.contiguous()?.reshape(g * c)?,
                op,
            )?;
            let s = stats.lock().expect("batch-norm stats lock");
            let running = self.running_values()?;
            for sl in 0..g {
                let at = sl * c..(sl + 1) * c;
                let (mean, var) =
                    self.running_from_fused(&running, &s.mean[at.clone()], &s.var[at], count)?;
                means.push(mean);
                vars.push(var);
            }
            y
        } else {
            let xg = x.reshape((g, b, c, h, w))?;
            let (mean, var) = Self::slice_moments(&xg)?;
            let (md, vd) = (mean.detach(), var.detach());
            for sl in 0..g {
                let (mean, var) = self.running_from_tensors(
                    &md.get(sl)?.flatten_all()?,
                    &vd.get(sl)?.flatten_all()?,
                    count,
                )?;
                means.push(mean);
                vars.push(var);
            }
            let y = self
                .normalise(&xg, &mean, &var, &weight, &bias)?
                .reshape((n, c, h, w))?;
            if relu { y.relu()? } else { y }
        };
        self.running_mean
            .set(&crate::slices::running_update(&means, slices)?)?;
        self.running_var
            .set(&crate::slices::running_update(&vars, slices)?)?;
        Ok(y)
    }

    /// Per-slice batch mean and (biased) variance of `xg`, a batch viewed
    /// as `(slices, n / slices, C, H, W)`: each `(slices, 1, C, 1, 1)`,
    /// reduced over the pixels, then the slice's images.
    fn slice_moments(xg: &Tensor) -> Result<(Tensor, Tensor)> {
        let mean = xg.mean_keepdim(4)?.mean_keepdim(3)?.mean_keepdim(1)?;
        let var = xg
            .broadcast_sub(&mean)?
            .sqr()?
            .mean_keepdim(4)?
            .mean_keepdim(3)?
            .mean_keepdim(1)?;
        Ok((mean, var))
    }

    /// `xg` (as in [`Self::slice_moments`]) normalised by `mean` and `var`
    /// (`(slices, 1, C, 1, 1)`) and scaled and shifted by each slice's row
    /// of `weight` and `bias` (`(slices, C)`), in candle ops.
    fn normalise(
        &self,
        xg: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
    ) -> Result<Tensor> {
        let (g, c) = weight.dims2()?;
        let shape = (g, 1, c, 1, 1);
        let scale = (var + self.eps)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&weight.reshape(shape)?)?;
        Ok(xg
            .broadcast_sub(mean)?
            .broadcast_mul(&scale)?
            .broadcast_add(&bias.reshape(shape)?)?)
    }

    /// Composed from candle ops (devices without the fused op): one slice
    /// of [`Self::slice_moments`] and [`Self::normalise`].
    fn forward_composite(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let xg = x.reshape((1, n, c, h, w))?;
        let (mean, var) = if train {
            let (mean, var) = Self::slice_moments(&xg)?;
            let (new_mean, new_var) = self.running_from_tensors(
                &mean.detach().flatten_all()?,
                &var.detach().flatten_all()?,
                (n * h * w) as f64,
            )?;
            self.running_mean.set(&new_mean)?;
            self.running_var.set(&new_var)?;
            (mean, var)
        } else {
            let shape = (1, 1, c, 1, 1);
            (
                self.running_mean.as_tensor().reshape(shape)?,
                self.running_var.as_tensor().reshape(shape)?,
            )
        };
        let (weight, bias) = (self.weight.unsqueeze(0)?, self.bias.unsqueeze(0)?);
        Ok(self
            .normalise(&xg, &mean, &var, &weight, &bias)?
            .reshape((n, c, h, w))?)
    }
}

/// A 2-D convolution (weights (out, in, k, k), Kaiming-normal fan-out), optional bias (zero).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

/// How a [`Conv2d`] is shaped.
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
}

impl ConvSpec {
    /// k x k, "same" padding, no bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize, stride: usize) -> Self {
        ConvSpec {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding: kernel / 2,
            bias: false,
        }
    }
}

impl Conv2d {
    pub fn new(spec: ConvSpec, b: &Builder) -> Result<Self> {
        let weight = b.param(
            "weight",
            (
                spec.out_channels,
                spec.in_channels,
                spec.kernel,
                spec.kernel,
            ),
            Init::KaimingNormalFanOut,
        )?;
        let bias = if spec.bias {
            Some(b.param("bias", spec.out_channels, Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            stride: spec.stride,
            padding: spec.padding,
        })
    }

    /// [`forward`](Self::forward) with the output put through `norm` (and,
    /// with `short`, `relu(_ + short)`) as the kernel writes it, where the
    /// CPU op serves it (f32 on the CPU, no bias, no sliced pass); `None`
    /// elsewhere. Forward only: the result carries no graph.
    fn forward_normalised(
        &self,
        x: &Tensor,
        norm: impl FnOnce() -> Result<Norm>,
        short: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        if self.bias.is_some() || crate::slices::rows(&self.weight).is_some() {
            return Ok(None);
        }
        let (x, weight) = (precision::cast(x)?, precision::cast(&self.weight)?);
        if !(x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32) {
            return Ok(None);
        }
        let op = crate::cpu::conv::ConvNormOp {
            stride: self.stride,
            padding: self.padding,
            norm: norm()?,
        };
        let x = x.contiguous()?;
        let y = match short {
            None => x.apply_op2_no_bwd(&weight, &op)?,
            Some(s) => x.apply_op3_no_bwd(
                &weight,
                &s.contiguous()?,
                &crate::cpu::conv::ConvNormAddReluOp(op),
            )?,
        };
        count_flops(2 * y.elem_count() * self.weight.elem_count() / self.weight.dim(0)?);
        Ok(Some(y))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some((rows, equal)) = crate::slices::rows(&self.weight) {
            return self.forward_rows(x, &rows, equal);
        }
        // candle's own CPU convolution is several times slower here
        // (docs/cpu-profile.md has the measurement and the command).
        let (x, weight) = (precision::cast(x)?, precision::cast(&self.weight)?);
        let y = if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::BF16) {
            let op = crate::cpu::conv::ConvOp {
                stride: self.stride,
                padding: self.padding,
            };
            precision::widened(&x, &weight, |x, w| Ok(x.contiguous()?.apply_op2(w, op)?))?
        } else {
            device_conv::conv2d(&x, &weight, self.stride, self.padding, ConvGrad::from_env())?
        };
        // Each output is a sum of cin * k * k products.
        count_flops(2 * y.elem_count() * self.weight.elem_count() / self.weight.dim(0)?);
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&precision::cast(b)?.reshape((1, (), 1, 1))?)?,
            None => y,
        })
    }
}

impl Conv2d {
    /// A sliced pass's convolution with per-slice weights `rows`
    /// ([`crate::slices`]; `equal`: every row the same value).
    fn forward_rows(&self, x: &Tensor, rows: &Tensor, equal: bool) -> Result<Tensor> {
        let (x, rows) = (precision::cast(x)?, precision::cast(rows)?);
        let shape = crate::slices::ConvShape {
            stride: self.stride,
            padding: self.padding,
        };
        let y = if x.device().is_cpu() && x.dtype() == DType::BF16 {
            precision::widened(&x, &rows, |x, r| crate::slices::conv2d(x, r, equal, shape))?
        } else {
            crate::slices::conv2d(&x, &rows, equal, shape)?
        };
        count_flops(2 * y.elem_count() * self.weight.elem_count() / self.weight.dim(0)?);
        Ok(match &self.bias {
            Some(b) => {
                let (n, cout, oh, ow) = y.dims4()?;
                let g = rows.dim(0)?;
                let brows = precision::cast(&crate::slices::rows_or_shared(b, g)?)?;
                y.reshape((g, n / g, cout, oh, ow))?
                    .broadcast_add(&brows.reshape((g, 1, cout, 1, 1))?)?
                    .reshape((n, cout, oh, ow))?
            }
            None => y,
        })
    }
}

/// A fully connected layer with PyTorch's default initialisation.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize, b: &Builder) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        Ok(Linear {
            weight: b.param("weight", (out_features, in_features), Init::Uniform(bound))?,
            bias: b.param("bias", out_features, Init::Uniform(bound))?,
        })
    }

    /// A linear layer with the given initialisations of weight and bias.
    pub fn with_init(
        in_features: usize,
        out_features: usize,
        weight: Init,
        bias: Init,
        b: &Builder,
    ) -> Result<Self> {
        Ok(Linear {
            weight: b.param("weight", (out_features, in_features), weight)?,
            bias: b.param("bias", out_features, bias)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some((rows, _)) = crate::slices::rows(&self.weight) {
            return self.forward_rows(x, &rows);
        }
        let (x, w, b) = (
            precision::cast(x)?,
            precision::cast(&self.weight)?,
            precision::cast(&self.bias)?,
        );
        let y = if x.device().is_cpu() && x.dtype() == DType::BF16 {
            precision::widened(&x, &w, |x, w| Ok(x.matmul(&w.t()?)?))?
        } else {
            x.matmul(&w.t()?)?
        };
        count_flops(2 * y.elem_count() * self.weight.dim(1)?);
        Ok(y.broadcast_add(&b)?)
    }
}

impl Linear {
    /// A sliced pass's linear layer with per-slice weights `rows` (g, out,
    /// in): one batched matmul of `x` viewed as (g, n / g, in).
    fn forward_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
        let (x, w) = (precision::cast(x)?, precision::cast(rows)?);
        let (g, out, inf) = w.dims3()?;
        let n = x.dim(0)?;
        if !n.is_multiple_of(g) {
            return Err(ErrorKind::BadConfig(format!(
                "sliced linear layer: {g} slices do not divide the batch of {n}"
            ))
            .into());
        }
        let b = precision::cast(&crate::slices::rows_or_shared(&self.bias, g)?)?;
        let xg = x.reshape((g, n / g, inf))?;
        let wt = w.transpose(1, 2)?;
        let y = if x.device().is_cpu() && x.dtype() == DType::BF16 {
            precision::widened(&xg, &wt, |x, w| Ok(x.matmul(w)?))?
        } else {
            xg.matmul(&wt)?
        };
        count_flops(2 * y.elem_count() * inf);
        Ok(y.broadcast_add(&b.unsqueeze(1)?)?.reshape((n, out))?)
    }
}

/// Every block of a CIFAR-style residual network with `blocks[s]` blocks in
/// stage `s`: `(builder for "layer{s+1}.{i}", stage, stride)`, where the first
/// block of every stage after the first has stride 2.
pub fn stage_blocks(b: &Builder, blocks: &[usize]) -> Vec<(Builder, usize, usize)> {
    let mut out = Vec::new();
    for (s, &n) in blocks.iter().enumerate() {
        for i in 0..n {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            out.push((b.pp(format!("layer{}", s + 1)).pp(i), s, stride));
        }
    }
    out
}

/// `relu(a + b)`: the end of a residual block, one pass on the CPU (f32).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if masking() {
        return masked_relu((a + b)?);
    }
    if a.device().is_cpu() && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        Ok(a.contiguous()?
            .apply_op2(&b.contiguous()?, crate::cpu::batchnorm::AddRelu)?)
    } else {
        Ok((a + b)?.relu()?)
    }
}

/// The activation patterns of one forward pass: for each ReLU, in call
/// order, 1 where its input was positive and 0 elsewhere.
#[derive(Clone, Debug)]
pub struct ReluMasks(Vec<Tensor>);

impl ReluMasks {
    /// How many ReLUs the pass ran.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

enum MaskMode {
    Off,
    Record(Vec<Tensor>),
    Replay(Vec<Tensor>, usize),
}

thread_local! {
    static MASKS: RefCell<MaskMode> = const { RefCell::new(MaskMode::Off) };
}

/// Sets the mode back to `Off` when dropped, whatever `f` did.
struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        MASKS.with(|m| *m.borrow_mut() = MaskMode::Off);
    }
}

fn masking() -> bool {
    MASKS.with(|m| !matches!(*m.borrow(), MaskMode::Off))
}

fn masked_relu(pre: Tensor) -> Result<Tensor> {
    MASKS.with(|m| match &mut *m.borrow_mut() {
        MaskMode::Off => Ok(pre.relu()?),
        MaskMode::Record(masks) => {
            let mask = pre.gt(0.0)?.to_dtype(pre.dtype())?;
            let out = (&pre * &mask)?;
            masks.push(mask);
            Ok(out)
        }
        MaskMode::Replay(masks, at) => {
            let mask = masks.get(*at).ok_or_else(|| {
                ErrorKind::BadConfig(format!(
                    "the pass ran more ReLUs than the {} recorded",
                    masks.len()
                ))
            })?;
            if mask.dims() != pre.dims() {
                return Err(ErrorKind::BadConfig(format!(
                    "ReLU {at}: recorded mask {:?}, input {:?}",
                    mask.dims(),
                    pre.dims()
                ))
                .into());
            }
            *at += 1;
            Ok((&pre * mask)?)
        }
    })
}

/// Runs `f` (one forward pass of a model on this thread) and returns each
/// ReLU's mask with its result. The pass computes the same values as
/// without recording, by the composite ops.
pub fn record_relu_masks<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, ReluMasks)> {
    MASKS.with(|m| *m.borrow_mut() = MaskMode::Record(Vec::new()));
    let reset = Reset;
    let out = f()?;
    let masks = MASKS.with(
        |m| match std::mem::replace(&mut *m.borrow_mut(), MaskMode::Off) {
            MaskMode::Record(v) => v,
            _ => Vec::new(),
        },
    );
    drop(reset);
    Ok((out, ReluMasks(masks)))
}

/// Runs `f` (the same forward pass as the one `masks` was recorded from,
/// at other weights) with every ReLU replaced by multiplication with its
/// recorded mask: the network with its activation pattern frozen, whose
/// second derivatives are what double backward computes (ReLU'' = 0).
/// Fails when the pass runs its ReLUs in other numbers or shapes.
pub fn with_relu_masks<T>(masks: &ReluMasks, f: impl FnOnce() -> Result<T>) -> Result<T> {
    MASKS.with(|m| *m.borrow_mut() = MaskMode::Replay(masks.0.clone(), 0));
    let _reset = Reset;
    let out = f()?;
    let used = MASKS.with(|m| match &*m.borrow() {
        MaskMode::Replay(_, at) => *at,
        _ => 0,
    });
    if used != masks.len() {
        return Err(ErrorKind::BadConfig(format!(
            "the pass ran {used} ReLUs, {} were recorded",
            masks.len()
        ))
        .into());
    }
    Ok(out)
}

thread_local! {
    /// Whether [`inference`] runs on this thread.
    static INFERENCE: Cell<bool> = const { Cell::new(false) };
}

fn inferring() -> bool {
    INFERENCE.with(Cell::get)
}

/// Runs `f` (evaluation-mode forward passes on this thread) in inference
/// mode, as `torch.inference_mode()` does: where a convolution is followed
/// by BatchNorm, in f32 on the CPU, the normalisation (and ReLU) is applied
/// as the convolution writes its output, the same bits as the two layers
/// one after the other and one pass over the activations fewer. Those
/// outputs carry no graph, so no gradient reaches the layers before them:
/// take none of a pass run here ([`crate::Model::infer`] detaches its
/// result). Training-mode passes run as outside it.
pub fn inference<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            INFERENCE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(INFERENCE.with(|c| c.replace(true)));
    f()
}

thread_local! {
    /// The FLOPs counted on this thread, while [`forward_flops`] runs.
    static FLOPS: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Adds `n` to this thread's count, if one runs.
fn count_flops(n: usize) {
    FLOPS.with(|c| {
        if let Some(v) = c.get() {
            c.set(Some(v + n));
        }
    });
}

/// Runs `f` (forward passes on this thread) and returns, with its result,
/// the FLOPs of the convolutions and linear layers it ran, counted from
/// their shapes: 2 per multiply-add (a convolution's output element is
/// `cin * k * k` of them, a linear layer's `in_features`), the bias adds,
/// BatchNorm, activations and pooling not counted.
pub fn forward_flops<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, usize)> {
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            FLOPS.with(|c| c.set(None));
        }
    }
    FLOPS.with(|c| c.set(Some(0)));
    let stop = Stop;
    let out = f()?;
    let n = FLOPS.with(|c| c.get()).unwrap_or(0);
    drop(stop);
    Ok((out, n))
}

/// Global average pooling (N, C, H, W) -> (N, C), in f32 under autocast.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let x = if x.dtype() == DType::BF16 || x.dtype() == DType::F16 {
        x.to_dtype(DType::F32)?
    } else {
        x.clone()
    };
    Ok(x.mean(3)?.mean(2)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Recording masks changes no value; replaying them at other inputs
    /// freezes the pattern (a negative input passes where the recorded one
    /// was positive); a pass with other ReLUs is refused.
    #[test]
    fn relu_masks_record_and_replay() {
        let d = Device::Cpu;
        let a = Tensor::new(&[[1.0f32, -2.0, 3.0, -4.0]], &d).unwrap();
        let z = a.zeros_like().unwrap();
        let (y, masks) = record_relu_masks(|| add_relu(&a, &z)).unwrap();
        assert_eq!(masks.len(), 1);
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![1.0, 0.0, 3.0, 0.0]]);
        let b = Tensor::new(&[[-1.0f32, 2.0, 3.0, -4.0]], &d).unwrap();
        let y = with_relu_masks(&masks, || add_relu(&b, &z)).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![-1.0, 0.0, 3.0, 0.0]]);
        // live again after the replay
        let y = add_relu(&b, &z).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![0.0, 2.0, 3.0, 0.0]]);
        assert!(with_relu_masks(&masks, || Ok(b.clone())).is_err());
        assert!(
            with_relu_masks(&masks, || {
                add_relu(&b, &z)?;
                add_relu(&b, &z)
            })
            .is_err()
        );
    }

    /// The fused CPU op and the composite path (used on other devices) agree.
    /// Both are f32 over 4 x 6 x 6 = 144 values per channel: the per-channel
    /// sums (mean, variance; in the backward those of `dy` and `dy x^`)
    /// round by at most `144 u = 8.6e-6` of their summands' magnitude in
    /// any order (Higham's bound), the values are of order 1, so 1e-4
    /// bounds the chained sums and the normalisation with room. No kernel
    /// path is involved (no convolution, no gemm); readings:
    /// docs/numerics.md.
    #[test]
    fn fused_and_composite_batch_norm_agree() {
        for (train, relu) in [(true, false), (false, false), (true, true), (false, true)] {
            let b = Builder::new(3, &Device::Cpu);
            let bn = BatchNorm2d::new(5, &b).unwrap();
            let store = b.finish();
            for (_, v) in store.all() {
                let n = v.elem_count();
                let vals: Vec<f32> = (0..n).map(|i| 0.8 + 0.1 * (i as f32).sin()).collect();
                v.set(&Tensor::from_vec(vals, n, &Device::Cpu).unwrap())
                    .unwrap();
            }
            let xs: Vec<f32> = (0..4 * 5 * 6 * 6)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let x = Var::from_tensor(&Tensor::from_vec(xs, (4, 5, 6, 6), &Device::Cpu).unwrap())
                .unwrap();
            let snap = store.snapshot_buffers().unwrap();
            let run = |fused: bool| {
                store.restore_buffers(&snap).unwrap();
                let y = if fused {
                    bn.forward_cpu(x.as_tensor(), train, relu).unwrap()
                } else {
                    let y = bn.forward_composite(x.as_tensor(), train).unwrap();
                    if relu { y.relu().unwrap() } else { y }
                };
                let loss = (y.sqr().unwrap().sum_all().unwrap() + y.sum_all().unwrap()).unwrap();
                let g = loss.backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let mut out = vec![
                    flat(&y),
                    flat(g.get(x.as_tensor()).unwrap()),
                    flat(g.get(&bn.weight).unwrap()),
                ];
                out.push(flat(g.get(&bn.bias).unwrap()));
                out.push(flat(bn.running_mean.as_tensor()));
                out.push(flat(bn.running_var.as_tensor()));
                out
            };
            let mut worst = 0f32;
            for (i, (a, b)) in run(true).iter().zip(run(false)).enumerate() {
                for (p, q) in a.iter().zip(&b) {
                    worst = worst.max((p - q).abs() / (1.0 + q.abs()));
                    assert!(
                        (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                        "train {train} relu {relu} output {i}: {p} vs {q}"
                    );
                }
            }
            eprintln!(
                "train {train} relu {relu}: largest |fused - composite| / (1 + |composite|) {worst:.2e}"
            );
        }
    }

    /// The fused `relu(a + b)` matches the composite in value and in both
    /// gradients (inputs keep away from 0, where conventions differ).
    #[test]
    fn fused_add_relu_matches_composite() {
        let dev = Device::Cpu;
        let n = 3 * 4 * 5 * 7;
        let a: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.3) / 25.0)
            .collect();
        let b: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 89) as f32 - 44.1) / 30.0)
            .collect();
        let va = Var::from_tensor(&Tensor::from_vec(a, (3, 4, 5, 7), &dev).unwrap()).unwrap();
        let vb = Var::from_tensor(&Tensor::from_vec(b, (3, 4, 5, 7), &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (3, 4, 5, 7), &dev).unwrap();
        let run = |fused: bool| {
            let y = if fused {
                add_relu(va.as_tensor(), vb.as_tensor()).unwrap()
            } else {
                (va.as_tensor() + vb.as_tensor()).unwrap().relu().unwrap()
            };
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            [
                flat(&y),
                flat(g.get(va.as_tensor()).unwrap()),
                flat(g.get(vb.as_tensor()).unwrap()),
            ]
        };
        let (f, c) = (run(true), run(false));
        assert!(f[0].contains(&0.0) && f[0].iter().any(|&v| v > 0.0));
        assert_eq!(f, c);
    }
}
