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

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::avx2_copy;
use super::norm::{normalise, normalise_relu, scale_of};

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
#[inline(always)]
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
#[inline(always)]
fn lanes_sum(xs: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    lanes_sum2(xs, xs, xs, |v, _, _| (f(v), 0.0)).0
}

/// Two sums of `f(x, dy, y)` over three slices of one length, in f64:
/// element `i` goes into accumulator `i % LANES`, and the accumulators are
/// added in order, a fixed order whatever the threads.
#[inline(always)]
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
        let moments: Vec<(f64, f64)> = match &self.running {
            Some((rm, rv)) => (0..gc)
                .map(|v| (rm[v % c] as f64, rv[v % c] as f64))
                .collect(),
            None => per_channel(gc, |ch| moments_of(x, c, hw, ch, b)),
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
                let r = i / b * c..(i / b + 1) * c;
                let (mu, sc, sh) = (&mean[r.clone()], &scale[r.clone()], &bias[r]);
                normalise_image(yi, xi, mu, sc, sh, hw, self.relu);
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
        let st = &self.stats;
        let sums: Vec<(f64, f64)> = per_channel(gc, |ch| {
            let (sum_dy, sum_dy_xc) = grad_sums(x, dy, y, c, hw, ch, b, st.mean[ch], relu);
            (sum_dy, sum_dy_xc * st.invstd[ch])
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
                grad_image(dxi, xi, dyi, yi, &coef[at..at + c], hw, relu);
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
        let y = zip_map(a, b, add_relu_chunk);
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

avx2_copy! {
    /// `o = relu(p + q)` over a chunk.
    fn add_relu_chunk / add_relu_chunk_portable(o: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32]) {
        for ((o, &p), &q) in o.iter_mut().zip(a).zip(b) {
            o.write((p + q).max(0.0));
        }
    }
}

avx2_copy! {
    /// `o = d where v > 0, else 0` over a chunk.
    fn relu_grad_chunk / relu_grad_chunk_portable(o: &mut [MaybeUninit<f32>], d: &[f32], v: &[f32]) {
        for ((o, &d), &v) in o.iter_mut().zip(d).zip(v) {
            o.write(if v > 0.0 { d } else { 0.0 });
        }
    }
}

/// Channel `ch`'s mean and biased variance over its `b` images (of `c`
/// channels of `hw` values each), in f64: per image [`lanes_sum`]'s sums
/// (or, where [`super::wide_loops`] holds, [`sum_lanes_avx2`]'s, the same),
/// then the images in order.
fn moments_of(x: &[f32], c: usize, hw: usize, ch: usize, b: usize) -> (f64, f64) {
    let wide = super::wide_loops();
    let sum_of = |p: &[f32], mean: Option<f64>| -> f64 {
        if wide {
            // SAFETY: `wide_loops` checked the CPU has AVX2.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                sum_lanes_avx2(p, mean)
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("wide loops are x86-64 only")
        } else {
            match mean {
                None => lanes_sum(p, |v| v as f64),
                Some(mean) => lanes_sum(p, |v| square_dev(v, mean)),
            }
        }
    };
    let m = (b * hw) as f64;
    let sum: f64 = planes(x, c, hw, ch, b).map(|p| sum_of(p, None)).sum();
    let mean = sum / m;
    let sq: f64 = planes(x, c, hw, ch, b).map(|p| sum_of(p, Some(mean))).sum();
    (mean, sq / m)
}

/// `(v - mean)^2` in f64, a product then no FMA.
#[inline(always)]
fn square_dev(v: f32, mean: f64) -> f64 {
    let d = v as f64 - mean;
    d * d
}

/// [`lanes_sum`] on AVX vectors of `v` (`mean` `None`) or of
/// [`square_dev`]: lane `j` gets elements `j, j + 8, ...` in order, the
/// remainder and the sum of the lanes as `lanes_sum` takes them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_lanes_avx2(xs: &[f32], mean: Option<f64>) -> f64 {
    use std::arch::x86_64::*;
    let n = xs.len();
    let full = n / LANES * LANES;
    let mut a = [0f64; LANES];
    // SAFETY: every load reads 8 floats at i < full <= n.
    unsafe {
        let mu = _mm256_set1_pd(mean.unwrap_or(0.0));
        let (mut a0, mut a1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        while i < full {
            let v = _mm256_loadu_ps(xs.as_ptr().add(i));
            let (vl, vh) = (
                _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
            );
            let (tl, th) = if mean.is_some() {
                let (dl, dh) = (_mm256_sub_pd(vl, mu), _mm256_sub_pd(vh, mu));
                (_mm256_mul_pd(dl, dl), _mm256_mul_pd(dh, dh))
            } else {
                (vl, vh)
            };
            a0 = _mm256_add_pd(a0, tl);
            a1 = _mm256_add_pd(a1, th);
            i += LANES;
        }
        _mm256_storeu_pd(a.as_mut_ptr(), a0);
        _mm256_storeu_pd(a.as_mut_ptr().add(4), a1);
    }
    for j in 0..n - full {
        let v = xs[full + j];
        a[j] += match mean {
            None => v as f64,
            Some(mean) => square_dev(v, mean),
        };
    }
    a.iter().sum()
}

avx2_copy! {
    /// One image's output: channel `ch` of `xi` normalised by (`mean`,
    /// `scale`, `shift`)`[ch]`, then ReLU with `relu`.
    fn normalise_image / normalise_image_portable(
        yi: &mut [MaybeUninit<f32>],
        xi: &[f32],
        mean: &[f32],
        scale: &[f32],
        shift: &[f32],
        hw: usize,
        relu: bool,
    ) {
        for ch in 0..mean.len() {
            let (mu, sc, sh) = (mean[ch], scale[ch], shift[ch]);
            let out = yi[ch * hw..(ch + 1) * hw].iter_mut();
            let inp = &xi[ch * hw..(ch + 1) * hw];
            if relu {
                for (o, &v) in out.zip(inp) {
                    o.write(normalise_relu(v, mu, sc, sh));
                }
            } else {
                for (o, &v) in out.zip(inp) {
                    o.write(normalise(v, mu, sc, sh));
                }
            }
        }
    }
}

/// Channel `ch`'s sums of the gradient reaching the normalisation (zero
/// where ReLU cut, with `relu`) and of it times `x - mean`, over its `b`
/// images, in f64: per image [`lanes_sum2`]'s sums, then the images in
/// order. Where [`super::wide_loops`] holds, each image's sums come from
/// [`grad_lanes_avx2`], the same sums on AVX vectors (LLVM made branches
/// of the ReLU test and scalar conversions of the portable loop).
#[allow(clippy::too_many_arguments)]
fn grad_sums(
    x: &[f32],
    dy: &[f32],
    y: &[f32],
    c: usize,
    hw: usize,
    ch: usize,
    b: usize,
    mean: f64,
    relu: bool,
) -> (f64, f64) {
    let wide = super::wide_loops();
    let (mut sum_dy, mut sum_dy_xc) = (0f64, 0f64);
    for ((xp, dp), yp) in planes(x, c, hw, ch, b)
        .zip(planes(dy, c, hw, ch, b))
        .zip(planes(y, c, hw, ch, b))
    {
        let (a, b) = if wide {
            // SAFETY: `wide_loops` checked the CPU has AVX2.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                grad_lanes_avx2(xp, dp, yp, mean, relu)
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("wide loops are x86-64 only")
        } else {
            lanes_sum2(xp, dp, yp, |v, d, o| grad_terms(v, d, o, mean, relu))
        };
        sum_dy += a;
        sum_dy_xc += b;
    }
    (sum_dy, sum_dy_xc)
}

/// One element's two terms in [`grad_sums`].
#[inline(always)]
fn grad_terms(v: f32, d: f32, o: f32, mean: f64, relu: bool) -> (f64, f64) {
    let d = if relu && o <= 0.0 { 0.0 } else { d } as f64;
    (d, d * (v as f64 - mean))
}

/// [`lanes_sum2`] of [`grad_terms`] on AVX vectors: lane `j` of the
/// accumulators gets elements `j, j + 8, ...` in order, each term computed
/// as `grad_terms` does (the ReLU'd gradient an exact +0 or `d`, a
/// product and a sum per f64, no FMA), the remainder and the sum of the
/// lanes as `lanes_sum2` takes them: the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn grad_lanes_avx2(xs: &[f32], ds: &[f32], ys: &[f32], mean: f64, relu: bool) -> (f64, f64) {
    use std::arch::x86_64::*;
    let n = xs.len().min(ds.len()).min(ys.len());
    let full = n / LANES * LANES;
    let (mut a, mut b) = ([0f64; LANES], [0f64; LANES]);
    // SAFETY: every load reads 8 floats at i < full <= n of each slice.
    unsafe {
        let zero = _mm256_setzero_ps();
        let mu = _mm256_set1_pd(mean);
        let (mut a0, mut a1, mut b0, mut b1) = (
            _mm256_setzero_pd(),
            _mm256_setzero_pd(),
            _mm256_setzero_pd(),
            _mm256_setzero_pd(),
        );
        let mut i = 0;
        while i < full {
            let v = _mm256_loadu_ps(xs.as_ptr().add(i));
            let mut d = _mm256_loadu_ps(ds.as_ptr().add(i));
            if relu {
                let o = _mm256_loadu_ps(ys.as_ptr().add(i));
                // +0 where o <= 0 (a NaN output keeps d, as `<=` is false).
                d = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(o, zero), d);
            }
            let (dl, dh) = (
                _mm256_cvtps_pd(_mm256_castps256_ps128(d)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(d)),
            );
            let (vl, vh) = (
                _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
            );
            a0 = _mm256_add_pd(a0, dl);
            a1 = _mm256_add_pd(a1, dh);
            b0 = _mm256_add_pd(b0, _mm256_mul_pd(dl, _mm256_sub_pd(vl, mu)));
            b1 = _mm256_add_pd(b1, _mm256_mul_pd(dh, _mm256_sub_pd(vh, mu)));
            i += LANES;
        }
        _mm256_storeu_pd(a.as_mut_ptr(), a0);
        _mm256_storeu_pd(a.as_mut_ptr().add(4), a1);
        _mm256_storeu_pd(b.as_mut_ptr(), b0);
        _mm256_storeu_pd(b.as_mut_ptr().add(4), b1);
    }
    for j in 0..n - full {
        let (p, q) = grad_terms(xs[full + j], ds[full + j], ys[full + j], mean, relu);
        a[j] += p;
        b[j] += q;
    }
    (a.iter().sum(), b.iter().sum())
}

avx2_copy! {
    /// One image's input gradient, channel by channel: `k * g - ka - kb *
    /// (x - mu)` with `(k, ka, kb, mu) = coef[ch]` and `g` the output
    /// gradient, zero where ReLU cut (with `relu`).
    fn grad_image / grad_image_portable(
        dxi: &mut [MaybeUninit<f32>],
        xi: &[f32],
        dyi: &[f32],
        yi: &[f32],
        coef: &[(f32, f32, f32, f32)],
        hw: usize,
        relu: bool,
    ) {
        for (ch, &(k, ka, kb, mu)) in coef.iter().enumerate() {
            let r = ch * hw..(ch + 1) * hw;
            for (((o, &v), &d), &out) in dxi[r.clone()]
                .iter_mut()
                .zip(&xi[r.clone()])
                .zip(&dyi[r.clone()])
                .zip(&yi[r])
            {
                let g = if relu && out <= 0.0 { 0.0 } else { d };
                o.write(k * g - ka - kb * (v - mu));
            }
        }
    }
}

/// `f` over parallel chunks of `a` and `b` (same-length slices) and of
/// the output.
fn zip_map(a: &[f32], b: &[f32], f: fn(&mut [MaybeUninit<f32>], &[f32], &[f32])) -> Vec<f32> {
    let len = a.len().min(b.len());
    // SAFETY: chunk i covers elements i*CHUNK.. of the output, and a and b
    // have at least `len` elements, so the zip writes each of them.
    unsafe {
        super::par_filled(len, CHUNK, |i, o| {
            f(o, &a[i * CHUNK..len], &b[i * CHUNK..len]);
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
        let dx = zip_map(dy, y, relu_grad_chunk);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from a fixed hash, of both signs, with exact zeros of both
    /// signs; for seeds 1-3 (the gradient tests' x, dy and y) a NaN at
    /// index `5 + seed`.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = crate::cpu::test_hash(i, seed);
                if (1..=3).contains(&seed) && i == 5 + seed {
                    return f32::NAN;
                }
                match h % 23 {
                    0 => 0.0,
                    1 => -0.0,
                    _ => crate::cpu::test_unit(h),
                }
            })
            .collect()
    }

    fn written(v: &[MaybeUninit<f32>]) -> Vec<u32> {
        // SAFETY: the callers filled every element first.
        v.iter()
            .map(|o| unsafe { o.assume_init() }.to_bits())
            .collect()
    }

    /// The AVX2 copies of the element-wise passes give their baseline
    /// bodies' bits (NaNs, signed zeros, ReLU on and off, lengths off the
    /// vector width).
    #[test]
    fn the_wide_element_wise_passes_have_the_portable_bits() {
        if !wide_loops_here() {
            eprintln!("skipped: this CPU has no AVX2, and only the portable passes run on it");
            return;
        }
        let fresh = |n: usize| vec![MaybeUninit::new(f32::NAN); n];
        for (c, hw) in [(3, 1), (5, 7), (16, 64), (2, 1031)] {
            let n = c * hw;
            let (x, d, y) = (values(n, 1), values(n, 2), values(n, 3));
            let (mu, sc, sh) = (values(c, 11), values(c, 12), values(c, 13));
            let coef: Vec<(f32, f32, f32, f32)> = (0..c)
                .map(|i| (sc[i], mu[i] * 0.5, sh[i] * 0.25, mu[i]))
                .collect();
            for relu in [false, true] {
                let (mut a, mut b) = (fresh(n), fresh(n));
                normalise_image(&mut a, &x, &mu, &sc, &sh, hw, relu);
                normalise_image_portable(&mut b, &x, &mu, &sc, &sh, hw, relu);
                assert_eq!(
                    written(&a),
                    written(&b),
                    "normalise c {c} hw {hw} relu {relu}"
                );
                let (mut a, mut b) = (fresh(n), fresh(n));
                grad_image(&mut a, &x, &d, &y, &coef, hw, relu);
                grad_image_portable(&mut b, &x, &d, &y, &coef, hw, relu);
                assert_eq!(
                    written(&a),
                    written(&b),
                    "gradient c {c} hw {hw} relu {relu}"
                );
            }
            let (mut a, mut b) = (fresh(n), fresh(n));
            add_relu_chunk(&mut a, &x, &d);
            add_relu_chunk_portable(&mut b, &x, &d);
            assert_eq!(written(&a), written(&b), "add-relu c {c} hw {hw}");
            let (mut a, mut b) = (fresh(n), fresh(n));
            relu_grad_chunk(&mut a, &d, &y);
            relu_grad_chunk_portable(&mut b, &d, &y);
            assert_eq!(written(&a), written(&b), "relu-grad c {c} hw {hw}");
        }
    }

    /// The AVX copy of the backward pass's sums gives `lanes_sum2`'s bits,
    /// with and without the ReLU, on lengths with and without a remainder.
    #[test]
    fn the_wide_gradient_sums_have_the_portable_bits() {
        if !wide_loops_here() {
            eprintln!("skipped: this CPU has no AVX2, and only the portable sums run on it");
            return;
        }
        // Seeds 1-3 put a NaN in each of x, dy and y; 21-23 none.
        for (n, s) in [0, 3, 8, 16, 61, 64, 1024, 1031]
            .into_iter()
            .flat_map(|n| [(n, 0), (n, 20)])
        {
            let (x, d, y) = (values(n, s + 1), values(n, s + 2), values(n, s + 3));
            for relu in [false, true] {
                for mean in [0.0, 0.3125, -1.7] {
                    let want = lanes_sum2(&x, &d, &y, |v, d, o| grad_terms(v, d, o, mean, relu));
                    // SAFETY: `wide_loops_here` checked for AVX2.
                    #[cfg(target_arch = "x86_64")]
                    let got = unsafe { grad_lanes_avx2(&x, &d, &y, mean, relu) };
                    #[cfg(not(target_arch = "x86_64"))]
                    let got = want;
                    let bits = |p: (f64, f64)| (p.0.to_bits(), p.1.to_bits());
                    assert_eq!(
                        bits(got),
                        bits(want),
                        "n {n} seeds {s} relu {relu} mean {mean}"
                    );
                }
            }
        }
    }

    /// The AVX copy of the forward pass's sums gives `lanes_sum`'s bits.
    #[test]
    fn the_wide_moment_sums_have_the_portable_bits() {
        if !wide_loops_here() {
            eprintln!("skipped: this CPU has no AVX2, and only the portable sums run on it");
            return;
        }
        for n in [0, 3, 8, 16, 61, 64, 1024, 1031] {
            let x = values(n, 4);
            for mean in [None, Some(0.0), Some(0.3125), Some(-1.7)] {
                let want = match mean {
                    None => lanes_sum(&x, |v| v as f64),
                    Some(m) => lanes_sum(&x, |v| square_dev(v, m)),
                };
                // SAFETY: `wide_loops_here` checked for AVX2.
                #[cfg(target_arch = "x86_64")]
                let got = unsafe { sum_lanes_avx2(&x, mean) };
                #[cfg(not(target_arch = "x86_64"))]
                let got = want;
                assert_eq!(got.to_bits(), want.to_bits(), "n {n} mean {mean:?}");
            }
        }
    }

    fn wide_loops_here() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}
