//! The convolution wherever the CPU kernels of `crate::cpu` do not run
//! (CUDA, and other dtypes than f32): candle's `conv2d` forward, and both
//! gradients computed as forward convolutions too, so that with the `cudnn`
//! feature cuDNN serves all three.
//!
//! Why: candle's own backward of `conv2d` takes the input gradient with
//! `conv_transpose2d`, whose CUDA kernel is a naive loop per output element
//! (candle-kernels 0.11.1, `conv.cu`: "Naive implementation of
//! conv_transpose2d"), and the weight gradient with a `conv2d` whose kernel
//! operand is a transposed view, which candle's cuDNN path does not take
//! (`kernel_l.is_contiguous()`) and hands to its direct kernel. Here:
//!
//! - input gradient, stride 1: `conv2d(dy, flip(w)^T, padding k-1-p)`;
//!   stride s: the same after spreading `dy` with s-1 zeros between its
//!   pixels (and the rows and columns the forward pass dropped at the end);
//! - weight gradient: `conv2d(x^T, dy^T, padding p, dilation s)^T` with both
//!   operands made contiguous (candle's own formula, cuDNN-eligible).
//!
//! `SAMLAB_CONV_GRAD=candle` restores candle's own backward, for measuring
//! one against the other (`scripts/gpu-check.sh` does).
//!
//! The forward value is candle's `conv2d` of the detached operands; a
//! custom op then copies it and attaches the backward (candle has no other
//! way to give an op its own gradient): one extra copy of each output.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Shape, Tensor};

use crate::error::Result;

/// Which backward the non-CPU convolution uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvGrad {
    /// Both gradients as forward convolutions (this module; the default).
    Forward,
    /// candle's own: `conv_transpose2d` and a `conv2d` of transposed views.
    Candle,
}

impl ConvGrad {
    /// `SAMLAB_CONV_GRAD` (`forward`, the default, or `candle`), read once;
    /// any other value is named in a warning and read as `forward`.
    pub fn from_env() -> ConvGrad {
        static MODE: OnceLock<ConvGrad> = OnceLock::new();
        *MODE.get_or_init(|| match std::env::var("SAMLAB_CONV_GRAD").as_deref() {
            Ok("candle") => ConvGrad::Candle,
            Ok("forward") | Err(_) => ConvGrad::Forward,
            Ok(other) => {
                eprintln!(
                    "warning: SAMLAB_CONV_GRAD={other:?} is neither \"forward\" nor \"candle\"; using forward"
                );
                ConvGrad::Forward
            }
        })
    }
}

/// `x (N, Cin, H, W) * w (Cout, Cin, k, k) -> (N, Cout, OH, OW)`, square
/// kernels, one stride and padding for both axes.
pub(crate) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    grad: ConvGrad,
) -> Result<Tensor> {
    if grad == ConvGrad::Candle || !(x.track_op() || w.track_op()) {
        return Ok(x.conv2d(w, padding, stride, 1, 1)?);
    }
    let y = x.detach().conv2d(&w.detach(), padding, stride, 1, 1)?;
    Ok(y.apply_op3(x, w, Attach { stride, padding })?)
}

/// `(y, x, w) -> y` (a copy), whose backward is the convolution's.
struct Attach {
    stride: usize,
    padding: usize,
}

/// The forward passes of a `CustomOp3` that hands its first input on
/// unchanged, on the CPU and CUDA: an op that exists only to attach its
/// own backward (`Attach` here, `slices::SlicedConv`). Needs
/// `BackendStorage`, `CpuStorage`, `CudaStorage`, `Layout` and `Shape` in
/// scope.
macro_rules! pass_through_forward {
    () => {
        fn cpu_fwd(
            &self,
            s: &CpuStorage,
            l: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            Ok((s.try_clone(l)?, l.shape().clone()))
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
            _: &CudaStorage,
            _: &Layout,
            _: &CudaStorage,
            _: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            Ok((s.try_clone(l)?, l.shape().clone()))
        }
    };
}
pub(crate) use pass_through_forward;

impl CustomOp3 for Attach {
    fn name(&self) -> &'static str {
        "samlab-conv2d-by-forward"
    }

    pass_through_forward!();

    fn bwd(
        &self,
        _y: &Tensor,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            Some(input_grad(dy, w, x.dims4()?, self.stride, self.padding)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(weight_grad(x, dy, w.dims4()?, self.stride, self.padding)?)
        } else {
            None
        };
        Ok((None, dx, dw))
    }
}

/// `dx` of `y = conv2d(x, w)` from `dy`, by one forward convolution.
pub(crate) fn input_grad(
    dy: &Tensor,
    w: &Tensor,
    (_, _, h, wd): (usize, usize, usize, usize),
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (_, _, k, _) = w.dims4()?;
    if padding >= k {
        // No forward convolution reproduces this; candle's transpose does.
        let (_, _, oh, ow) = dy.dims4()?;
        let out_pad = h + 2 * padding - (oh - 1) * stride - k;
        debug_assert_eq!(out_pad, wd + 2 * padding - (ow - 1) * stride - k);
        return dy.conv_transpose2d(w, padding, out_pad, stride, 1);
    }
    // flip(w)^T: (Cin, Cout, k, k), each kernel turned by 180 degrees.
    let rev: Vec<u32> = (0..k as u32).rev().collect();
    let rev = Tensor::new(rev.as_slice(), w.device())?;
    let wt = w
        .transpose(0, 1)?
        .contiguous()?
        .index_select(&rev, 2)?
        .index_select(&rev, 3)?;
    // Contiguous: cuDNN takes strided views too, but may then pick slower
    // algorithms.
    let spread = spread(dy, stride, (h, wd), k, padding)?.contiguous()?;
    spread.conv2d(&wt, k - 1 - padding, 1, 1, 1)
}

/// `dy` with `stride - 1` zeros between neighbouring pixels and the
/// rows/columns that the forward pass's stride left out at the far edge,
/// so that a stride-1 convolution of it gives an `(h, w)` input gradient.
fn spread(
    dy: &Tensor,
    stride: usize,
    (h, w): (usize, usize),
    k: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    if stride == 1 {
        return Ok(dy.clone());
    }
    let (n, c, oh, ow) = dy.dims4()?;
    // Every window start of a stride-1 pass over the padded input: the
    // spread outputs plus the rows/columns past the last strided window.
    let (rows, cols) = (h + 2 * padding + 1 - k, w + 2 * padding + 1 - k);
    dy.reshape((n, c, oh, 1, ow, 1))?
        .pad_with_zeros(3, 0, stride - 1)?
        .pad_with_zeros(5, 0, stride - 1)?
        .reshape((n, c, oh * stride, ow * stride))?
        .narrow(2, 0, rows)?
        .narrow(3, 0, cols)
}

/// `dw` of `y = conv2d(x, w)` from `dy`: candle's formula, operands contiguous.
pub(crate) fn weight_grad(
    x: &Tensor,
    dy: &Tensor,
    (_, _, k, _): (usize, usize, usize, usize),
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let xt = x.transpose(0, 1)?.contiguous()?;
    let dyt = dy.transpose(0, 1)?.contiguous()?;
    let g = xt.conv2d(&dyt, padding, 1, stride, 1)?.transpose(0, 1)?;
    let (_, _, gh, gw) = g.dims4()?;
    let g = if gh != k || gw != k {
        g.narrow(2, 0, k)?.narrow(3, 0, k)?
    } else {
        g
    };
    g.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Value, input gradient and weight gradient equal candle's own conv2d
    /// and its backward, in f64 on the CPU, for every stride, padding and
    /// kernel shape the models use and a few they do not (odd sizes that
    /// drop a row at stride 2, padding 0, 5x5, padding >= k). Both sides
    /// are f64 sums of at most 50 products of standard normals taken in
    /// other orders: they differ by ~1e-15 relative, and 1e-10 catches any
    /// misplaced term (of order 1).
    #[test]
    fn gradients_match_candles_backward() {
        let dev = Device::Cpu;
        let cases = [
            // (n, cin, cout, h, k, stride, padding)
            (2, 3, 4, 8, 3, 1, 1),
            (2, 3, 4, 8, 3, 2, 1),
            (2, 3, 4, 7, 3, 2, 1),
            (2, 4, 5, 8, 1, 2, 0),
            (1, 2, 3, 9, 1, 2, 0),
            (2, 3, 2, 9, 5, 1, 2),
            (2, 3, 2, 11, 5, 3, 2),
            (1, 2, 2, 6, 3, 1, 0),
            (1, 2, 2, 6, 1, 1, 1),
        ];
        for (n, cin, cout, h, k, s, p) in cases {
            // candle's own backward takes one output padding for both axes,
            // so only stride 1 may have non-square images.
            let wd = if s == 1 { h + 1 } else { h };
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, cin, h, wd), &dev).unwrap())
                .unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f64, 1.0, (cout, cin, k, k), &dev).unwrap())
                .unwrap();
            let run = |grad: ConvGrad| {
                let y = conv2d(x.as_tensor(), w.as_tensor(), s, p, grad).unwrap();
                let r = Tensor::ones_like(&y)
                    .unwrap()
                    .cumsum(3)
                    .unwrap()
                    .sin()
                    .unwrap();
                let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                [
                    flat(&y),
                    flat(g.get(x.as_tensor()).unwrap()),
                    flat(g.get(w.as_tensor()).unwrap()),
                ]
            };
            let (ours, theirs) = (run(ConvGrad::Forward), run(ConvGrad::Candle));
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(
                    a.len(),
                    b.len(),
                    "case {:?} output {i}",
                    (n, cin, cout, h, k, s, p)
                );
                for (u, v) in a.iter().zip(b) {
                    assert!(
                        (u - v).abs() <= 1e-10 * (1.0 + v.abs()),
                        "case {:?} output {i}: {u} vs {v}",
                        (n, cin, cout, h, k, s, p)
                    );
                }
            }
        }
    }
}
