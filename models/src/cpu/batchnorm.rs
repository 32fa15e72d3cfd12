//! BatchNorm2d (optionally followed by ReLU) as one candle custom op on the
//! CPU, forward and backward; and `relu(a + b)`, the end of a residual
//! block, as another.
//!
//! Why: composed from candle ops, the gradient of the (1, C, 1, 1)
//! broadcasts is a single f32 sum over N*H*W terms per channel, which loses
//! about 1e-3 relative accuracy on ResNet-18 at batch 8 (JAX's f32 stays
//! within 1e-5 of f64 there). Here every per-channel sum is accumulated in
//! f64, and the whole layer is one pass over the data instead of a dozen;
//! the ReLU after it costs nothing extra (candle's ReLU backward alone is
//! four passes with three allocations).
//!
//! Forward (training): mean and biased variance per channel over (N, H, W);
//! evaluation uses the running statistics. Backward returns the gradients of
//! x, weight and bias; in training it includes the path through the batch
//! statistics. With `relu`, the gradient passes where the output is
//! positive (PyTorch's and JAX's convention at 0).
//!
//! Parallel work is split by channel for the sums (each channel's sum is
//! computed by one thread in a fixed order) and by image for the
//! elementwise passes, so results do not depend on the thread count.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Per-channel values of a forward pass, kept for its backward.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub mean: Vec<f64>,
    /// Biased variance (divided by N*H*W).
    pub var: Vec<f64>,
    pub invstd: Vec<f64>,
    /// The weight, as the forward pass saw it.
    weight: Vec<f64>,
}

pub struct BnOp {
    /// Evaluation: the running mean and variance; training: `None`.
    pub running: Option<(Vec<f32>, Vec<f32>)>,
    pub eps: f64,
    /// Apply ReLU to the output.
    pub relu: bool,
    pub stats: Arc<Mutex<Stats>>,
    /// The images as this many consecutive slices, each normalised by its
    /// own statistics with its own weight and bias (a sliced pass,
    /// `crate::slices`): the weight, bias and statistics then hold
    /// `slices * C` values, slice `s`'s channel `k` at `s * C + k`. 1: the
    /// layer as PyTorch's (the same code, the same bits).
    pub slices: usize,
}

/// BatchNorm's per-channel map as it normalises an element, `(v - mean) *
/// scale + shift` (then `max(0)` with `relu`), with `scale = weight /
/// sqrt(var + eps)` rounded once from f64: [`BnOp`] applies it in its own
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
fn scale_of(var: f64, weight: f64, eps: f64) -> (f64, f32) {
    let invstd = 1.0 / (var + eps).sqrt();
    (invstd, (invstd * weight) as f32)
}

impl Norm {
    /// Evaluation mode's map from the running statistics, as [`BnOp`]
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

    /// Normalises channel `ch`'s values in place.
    pub(crate) fn apply(&self, ch: usize, vals: &mut [f32]) {
        let (mu, sc, sh) = (self.mean[ch], self.scale[ch], self.shift[ch]);
        if self.relu {
            vals.iter_mut()
                .for_each(|v| *v = normalise_relu(*v, mu, sc, sh));
        } else {
            vals.iter_mut().for_each(|v| *v = normalise(*v, mu, sc, sh));
        }
    }

    /// Writes channel `ch`'s normalised `src` into `dst`.
    #[inline]
    pub(crate) fn write(
        &self,
        ch: usize,
        src: impl Iterator<Item = f32>,
        dst: &mut [std::mem::MaybeUninit<f32>],
    ) {
        let (mu, sc, sh) = (self.mean[ch], self.scale[ch], self.shift[ch]);
        if self.relu {
            for (o, v) in dst.iter_mut().zip(src) {
                o.write(normalise_relu(v, mu, sc, sh));
            }
        } else {
            for (o, v) in dst.iter_mut().zip(src) {
                o.write(normalise(v, mu, sc, sh));
            }
        }
    }
}

/// What a convolution does to each output as it writes it: a [`Norm`],
/// and at a residual block's end the block's shortcut added after it and
/// ReLU, `relu(norm(v) + short)`, as [`AddRelu`] computes it from the
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

    /// Writes channel `ch`'s `src`, the outputs from `at` on, into `dst`.
    #[inline]
    pub(crate) fn write(
        &self,
        ch: usize,
        at: usize,
        src: impl Iterator<Item = f32>,
        dst: &mut [std::mem::MaybeUninit<f32>],
    ) {
        let Some(res) = self.residual else {
            return self.norm.write(ch, src, dst);
        };
        let n = self.norm;
        let (mu, sc, sh) = (n.mean[ch], n.scale[ch], n.shift[ch]);
        let res = &res[at..][..dst.len()];
        for ((o, v), &q) in dst.iter_mut().zip(src).zip(res) {
            o.write((normalise(v, mu, sc, sh) + q).max(0.0));
        }
    }

    /// [`write`](Self::write) in place.
    pub(crate) fn apply(&self, ch: usize, at: usize, vals: &mut [f32]) {
        let Some(res) = self.residual else {
            return self.norm.apply(ch, vals);
        };
        let n = self.norm;
        let (mu, sc, sh) = (n.mean[ch], n.scale[ch], n.shift[ch]);
        let res = &res[at..][..vals.len()];
        for (v, &q) in vals.iter_mut().zip(res) {
            *v = (normalise(*v, mu, sc, sh) + q).max(0.0);
        }
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    crate::cpu::conv::f32_slice(s, l, "batch-norm", what)
}

/// `f(ch)` for every channel, in parallel, in channel order.
fn per_channel<T: Send>(c: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    (0..c).into_par_iter().map(f).collect()
}

/// The `hw` values of statistic `v`'s channel in every image of its
/// slice of `x` (N, C, HW) in slices of `b` images: channel `v % c` of
/// images `(v / c) b ..` (one slice of all N images: channel `v` of each).
fn planes(x: &[f32], c: usize, hw: usize, v: usize, b: usize) -> impl Iterator<Item = &[f32]> {
    let ch = v % c;
    x.chunks_exact(c * hw)
        .skip(v / c * b)
        .take(b)
        .map(move |img| &img[ch * hw..(ch + 1) * hw])
}

/// `(n / slices, slices * c)`: images per slice and statistics, or why
/// the slices do not fit.
fn sliced(n: usize, c: usize, slices: usize, params: usize) -> candle_core::Result<(usize, usize)> {
    let g = slices.max(1);
    if !n.is_multiple_of(g) || params != g * c {
        candle_core::bail!(
            "batch-norm: {g} slices of a batch of {n} with {c} channels need {} weights, got {params}",
            g * c
        );
    }
    Ok((n / g, g * c))
}

/// Accumulators per f64 sum: independent chains the compiler can keep in
/// one vector register (one chain of dependent adds waits on each add's
/// latency).
const LANES: usize = 8;

/// `sum f(v)` over `xs` in f64, as [`lanes_sum2`].
fn lanes_sum(xs: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    lanes_sum2(xs, xs, xs, |v, _, _| (f(v), 0.0)).0
}

/// Two sums of `f(x, dy, y)` over three slices of one length, in f64:
/// element `i` goes into accumulator `i % LANES`, and the accumulators are
/// added in order, a fixed order whatever the threads.
fn lanes_sum2(
    xs: &[f32],
    ds: &[f32],
    ys: &[f32],
    f: impl Fn(f32, f32, f32) -> (f64, f64),
) -> (f64, f64) {
    let (mut a, mut b) = ([0f64; LANES], [0f64; LANES]);
    let (xc, dc, yc) = (
        xs.chunks_exact(LANES),
        ds.chunks_exact(LANES),
        ys.chunks_exact(LANES),
    );
    let rest = (xc.remainder(), dc.remainder(), yc.remainder());
    for ((x, d), y) in xc.zip(dc).zip(yc) {
        for j in 0..LANES {
            let (p, q) = f(x[j], d[j], y[j]);
            a[j] += p;
            b[j] += q;
        }
    }
    for j in 0..rest.0.len().min(rest.1.len()).min(rest.2.len()) {
        let (p, q) = f(rest.0[j], rest.1[j], rest.2[j]);
        a[j] += p;
        b[j] += q;
    }
    (a.iter().sum(), b.iter().sum())
}

impl CustomOp3 for BnOp {
    fn name(&self) -> &'static str {
        "samlab-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = slice(s1, l1, "input")?;
        let weight = slice(s2, l2, "weight")?;
        let bias = slice(s3, l3, "bias")?;
        let (b, gc) = sliced(n, c, self.slices, weight.len())?;
        let hw = h * w;
        let m = (b * hw) as f64;
        let moments: Vec<(f64, f64)> = match &self.running {
            Some((rm, rv)) => (0..gc)
                .map(|v| (rm[v % c] as f64, rv[v % c] as f64))
                .collect(),
            None => per_channel(gc, |ch| {
                let sum: f64 = planes(x, c, hw, ch, b)
                    .map(|p| lanes_sum(p, |v| v as f64))
                    .sum();
                let mean = sum / m;
                let sq: f64 = planes(x, c, hw, ch, b)
                    .map(|p| {
                        lanes_sum(p, |v| {
                            let d = v as f64 - mean;
                            d * d
                        })
                    })
                    .sum();
                (mean, sq / m)
            }),
        };
        let stats = Stats {
            mean: moments.iter().map(|s| s.0).collect(),
            var: moments.iter().map(|s| s.1).collect(),
            invstd: moments
                .iter()
                .map(|s| scale_of(s.1, 1.0, self.eps).0)
                .collect(),
            weight: weight.iter().map(|&v| v as f64).collect(),
        };
        let mean: Vec<f32> = stats.mean.iter().map(|&v| v as f32).collect();
        let scale: Vec<f32> = (0..gc)
            .map(|ch| scale_of(stats.var[ch], stats.weight[ch], self.eps).1)
            .collect();
        // SAFETY: each chunk is one image (c * hw floats, as x's are), and
        // the loops write every channel's hw floats of it.
        let y = unsafe {
            super::par_filled(x.len(), c * hw, |i, yi| {
                let xi = &x[i * c * hw..][..c * hw];
                // Image i's slice's statistics.
                let at = i / b * c;
                for ch in 0..c {
                    let (mu, sc, sh) = (mean[at + ch], scale[at + ch], bias[at + ch]);
                    let out = yi[ch * hw..(ch + 1) * hw].iter_mut();
                    let inp = &xi[ch * hw..(ch + 1) * hw];
                    if self.relu {
                        for (o, &v) in out.zip(inp) {
                            o.write(normalise_relu(v, mu, sc, sh));
                        }
                    } else {
                        for (o, &v) in out.zip(inp) {
                            o.write(normalise(v, mu, sc, sh));
                        }
                    }
                }
            })
        };
        *self.stats.lock().expect("batch-norm stats lock") = stats;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = weight.shape().clone();
        let sums = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let op = BnGrad {
            stats: self.stats.lock().expect("batch-norm stats lock").clone(),
            train: self.running.is_none(),
            relu: self.relu,
            sums: sums.clone(),
            slices: self.slices,
        };
        let dx = x.apply_op3_no_bwd(&grad.contiguous()?, &res.contiguous()?, &op)?;
        let (dweight, dbias) = std::mem::take(&mut *sums.lock().expect("batch-norm sums lock"));
        let dev = x.device();
        Ok((
            Some(dx),
            Some(Tensor::from_vec(dweight, c.clone(), dev)?),
            Some(Tensor::from_vec(dbias, c, dev)?),
        ))
    }
}

/// `(x, dy, y) -> dx`; the weight and bias gradients go to `sums`.
struct BnGrad {
    stats: Stats,
    train: bool,
    relu: bool,
    /// (dweight, dbias), written by the op.
    sums: Arc<Mutex<(Vec<f32>, Vec<f32>)>>,
    /// As [`BnOp::slices`].
    slices: usize,
}

impl CustomOp3 for BnGrad {
    fn name(&self) -> &'static str {
        "samlab-batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = slice(s1, l1, "input")?;
        let dy = slice(s2, l2, "output gradient")?;
        let y = slice(s3, l3, "output")?;
        if dy.len() != x.len() || y.len() != x.len() {
            candle_core::bail!("batch-norm: gradient {:?} does not fit", l2.shape());
        }
        let (b, gc) = sliced(n, c, self.slices, self.stats.mean.len())?;
        let hw = h * w;
        let m = (b * hw) as f64;
        let relu = self.relu;
        // The gradient reaching the normalisation: zero where ReLU cut.
        let g = |d: f32, out: f32| if relu && out <= 0.0 { 0.0 } else { d };
        let st = &self.stats;
        let sums: Vec<(f64, f64)> = per_channel(gc, |ch| {
            let (mean, invstd) = (st.mean[ch], st.invstd[ch]);
            let (mut sum_dy, mut sum_dy_xc) = (0f64, 0f64);
            for ((xp, dp), yp) in planes(x, c, hw, ch, b)
                .zip(planes(dy, c, hw, ch, b))
                .zip(planes(y, c, hw, ch, b))
            {
                let (a, b) = lanes_sum2(xp, dp, yp, |v, d, o| {
                    let d = g(d, o) as f64;
                    (d, d * (v as f64 - mean))
                });
                sum_dy += a;
                sum_dy_xc += b;
            }
            (sum_dy, sum_dy_xc * invstd)
        });
        // dx = k (dy - a - xhat b) = k32 dy - ka32 - kb32 (x - mean32),
        // with k = weight * invstd and, in training, a and b the means of
        // dy and dy * xhat.
        let coef: Vec<(f32, f32, f32, f32)> = (0..gc)
            .map(|ch| {
                let k = st.weight[ch] * st.invstd[ch];
                let (a, b) = if self.train {
                    (sums[ch].0 / m, sums[ch].1 / m)
                } else {
                    (0.0, 0.0)
                };
                (
                    k as f32,
                    (k * a) as f32,
                    (k * b * st.invstd[ch]) as f32,
                    st.mean[ch] as f32,
                )
            })
            .collect();
        // SAFETY: each chunk is one image (c * hw floats, as x's are), and
        // the loops write every channel's hw floats of it.
        let dx = unsafe {
            super::par_filled(x.len(), c * hw, |i, dxi| {
                let n = c * hw;
                let (xi, dyi, yi) = (&x[i * n..][..n], &dy[i * n..][..n], &y[i * n..][..n]);
                // Image i's slice's coefficients.
                let at = i / b * c;
                for (ch, &(k, ka, kb, mu)) in coef[at..at + c].iter().enumerate() {
                    let r = ch * hw..(ch + 1) * hw;
                    for (((o, &v), &d), &out) in dxi[r.clone()]
                        .iter_mut()
                        .zip(&xi[r.clone()])
                        .zip(&dyi[r.clone()])
                        .zip(&yi[r])
                    {
                        o.write(k * g(d, out) - ka - kb * (v - mu));
                    }
                }
            })
        };
        *self.sums.lock().expect("batch-norm sums lock") = (
            sums.iter().map(|s| s.1 as f32).collect(),
            sums.iter().map(|s| s.0 as f32).collect(),
        );
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `relu(a + b)` for two tensors of one shape (the end of a residual block).
pub struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "samlab-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("add-relu: shapes {:?} and {:?}", l1.shape(), l2.shape());
        }
        let a = crate::cpu::conv::f32_slice(s1, l1, "add-relu", "a")?;
        let b = crate::cpu::conv::f32_slice(s2, l2, "add-relu", "b")?;
        let y = zip_map(a, b, |p, q| (p + q).max(0.0));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?.apply_op2_no_bwd(res, &ReluGrad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// Elements per parallel task of the elementwise ops.
const CHUNK: usize = 1 << 14;

/// `f(a[i], b[i])` for every `i`, in parallel chunks (same-length slices).
fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let len = a.len().min(b.len());
    // SAFETY: chunk i covers elements i*CHUNK.. of the output, and a and b
    // have at least `len` elements, so the zip writes each of them.
    unsafe {
        super::par_filled(len, CHUNK, |i, o| {
            let (ac, bc) = (&a[i * CHUNK..len], &b[i * CHUNK..len]);
            for ((o, &p), &q) in o.iter_mut().zip(ac).zip(bc) {
                o.write(f(p, q));
            }
        })
    }
}

/// `(dy, y) -> dy where y > 0, else 0`.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "samlab-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dy = crate::cpu::conv::f32_slice(s1, l1, "relu-grad", "gradient")?;
        let y = crate::cpu::conv::f32_slice(s2, l2, "relu-grad", "output")?;
        if dy.len() != y.len() {
            candle_core::bail!("relu-grad: shapes {:?} and {:?}", l1.shape(), l2.shape());
        }
        let dx = zip_map(dy, y, |d, v| if v > 0.0 { d } else { 0.0 });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
