//! Slice-batched training passes: the thesis' step of 256 images as 8
//! devices of 32 (Section 5.1: 8 GPUs, batch 256, m-sharpness with
//! m = 32) run as one pass on one device.
//!
//! A sliced pass ([`Model::forward_sliced`]) splits a batch of `n` images
//! into `count` consecutive slices of `n / count`, as devices would hold
//! them, and runs the model once over the whole batch with:
//!
//! - **BatchNorm per slice**: each slice normalised by its own batch
//!   statistics, computed on slices of the one batched tensor; the
//!   running statistics updated once, to the mean of the updates each
//!   slice would make from the values on entry (grouped as
//!   [`Slices::per_group`] says, so that the means are taken in the order
//!   the sequential form takes them);
//! - **per-slice weights** where [`SliceWeights`] gives them: a tensor of
//!   shape `(count, ...)` per parameter, slice `s` computing with row `s`.
//!   The gradient of the sum of the slices' losses with respect to row `s`
//!   is slice `s`'s own gradient: SAM's per-device gradients from one
//!   backward pass, and its per-device perturbed weights `w + eps_s` in
//!   one forward pass.
//!
//! # Design: slices of one tensor, convolutions per slice only where
//! the weights differ
//!
//! Everything but the convolution is batched for any weights:
//! BatchNorm's statistics are reductions over `(count, n / count, C, H, W)`
//! per `(slice, channel)` (on the CPU in f32, the fused kernel of
//! `cpu::batchnorm` with its `slices` set: statistic `s * C + c` sums
//! slice `s`'s channel `c` in the order a pass over that slice alone
//! does; tested to 1e-5, read as the same bits here), the linear layer with
//! per-slice weights is one batched matmul, and ReLU, the residual sums,
//! pooling and the loss are per image. A convolution with one set of
//! weights (SGD with ghost BatchNorm, SAM with one perturbation per step)
//! is one convolution over the whole batch.
//!
//! A convolution with per-slice weights is a grouped convolution in the
//! layout `(n / count, count * C, H, W)`. candle 0.11.1 has no grouped
//! kernel on any device: `Tensor::conv2d` with `groups > 1` splits the
//! input and the kernel into `groups` pieces and runs one convolution per
//! piece (candle-core `conv.rs`, `conv2d_with_algo`), and samlab's CPU
//! kernels (`cpu::conv`) and `device_conv`'s backward take one set of
//! weights. So here a convolution with per-slice weights runs per slice on
//! narrowed views (samlab's kernels on the CPU, cuDNN through
//! `device_conv` elsewhere) inside one custom op, so that its backward is
//! one op too (no zero-padded gradient per slice, as candle's `narrow`
//! backward would make). Where the rows are copies of one set of weights
//! (SAM's first pass: [`SliceWeights::copies`]) the forward convolution
//! and the input gradient run once over the whole batch and only the
//! weight gradient runs per slice. A native grouped convolution (cuDNN's
//! `cudnnSetConvolutionGroupCount`) would make the perturbed pass's
//! convolutions one call each too; it needs a CUDA op outside candle and a
//! GPU to test it on, and is not built.
//!
//! Only training-mode passes slice: evaluation normalises with the
//! running statistics and has nothing per device.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use candle_core::{TensorId, Var};

use crate::error::{ErrorKind, Result};
use crate::{Model, ParamStore};

/// How a sliced pass splits its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slices {
    /// Slices of the batch: consecutive runs of `n / count` images.
    pub count: usize,
    /// Slices per group of the running-statistics update: each group's
    /// update is the mean of its slices' (in order), and the step's the
    /// mean of the groups' (in order); `count` for one mean over all
    /// slices. SAM's sequential form averages within each m-sharpness
    /// chunk, then over the chunks.
    pub per_group: usize,
}

impl Slices {
    /// `count` slices, the running statistics one mean over them all.
    pub fn new(count: usize) -> Slices {
        Slices {
            count,
            per_group: count,
        }
    }

    fn check(&self, n: usize) -> Result<()> {
        if self.count == 0 || self.per_group == 0 || !self.count.is_multiple_of(self.per_group) {
            return Err(ErrorKind::BadConfig(format!(
                "sliced pass: {} slices in groups of {} (both at least 1, the groups dividing the slices)",
                self.count, self.per_group
            ))
            .into());
        }
        if !n.is_multiple_of(self.count) {
            return Err(ErrorKind::BadConfig(format!(
                "sliced pass: {} slices do not divide the batch of {n}",
                self.count
            ))
            .into());
        }
        Ok(())
    }
}

/// The weights of a sliced pass: the model's own for every slice, or a
/// tensor `(count, ...)` per trainable parameter whose row `s` slice `s`
/// computes with (as [`Var`]s, whose gradients are then the per-slice
/// gradients).
#[derive(Debug)]
pub struct SliceWeights {
    vars: BTreeMap<String, Var>,
    /// Every row a copy of the model's weights at the time of creation.
    equal: bool,
}

impl SliceWeights {
    /// The model's own weights in every slice: a pass's gradient is then
    /// the gradient of its loss (with respect to the model's parameters).
    pub fn shared() -> SliceWeights {
        SliceWeights {
            vars: BTreeMap::new(),
            equal: true,
        }
    }

    /// `count` copies of every trainable parameter's current value.
    pub fn copies(params: &ParamStore, count: usize) -> Result<SliceWeights> {
        let vars = params
            .trainable()
            .map(|(name, var)| {
                let w = var.as_tensor().detach();
                let rows = Tensor::stack(&vec![w; count], 0)?;
                Ok((name.to_string(), Var::from_tensor(&rows)?))
            })
            .collect::<Result<_>>()?;
        Ok(SliceWeights { vars, equal: true })
    }

    /// Per-slice weights: `rows[name]` of shape `(count, ...param's shape)`
    /// for every trainable parameter of `params`, no other name.
    pub fn per_slice(
        params: &ParamStore,
        count: usize,
        rows: BTreeMap<String, Tensor>,
    ) -> Result<SliceWeights> {
        let mut vars = BTreeMap::new();
        for (name, var) in params.trainable() {
            let t = rows.get(name).ok_or_else(|| {
                ErrorKind::BadConfig(format!("per-slice weights: no rows for `{name}`"))
            })?;
            let mut want = vec![count];
            want.extend_from_slice(var.dims());
            if t.dims() != want.as_slice() {
                return Err(ErrorKind::BadConfig(format!(
                    "per-slice weights: `{name}` has shape {:?}, expected {want:?}",
                    t.dims()
                ))
                .into());
            }
            vars.insert(name.to_string(), Var::from_tensor(&t.detach())?);
        }
        if let Some(extra) = rows.keys().find(|k| !vars.contains_key(*k)) {
            return Err(ErrorKind::BadConfig(format!(
                "per-slice weights: `{extra}` is no trainable parameter"
            ))
            .into());
        }
        Ok(SliceWeights { vars, equal: false })
    }

    /// The per-slice parameters by name (empty for [`SliceWeights::shared`]).
    /// Whether the rows are copies of one another is fixed when the
    /// weights are made ([`SliceWeights::copies`] or [`SliceWeights::per_slice`]): setting a
    /// row through a `Var` here afterwards does not tell the pass, which
    /// would still run copies' convolutions over the whole batch with row
    /// 0. Make new weights instead.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }
}

/// The sliced pass running on this thread: its slices and each per-slice
/// parameter's rows by the model tensor's id.
struct Active {
    slices: Slices,
    rows: HashMap<TensorId, Tensor>,
    equal: bool,
}

thread_local! {
    static ACTIVE: RefCell<Option<Active>> = const { RefCell::new(None) };
}

/// Ends the sliced pass when dropped, whatever the pass did.
struct End;

impl Drop for End {
    fn drop(&mut self) {
        ACTIVE.with(|a| *a.borrow_mut() = None);
    }
}

/// The slices of the pass running on this thread, if one runs.
pub(crate) fn active() -> Option<Slices> {
    ACTIVE.with(|a| a.borrow().as_ref().map(|a| a.slices))
}

/// The per-slice rows standing in for model tensor `t` in the running
/// pass, and whether all rows are copies of one value.
pub(crate) fn rows(t: &Tensor) -> Option<(Tensor, bool)> {
    ACTIVE.with(|a| {
        a.borrow()
            .as_ref()
            .and_then(|a| a.rows.get(&t.id()).map(|r| (r.clone(), a.equal)))
    })
}

/// Model tensor `t` as `count` rows `(count, ...t's shape)` in the running
/// pass: its per-slice rows, or `t` itself in every row.
pub(crate) fn rows_or_shared(t: &Tensor, count: usize) -> Result<Tensor> {
    Ok(match rows(t) {
        Some((r, _)) => r,
        None => {
            let mut dims = vec![count];
            dims.extend_from_slice(t.dims());
            t.unsqueeze(0)?.broadcast_as(dims)?
        }
    })
}

impl Model {
    /// A training-mode forward pass of `x` in `slices` (module docs), with
    /// `weights`' rows for the slices where it has them. BatchNorm's
    /// running statistics are updated as [`Slices::per_group`] says.
    pub fn forward_sliced(
        &self,
        x: &Tensor,
        slices: Slices,
        weights: &SliceWeights,
    ) -> Result<Tensor> {
        slices.check(x.dim(0)?)?;
        if active().is_some() {
            return Err(ErrorKind::BadConfig("sliced passes do not nest".into()).into());
        }
        let mut rows = HashMap::new();
        for (name, var) in self.params.trainable() {
            if let Some(v) = weights.vars.get(name) {
                if v.dim(0)? != slices.count {
                    return Err(ErrorKind::BadConfig(format!(
                        "per-slice weights of {} rows for a pass of {} slices",
                        v.dim(0)?,
                        slices.count
                    ))
                    .into());
                }
                rows.insert(var.as_tensor().id(), v.as_tensor().clone());
            }
        }
        if rows.len() != weights.vars.len() {
            return Err(ErrorKind::BadConfig(
                "per-slice weights for parameters this model does not have".into(),
            )
            .into());
        }
        ACTIVE.with(|a| {
            *a.borrow_mut() = Some(Active {
                slices,
                rows,
                equal: weights.equal,
            })
        });
        let _end = End;
        self.forward(x, true)
    }
}

/// The mean of `ts` in order: `(t0 + t1 + ...) / len`, the sequential
/// form's mean of running-statistics snapshots.
fn mean_in_order(ts: &[Tensor]) -> Result<Tensor> {
    let sum = ts[1..].iter().try_fold(ts[0].clone(), |acc, t| &acc + t)?;
    Ok((sum / ts.len() as f64)?)
}

/// The running statistic after a sliced pass from the slices' own updates
/// (each from the values on entry): the mean within each group, then the
/// mean of the groups (one group: its mean).
pub(crate) fn running_update(per_slice: &[Tensor], slices: Slices) -> Result<Tensor> {
    let groups: Vec<Tensor> = per_slice
        .chunks(slices.per_group)
        .map(mean_in_order)
        .collect::<Result<_>>()?;
    if groups.len() == 1 {
        Ok(groups.into_iter().next().expect("one group"))
    } else {
        mean_in_order(&groups)
    }
}

/// How one convolution of a sliced pass computes a slice (the layer's own
/// dispatch: samlab's kernels on the CPU in f32, `device_conv` elsewhere).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvShape {
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    fn cpu(&self, x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32
    }

    /// samlab's CPU kernel for this shape.
    fn op(&self) -> crate::cpu::conv::ConvOp {
        crate::cpu::conv::ConvOp {
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// `conv2d(x, w)`, untracked.
    fn forward(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        if self.cpu(x) {
            x.contiguous()?
                .apply_op2_no_bwd(&w.contiguous()?, &self.op())
        } else {
            x.conv2d(&w.contiguous()?, self.padding, self.stride, 1, 1)
        }
    }

    /// The input gradient of `conv2d(x, w)` from `dy` (contiguous).
    fn input_grad(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
        if self.cpu(x) {
            return self.op().input_grad(dy, &w.contiguous()?, x.shape());
        }
        crate::device_conv::input_grad(dy, w, x.dims4()?, self.stride, self.padding)
    }

    /// `(dx, dw)` of `conv2d(x, w)` from `dy` (`dx` only where `want_dx`).
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        want_dx: bool,
    ) -> candle_core::Result<(Option<Tensor>, Tensor)> {
        let dy = dy.contiguous()?;
        let dx = if want_dx {
            Some(self.input_grad(x, w, &dy)?)
        } else {
            None
        };
        let dw = if self.cpu(x) {
            self.op().weight_grad(&x.contiguous()?, &dy, w.shape())?
        } else {
            crate::device_conv::weight_grad(x, &dy, w.dims4()?, self.stride, self.padding)?
        };
        Ok((dx, dw))
    }
}

/// `x (n, Cin, H, W)` with per-slice weights `rows (count, Cout, Cin, k,
/// k)` (slice `s` of `x` with row `s`), `equal` where every row is the
/// same value: `(n, Cout, OH, OW)`.
pub(crate) fn conv2d(x: &Tensor, rows: &Tensor, equal: bool, shape: ConvShape) -> Result<Tensor> {
    let count = rows.dim(0)?;
    let n = x.dim(0)?;
    if !n.is_multiple_of(count) {
        return Err(ErrorKind::BadConfig(format!(
            "sliced convolution: {count} slices do not divide the batch of {n}"
        ))
        .into());
    }
    if shape.cpu(x) && rows.dtype() == DType::F32 {
        // samlab's kernels straight on the slices' storage: no copy of
        // the output beyond the slices' concatenation.
        return Ok(x.contiguous()?.apply_op2(
            &rows.contiguous()?,
            SlicedConvCpu {
                shape,
                count,
                equal,
            },
        )?);
    }
    let (xd, rd) = (x.detach(), rows.detach());
    let y = if equal {
        shape.forward(&xd, &rd.get(0)?)?
    } else {
        let b = n / count;
        let ys = (0..count)
            .map(|s| shape.forward(&xd.narrow(0, s * b, b)?, &rd.get(s)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&ys, 0)?
    };
    if !(x.track_op() || rows.track_op()) {
        return Ok(y);
    }
    Ok(y.apply_op3(
        x,
        rows,
        SlicedConv {
            shape,
            count,
            equal,
        },
    )?)
}

/// `(x, rows) -> y` on the CPU in f32: [`ConvShape::forward`]'s kernels
/// on each slice's part of the storage; the backward is [`SlicedConv`]'s.
struct SlicedConvCpu {
    shape: ConvShape,
    count: usize,
    equal: bool,
}

impl CustomOp2 for SlicedConvCpu {
    fn name(&self) -> &'static str {
        "samlab-sliced-conv2d-cpu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.shape.op();
        let dims = l2.shape().dims();
        let row_shape = Shape::from(dims[1..].to_vec());
        let row = row_shape.elem_count();
        let row_at = |s: usize| {
            Layout::contiguous_with_offset(row_shape.clone(), l2.start_offset() + s * row)
        };
        if self.equal {
            return op.cpu_fwd(s1, l1, s2, &row_at(0));
        }
        let (n, cin, h, w) = l1.shape().dims4()?;
        let b = n / self.count;
        let per = b * cin * h * w;
        let mut out: Vec<f32> = Vec::new();
        let mut shape = None;
        for s in 0..self.count {
            let xl = Layout::contiguous_with_offset((b, cin, h, w), l1.start_offset() + s * per);
            let (y, sh) = op.cpu_fwd(s1, &xl, s2, &row_at(s))?;
            let CpuStorage::F32(y) = y else {
                candle_core::bail!("sliced convolution: f32 expected");
            };
            if out.is_empty() {
                out.reserve(y.len() * self.count);
            }
            out.extend_from_slice(&y);
            shape = Some(sh);
        }
        let (_, cout, oh, ow) = shape.expect("at least one slice").dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((n, cout, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        rows: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, dx, dw) = SlicedConv {
            shape: self.shape,
            count: self.count,
            equal: self.equal,
        }
        .bwd(dy, x, rows, dy, dy)?;
        Ok((dx, dw))
    }
}

/// `(y, x, rows) -> y` (a copy), whose backward is the sliced convolution's.
struct SlicedConv {
    shape: ConvShape,
    count: usize,
    equal: bool,
}

impl CustomOp3 for SlicedConv {
    fn name(&self) -> &'static str {
        "samlab-sliced-conv2d"
    }

    crate::device_conv::pass_through_forward!();

    fn bwd(
        &self,
        _y: &Tensor,
        x: &Tensor,
        rows: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xd, rd) = (x.detach(), rows.detach());
        let n = x.dim(0)?;
        let b = n / self.count;
        let want_dx = x.track_op();
        let mut dxs = Vec::with_capacity(self.count);
        let mut dws = Vec::with_capacity(self.count);
        // Copies of one value: one input gradient over the whole batch.
        let dx_whole = if self.equal && want_dx {
            Some(self.shape.input_grad(&xd, &rd.get(0)?, &dy.contiguous()?)?)
        } else {
            None
        };
        for s in 0..self.count {
            let xs = xd.narrow(0, s * b, b)?;
            let dys = dy.narrow(0, s * b, b)?;
            let (dx, dw) =
                self.shape
                    .grads(&xs, &rd.get(s)?, &dys, want_dx && dx_whole.is_none())?;
            if let Some(dx) = dx {
                dxs.push(dx);
            }
            dws.push(dw);
        }
        let dx = match dx_whole {
            Some(dx) => Some(dx),
            None if want_dx => Some(Tensor::cat(&dxs, 0)?),
            None => None,
        };
        Ok((None, dx, Some(Tensor::stack(&dws, 0)?)))
    }
}
