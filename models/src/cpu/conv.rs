//! Conv2d on the CPU as im2col + gemm: the forward pass and both backward
//! passes, as one candle custom op.
//!
//! Why: candle 0.11's CPU convolution computes small gemms over tiles of
//! 512 output pixels, its weight gradient as another convolution with a
//! batch-sized kernel, and its input gradient with a naive transposed
//! convolution; together they were most of a training step (see
//! docs/cpu-profile.md). Here a chunk of images is one gemm per pass:
//!
//! - forward: `out (Cout, P) = W (Cout, K) @ col(x) (K, P)`
//! - input gradient, stride 1: the forward convolution of `dout` with the
//!   kernel flipped and its channels swapped (padding `k - 1 - pad`);
//!   other strides: `dx = col2im(W^T (K, Cout) @ dout (Cout, P))`
//! - weight gradient: `dW = sum dout (Cout, P) @ col(x)^T (P, K)`
//!
//! with `K = Cin * k * k` and `P` the output pixels of the chunk: one image,
//! or the columns of several images side by side where one image has fewer
//! than [`MIN_COLS`] pixels (ResNet-18's 4x4 layer-4 maps are too little
//! work for one gemm). Chunks are spread over rayon's threads; the columns
//! are rebuilt in the backward pass rather than kept (keeping them would
//! cost K * P floats per image and layer), in per-thread scratch buffers
//! that live as long as the thread. The weight gradient is summed over
//! fixed groups of images in f32 and over the groups in f64, in a fixed
//! order: the chunking depends on the shapes only, so results do not
//! depend on the number of threads.
//!
//! On CPUs with AVX2 and FMA every convolution larger than 1x1 skips the
//! columns in its forward pass:
//! [`super::direct`] computes it from a zero-padded copy of each image, and
//! so the stride-1 input gradient too, and, for 3x3 stride-1 kernels on
//! rows of 16 or more pixels, the weight gradient. The other gradients
//! (stride 2, small maps) stay on im2col + gemm.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::dgrad::StridedGrad;
use super::direct::{self, Direct, Pitch, Tiling};
use super::norm::{Epilogue, Norm};
use super::{Path, path};

/// Images per f32 partial sum of the weight gradient (at least).
const GROUP: usize = 8;

/// Output pixels one gemm should cover at least: smaller images are put
/// side by side in one chunk.
const MIN_COLS: usize = 256;

/// Output rows at least this wide take the direct kernel's
/// [`Tiling::Pixels`]; narrower ones its [`Tiling::Channels`]: along the
/// pixels it computes `k - 1` dropped columns per row and rounds each plane
/// up to whole tiles (a third of its work at 8x8 and 4x4), and measured no
/// faster than im2col + gemm there (docs/cpu-profile.md, third session).
const DIRECT_MIN_WIDTH: usize = 16;

/// Which convolutions may take the direct kernel: none without it
/// ([`direct::available`]: AVX2 and FMA, not the portable path); otherwise
/// as [`Path`] (`SAMLAB_CPU_CONV`, read once per process) says: `im2col`
/// none, `pixels` only those with [`Tiling::Pixels`], unset or `col2im` all.
fn direct_allowed(tiling: Tiling) -> bool {
    direct::available()
        && match path() {
            Path::Auto | Path::Col2im => true,
            Path::Pixels => tiling == Tiling::Pixels,
            Path::Im2col | Path::Portable => false,
        }
}

/// The most output channels a strided convolution may have for its input
/// gradient to take [`StridedGrad`]: its one chain over the output
/// channels per tile ran at 1.2-2.2x of gemm + col2im with 32 and 64 (the
/// CIFAR ResNets' downsampling and shortcuts, WRN-16-2's first), at
/// 0.8-1.1x with 128 and 512 (`layer_speed`'s in-process comparison,
/// docs/cpu-profile.md).
const STRIDED_DGRAD_MAX_COUT: usize = 64;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of `len` floats (contents unspecified),
/// kept per thread between calls so that no step allocates or faults in
/// fresh pages for its columns.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
        // Only if `f` itself asked for scratch (it does not); stay correct.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

#[derive(Clone, Copy, Debug)]
struct Geom {
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(x: &Shape, w: &Shape, stride: usize, pad: usize) -> candle_core::Result<Geom> {
        let (b, cin, h, wd) = x.dims4()?;
        let (cout, cin2, k, k2) = w.dims4()?;
        if cin != cin2 || k != k2 || stride == 0 {
            candle_core::bail!("conv: input {x:?} does not fit kernel {w:?} (stride {stride})");
        }
        if h + 2 * pad < k || wd + 2 * pad < k {
            candle_core::bail!("conv: input {x:?} is smaller than the kernel {w:?}");
        }
        Ok(Geom {
            b,
            cin,
            h,
            w: wd,
            cout,
            k,
            stride,
            pad,
            oh: (h + 2 * pad - k) / stride + 1,
            ow: (wd + 2 * pad - k) / stride + 1,
        })
    }

    fn kk(&self) -> usize {
        self.cin * self.k * self.k
    }

    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// An error unless `dy` has this convolution's output shape.
    fn check_out_grad(&self, dy: &Shape) -> candle_core::Result<()> {
        if dy.dims() != [self.b, self.cout, self.oh, self.ow] {
            candle_core::bail!("conv: output gradient {dy:?} does not fit");
        }
        Ok(())
    }

    /// Floats of one input image.
    fn img(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// Floats of one output image.
    fn out_img(&self) -> usize {
        self.cout * self.p()
    }

    /// Images per gemm (depends on the shapes only).
    fn chunk(&self) -> usize {
        MIN_COLS.div_ceil(self.p().max(1)).clamp(1, self.b.max(1))
    }

    /// A 1x1 convolution with stride 1 and no padding: the columns are the image.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// The convolution whose forward pass is this one's input gradient
    /// (stride 1 only): input `dout`, kernel flipped with its channels
    /// swapped, padding `k - 1 - pad`.
    fn transposed(&self) -> Option<Geom> {
        (self.stride == 1 && self.pad < self.k).then(|| Geom {
            b: self.b,
            cin: self.cout,
            h: self.oh,
            w: self.ow,
            cout: self.cin,
            k: self.k,
            stride: 1,
            pad: self.k - 1 - self.pad,
            oh: self.h,
            ow: self.w,
        })
    }

    /// The output positions `[lo, hi)` along one axis (input size `size`,
    /// output size `out`) whose input position `o * stride + tap - pad`
    /// lies inside the image (empty when `lo >= hi`).
    fn valid(&self, tap: usize, size: usize, out: usize) -> (usize, usize) {
        let (s, pad) = (self.stride, self.pad);
        let lo = if pad > tap {
            (pad - tap).div_ceil(s)
        } else {
            0
        };
        let hi = if size + pad > tap {
            ((size + pad - tap - 1) / s + 1).min(out)
        } else {
            0
        };
        (lo.min(out), hi)
    }

    /// [`valid`](Self::valid) output columns for kernel column `kw`.
    fn valid_cols(&self, kw: usize) -> (usize, usize) {
        self.valid(kw, self.w, self.ow)
    }

    /// [`valid`](Self::valid) output rows for kernel row `kh`.
    fn valid_rows(&self, kh: usize) -> (usize, usize) {
        self.valid(kh, self.h, self.oh)
    }

    /// The columns of one image: row `(c*k + kh)*k + kw` of the column
    /// matrix, element `oy*ow + ox`, is written at `col[row * ld + oy*ow + ox]`.
    fn im2col(&self, x: &[f32], col: &mut [f32], ld: usize) {
        let (k, s, pad, p, ow) = (self.k, self.stride, self.pad, self.p(), self.ow);
        for c in 0..self.cin {
            let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for kh in 0..k {
                let (ylo, yhi) = self.valid_rows(kh);
                for kw in 0..k {
                    let row = &mut col[((c * k + kh) * k + kw) * ld..][..p];
                    let (lo, hi) = self.valid_cols(kw);
                    if lo >= hi || ylo >= yhi {
                        row.fill(0.0);
                        continue;
                    }
                    row[..ylo * ow].fill(0.0);
                    row[yhi * ow..].fill(0.0);
                    if s == 1 && ow == self.w {
                        // Output and input rows have the same pitch: one copy
                        // from the first valid element to the last, then zero
                        // the columns that wrapped around from the next row.
                        let (from, to) = (ylo * ow + lo, (yhi - 1) * ow + hi);
                        let first = (ylo + kh - pad) * self.w + lo + kw - pad;
                        row[from..to].copy_from_slice(&plane[first..first + (to - from)]);
                        for oy in ylo..yhi {
                            row[oy * ow..oy * ow + lo].fill(0.0);
                            row[oy * ow + hi..(oy + 1) * ow].fill(0.0);
                        }
                        continue;
                    }
                    for oy in ylo..yhi {
                        let out = &mut row[oy * ow..(oy + 1) * ow];
                        let iy = oy * s + kh - pad;
                        let src = &plane[iy * self.w..(iy + 1) * self.w];
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        let first = lo * s + kw - pad;
                        if s == 1 {
                            out[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
                        } else {
                            for (o, v) in out[lo..hi].iter_mut().zip(src[first..].iter().step_by(s))
                            {
                                *o = *v;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds columns (laid out as [`im2col`](Self::im2col) writes them) back
    /// onto one image's gradient: im2col's adjoint. (Not inlined, so that a
    /// profile names it; docs/cpu-profile.md.)
    #[inline(never)]
    fn col2im(&self, col: &[f32], ld: usize, dx: &mut [f32]) {
        let (k, s, pad, ow) = (self.k, self.stride, self.pad, self.ow);
        for c in 0..self.cin {
            let plane = &mut dx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for kh in 0..k {
                let (ylo, yhi) = self.valid_rows(kh);
                for kw in 0..k {
                    let row = &col[((c * k + kh) * k + kw) * ld..];
                    let (lo, hi) = self.valid_cols(kw);
                    if lo >= hi {
                        continue;
                    }
                    for oy in ylo..yhi {
                        let iy = oy * s + kh - pad;
                        let dst = &mut plane[iy * self.w..(iy + 1) * self.w];
                        let first = lo * s + kw - pad;
                        let vals = &row[oy * ow + lo..oy * ow + hi];
                        if s == 1 {
                            for (d, v) in dst[first..first + (hi - lo)].iter_mut().zip(vals) {
                                *d += v;
                            }
                        } else {
                            for (d, v) in dst[first..].iter_mut().step_by(s).zip(vals) {
                                *d += v;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The column matrix (K, n * P) of `n` consecutive images in `x`, in
    /// `buf`; a pointwise convolution of one image needs no copy.
    fn columns<'a>(&self, x: &'a [f32], n: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let (p, img) = (self.p(), self.img());
        if n == 1 && self.is_pointwise() {
            return &x[..img];
        }
        for i in 0..n {
            self.im2col(&x[i * img..(i + 1) * img], &mut buf[i * p..], n * p);
        }
        &buf[..self.kk() * n * p]
    }

    /// `(Cout, n * P)` matrix from `n` consecutive output-shaped images
    /// (`(n, Cout, P)`), in `buf`; one image needs no copy. (Not inlined,
    /// so that a profile names it.)
    #[inline(never)]
    fn gather_out<'a>(&self, y: &'a [f32], n: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let p = self.p();
        if n == 1 {
            return &y[..self.out_img()];
        }
        for i in 0..n {
            for co in 0..self.cout {
                buf[co * n * p + i * p..][..p].copy_from_slice(&y[(i * self.cout + co) * p..][..p]);
            }
        }
        &buf[..self.cout * n * p]
    }

    /// The direct kernel for this convolution's forward pass, where it
    /// applies: kernels larger than 1x1 (a stride-1 pointwise convolution
    /// reads the image as its columns already; a strided one measured
    /// slower direct, docs/cpu-profile.md), on a CPU with AVX2 and FMA, unless
    /// `SAMLAB_CPU_CONV` says otherwise ([`direct_allowed`]); its tiling by
    /// the stride and [`DIRECT_MIN_WIDTH`].
    fn direct(&self) -> Option<Direct> {
        let tiling = if self.stride == 1 && self.ow >= DIRECT_MIN_WIDTH {
            Tiling::Pixels
        } else {
            Tiling::Channels
        };
        (self.k > 1
            && self.cin > 0
            && self.cout > 0
            && self.oh * self.ow > 0
            && direct_allowed(tiling))
        .then_some(Direct {
            cin: self.cin,
            h: self.h,
            w: self.w,
            cout: self.cout,
            k: self.k,
            pad: self.pad,
            stride: self.stride,
            tiling,
            pitch: Pitch::Narrow,
        })
    }

    /// The forward pass `conv(x, w)` for the whole batch, in a new vector
    /// (not zeroed first where the direct kernel writes every element),
    /// each output put through `epilogue` where there is one.
    fn forward_vec(&self, x: &[f32], w: &[f32], epilogue: Option<Epilogue<'_>>) -> Vec<f32> {
        let len = self.b * self.out_img();
        let Some(d) = self.direct() else {
            let mut out = vec![0f32; len];
            self.forward(x, w, &mut out);
            if let Some(e) = epilogue {
                let (p, oimg) = (self.p().max(1), self.out_img().max(1));
                out.par_chunks_mut(oimg).enumerate().for_each(|(i, y)| {
                    for (ch, plane) in y.chunks_exact_mut(p).enumerate() {
                        e.apply(ch, i * oimg + ch * p, plane);
                    }
                });
            }
            return out;
        };
        let (img, oimg) = (self.img(), self.out_img());
        let packed = d.pack(w);
        let per_task = d.images_per_task(self.b);
        // SAFETY: each chunk is the output of `n` consecutive images, and
        // `Direct::images` writes every element of it.
        unsafe {
            super::par_filled(len, per_task * oimg, |t, y| {
                let n = y.len() / oimg;
                with_scratch(d.scratch_len(n), |buf| {
                    let xs = &x[t * per_task * img..][..n * img];
                    let ep = epilogue.map(|e| e.part(t * per_task * oimg, n * oimg));
                    d.images(xs, n, &packed, ep, y, buf)
                })
            })
        }
    }

    /// The forward pass `out = conv(x, w)` for the whole batch by im2col +
    /// gemm (`out` zeroed: gemm's edge tiles read it).
    fn forward(&self, x: &[f32], w: &[f32], out: &mut [f32]) {
        let (kk, p, img, oimg, chunk) = (
            self.kk(),
            self.p(),
            self.img(),
            self.out_img(),
            self.chunk(),
        );
        if oimg == 0 {
            return;
        }
        out.par_chunks_mut(chunk * oimg)
            .enumerate()
            .for_each(|(ci, y)| {
                let n = y.len() / oimg;
                let xs = &x[ci * chunk * img..][..n * img];
                let cols = n * p;
                let tmp_len = if n > 1 { self.cout * cols } else { 0 };
                with_scratch(kk * cols + tmp_len, |buf| {
                    let (colbuf, tmp) = buf.split_at_mut(kk * cols);
                    let col = self.columns(xs, n, colbuf);
                    if n == 1 {
                        matmul(self.cout, p, kk, y, false, w, kk, 1, col, p, 1);
                        return;
                    }
                    matmul(self.cout, cols, kk, tmp, false, w, kk, 1, col, cols, 1);
                    for i in 0..n {
                        for co in 0..self.cout {
                            y[(i * self.cout + co) * p..][..p]
                                .copy_from_slice(&tmp[co * cols + i * p..][..p]);
                        }
                    }
                });
            });
    }
}

impl Geom {
    /// The columnless kernel for this convolution's input gradient
    /// ([`StridedGrad`]: strides of 2 or more, the same bits as
    /// [`grad_input_col2im`](Self::grad_input_col2im)), where it applies,
    /// measured faster (at most [`STRIDED_DGRAD_MAX_COUT`] output channels)
    /// and [`Path`] allows it (unset only).
    fn strided_grad(&self) -> Option<StridedGrad> {
        if path() != Path::Auto || self.cout > STRIDED_DGRAD_MAX_COUT {
            return None;
        }
        StridedGrad::new(
            self.cin,
            self.h,
            self.w,
            self.cout,
            self.k,
            self.stride,
            self.pad,
            self.oh,
            self.ow,
        )
    }

    /// The input gradient `dx` of the whole batch from `dy` by
    /// [`StridedGrad`] (every element written, so not zeroed first).
    fn grad_input_strided(&self, sg: &StridedGrad, dy: &[f32], w: &[f32]) -> Vec<f32> {
        let (img, oimg) = (self.img(), self.out_img());
        let packed = sg.pack(w);
        // SAFETY: each chunk is one input image, and `StridedGrad::image`
        // writes every element of it.
        unsafe {
            super::par_filled(self.b * img, img, |i, dx| {
                with_scratch(sg.scratch_len(), |buf| {
                    sg.image(&dy[i * oimg..][..oimg], &packed, dx, buf)
                })
            })
        }
    }

    /// The input gradient `dx` of the whole batch from `dy` as
    /// `col2im(W^T (K, Cout) @ dy (Cout, P))`, chunk by chunk.
    fn grad_input_col2im(&self, dy: &[f32], w: &[f32]) -> Vec<f32> {
        let mut dx = vec![0f32; self.b * self.img()];
        let (kk, p, img, oimg, chunk) = (
            self.kk(),
            self.p(),
            self.img(),
            self.out_img(),
            self.chunk(),
        );
        if img == 0 {
            return dx;
        }
        dx.par_chunks_mut(chunk * img)
            .enumerate()
            .for_each(|(ci, dxs)| {
                let n = dxs.len() / img;
                let cols = n * p;
                let dys = &dy[ci * chunk * oimg..][..n * oimg];
                let gather_len = if n > 1 { self.cout * cols } else { 0 };
                with_scratch(kk * cols + gather_len, |buf| {
                    let (col, gbuf) = buf.split_at_mut(kk * cols);
                    let d = self.gather_out(dys, n, gbuf);
                    // W^T (K, Cout): element (i, j) is w[j * K + i].
                    matmul(kk, cols, self.cout, col, false, w, 1, kk, d, cols, 1);
                    for i in 0..n {
                        self.col2im(&col[i * p..], cols, &mut dxs[i * img..(i + 1) * img]);
                    }
                });
            });
        dx
    }
}

/// [`super::measure::strided_grad_input`].
pub(crate) fn measure_strided_grad_input(
    x: &Shape,
    w_shape: &Shape,
    stride: usize,
    pad: usize,
    dy: &[f32],
    w: &[f32],
    col2im: bool,
) -> Option<Vec<f32>> {
    let g = Geom::new(x, w_shape, stride, pad).ok()?;
    let sg = StridedGrad::new(g.cin, g.h, g.w, g.cout, g.k, g.stride, g.pad, g.oh, g.ow)?;
    if dy.len() != g.b * g.out_img() || w.len() != g.cout * g.kk() {
        return None;
    }
    Some(if col2im {
        g.grad_input_col2im(dy, w)
    } else {
        g.grad_input_strided(&sg, dy, w)
    })
}

/// `dst (c, r) = src (r, c)`, both row-major (`rows` x `cols` in).
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    #[cfg(target_arch = "x86_64")]
    let (r8, c8) = if super::simd_transpose() {
        let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
        // SAFETY: AVX is present (`simd_transpose`); the 8x8 blocks lie inside the first
        // `r8` rows and `c8` columns, inside both slices (assert above).
        unsafe { transpose_blocks_avx(src, rows, cols, r8, c8, dst) };
        (r8, c8)
    } else {
        (0, 0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (r8, c8) = (0, 0);
    // What the blocks did not cover: the last columns of the first `r8`
    // rows, then every column of the remaining rows.
    for r in 0..rows {
        let from = if r < r8 { c8 } else { 0 };
        for c in from..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// The 8x8 blocks of [`transpose`] in the first `r8` rows and `c8` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_blocks_avx(
    src: &[f32],
    rows: usize,
    cols: usize,
    r8: usize,
    c8: usize,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for r0 in (0..r8).step_by(8) {
        for c0 in (0..c8).step_by(8) {
            // SAFETY (all pointer arithmetic below): rows r0..r0+8 < r8 <=
            // rows and columns c0..c0+8 <= c8 <= cols, so every load and
            // store is inside src (rows x cols) and dst (cols x rows).
            unsafe {
                let at = |i: usize| s.add((r0 + i) * cols + c0);
                let (a0, a1, a2, a3) = (
                    _mm256_loadu_ps(at(0)),
                    _mm256_loadu_ps(at(1)),
                    _mm256_loadu_ps(at(2)),
                    _mm256_loadu_ps(at(3)),
                );
                let (a4, a5, a6, a7) = (
                    _mm256_loadu_ps(at(4)),
                    _mm256_loadu_ps(at(5)),
                    _mm256_loadu_ps(at(6)),
                    _mm256_loadu_ps(at(7)),
                );
                let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
                let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
                let (t4, t5) = (_mm256_unpacklo_ps(a4, a5), _mm256_unpackhi_ps(a4, a5));
                let (t6, t7) = (_mm256_unpacklo_ps(a6, a7), _mm256_unpackhi_ps(a6, a7));
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let out = |j: usize| d.add((c0 + j) * rows + r0);
                _mm256_storeu_ps(out(0), _mm256_permute2f128_ps::<0x20>(u0, u4));
                _mm256_storeu_ps(out(1), _mm256_permute2f128_ps::<0x20>(u1, u5));
                _mm256_storeu_ps(out(2), _mm256_permute2f128_ps::<0x20>(u2, u6));
                _mm256_storeu_ps(out(3), _mm256_permute2f128_ps::<0x20>(u3, u7));
                _mm256_storeu_ps(out(4), _mm256_permute2f128_ps::<0x31>(u0, u4));
                _mm256_storeu_ps(out(5), _mm256_permute2f128_ps::<0x31>(u1, u5));
                _mm256_storeu_ps(out(6), _mm256_permute2f128_ps::<0x31>(u2, u6));
                _mm256_storeu_ps(out(7), _mm256_permute2f128_ps::<0x31>(u3, u7));
            }
        }
    }
}

/// `dst (m, n) = lhs (m, k) @ rhs (k, n)` (plus `dst` when `accumulate`),
/// on the calling thread; strides are (row, column).
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(n == 0 || k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above keep every index gemm reads or writes inside
    // the slices; dst does not alias lhs or rhs (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// The f32 data of a contiguous CPU tensor, or an error naming `op` and `what`.
pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: {what} must be f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    f32_slice(s, l, "conv", what)
}

/// The convolution `(x, weight) -> y`; its backward uses the two ops below.
pub struct ConvOp {
    pub stride: usize,
    pub padding: usize,
}

impl ConvOp {
    /// `dx` of this convolution from `dy` (contiguous), for input shape
    /// `input`: the backward's own op (a sliced pass's input gradient).
    pub(crate) fn input_grad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input: &Shape,
    ) -> candle_core::Result<Tensor> {
        dy.apply_op2_no_bwd(
            w,
            &GradInput {
                stride: self.stride,
                padding: self.padding,
                input: input.clone(),
            },
        )
    }

    /// `dw` of this convolution at `x` from `dy` (contiguous), for kernel
    /// shape `kernel`: the backward's own op.
    pub(crate) fn weight_grad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        kernel: &Shape,
    ) -> candle_core::Result<Tensor> {
        x.apply_op2_no_bwd(
            dy,
            &GradWeight {
                stride: self.stride,
                padding: self.padding,
                kernel: kernel.clone(),
            },
        )
    }
}

/// The forward pass of the convolution ops: input `x` and weight `w` as
/// candle hands them over, each output put through the epilogue `epilogue`
/// makes from the geometry (after checking what it needs), if any.
fn conv_forward<'a>(
    stride: usize,
    padding: usize,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    epilogue: impl FnOnce(&Geom) -> candle_core::Result<Option<Epilogue<'a>>>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let g = Geom::new(l1.shape(), l2.shape(), stride, padding)?;
    let epilogue = epilogue(&g)?;
    let x = f32s(s1, l1, "input")?;
    let w = f32s(s2, l2, "weight")?;
    let out = g.forward_vec(x, w, epilogue);
    Ok((CpuStorage::F32(out), Shape::from((g.b, g.cout, g.oh, g.ow))))
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "samlab-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        conv_forward(self.stride, self.padding, (s1, l1), (s2, l2), |_| Ok(None))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The network's input (images) needs no gradient: skip the pass.
        let dx = if x.track_op() {
            Some(self.input_grad(&grad, w, x.shape())?)
        } else {
            None
        };
        let dw = self.weight_grad(x, &grad, w.shape())?;
        Ok((dx, Some(dw)))
    }
}

/// An evaluation-mode convolution followed by BatchNorm (and ReLU), the
/// normalisation applied as the convolution writes its output: the bits of
/// [`ConvOp`] then the batch-norm op in evaluation mode, one pass over the
/// activations fewer. Forward only (`apply_op2_no_bwd`): it serves
/// [`crate::layers::inference`], where no gradient is taken.
pub(crate) struct ConvNormOp {
    pub stride: usize,
    pub padding: usize,
    pub norm: Norm,
}

impl ConvNormOp {
    /// An error unless the norm has one value per output channel.
    fn check(&self, g: &Geom) -> candle_core::Result<()> {
        let n = &self.norm;
        if n.mean.len() != g.cout || n.scale.len() != g.cout || n.shift.len() != g.cout {
            candle_core::bail!(
                "conv + batch norm: {} output channels, {} normalised",
                g.cout,
                n.mean.len()
            );
        }
        Ok(())
    }
}

impl CustomOp2 for ConvNormOp {
    fn name(&self) -> &'static str {
        "samlab-conv2d-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        conv_forward(self.stride, self.padding, (s1, l1), (s2, l2), |g| {
            self.check(g)?;
            Ok(Some(Epilogue {
                norm: &self.norm,
                residual: None,
            }))
        })
    }
}

/// [`ConvNormOp`] at a residual block's end, with the shortcut as its
/// third input: `relu(norm(conv(x, w)) + short)`, the bits of the two ops
/// then `relu(a + b)` (`cpu::batchnorm::AddRelu`). Forward only.
pub(crate) struct ConvNormAddReluOp(pub ConvNormOp);

impl CustomOp3 for ConvNormAddReluOp {
    fn name(&self) -> &'static str {
        "samlab-conv2d-batch-norm-add-relu"
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
        let op = &self.0;
        conv_forward(op.stride, op.padding, (s1, l1), (s2, l2), |g| {
            op.check(g)?;
            let shape = Shape::from((g.b, g.cout, g.oh, g.ow));
            if l3.shape() != &shape || op.norm.relu {
                candle_core::bail!(
                    "conv + batch norm + add: shortcut {:?} for outputs {shape:?} (relu before the add: {})",
                    l3.shape(),
                    op.norm.relu
                );
            }
            Ok(Some(Epilogue {
                norm: &op.norm,
                residual: Some(f32s(s3, l3, "shortcut")?),
            }))
        })
    }
}

/// `(dy, weight) -> dx`.
struct GradInput {
    stride: usize,
    padding: usize,
    input: Shape,
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "samlab-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.input, l2.shape(), self.stride, self.padding)?;
        let dy = f32s(s1, l1, "output gradient")?;
        let w = f32s(s2, l2, "weight")?;
        g.check_out_grad(l1.shape())?;
        let dx = if let Some(t) = g.transposed() {
            // wt[ci][co][kh][kw] = w[co][ci][k-1-kh][k-1-kw]
            let (k, kk) = (g.k, g.k * g.k);
            let mut wt = vec![0f32; w.len()];
            for co in 0..g.cout {
                for ci in 0..g.cin {
                    for i in 0..kk {
                        let (kh, kw) = (i / k, i % k);
                        wt[(ci * g.cout + co) * kk + (k - 1 - kh) * k + (k - 1 - kw)] =
                            w[(co * g.cin + ci) * kk + i];
                    }
                }
            }
            t.forward_vec(dy, &wt, None)
        } else if let Some(sg) = g.strided_grad() {
            g.grad_input_strided(&sg, dy, w)
        } else {
            g.grad_input_col2im(dy, w)
        };
        Ok((CpuStorage::F32(dx), self.input.clone()))
    }
}

/// `(x, dy) -> dweight`.
struct GradWeight {
    stride: usize,
    padding: usize,
    kernel: Shape,
}

impl CustomOp2 for GradWeight {
    fn name(&self) -> &'static str {
        "samlab-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.shape(), &self.kernel, self.stride, self.padding)?;
        let x = f32s(s1, l1, "input")?;
        let dy = f32s(s2, l2, "output gradient")?;
        g.check_out_grad(l2.shape())?;
        let (kk, p, img, oimg, chunk) = (g.kk(), g.p(), g.img(), g.out_img(), g.chunk());
        if let Some(d) = g.direct().filter(|d| d.has_weight_grad()) {
            // GROUP images per f32 partial, the partials summed in f64.
            let groups: Vec<Vec<f32>> = (0..g.b.div_ceil(GROUP))
                .into_par_iter()
                .map(|gi| {
                    let mut part = vec![0f32; g.cout * kk];
                    let (i0, n) = (gi * GROUP, GROUP.min(g.b - gi * GROUP));
                    let (xs, dys) = (&x[i0 * img..][..n * img], &dy[i0 * oimg..][..n * oimg]);
                    with_scratch(d.weight_grad_scratch_len(), |buf| {
                        d.weight_grad_group(xs, dys, n, &mut part, buf)
                    });
                    part
                })
                .collect();
            return Ok((
                CpuStorage::F32(sum_in_f64(&groups, g.cout * kk)),
                self.kernel.clone(),
            ));
        }
        // Images per f32 partial: whole chunks, at least GROUP images.
        let per_part = chunk * GROUP.div_ceil(chunk);
        let groups: Vec<Vec<f32>> = (0..g.b.div_ceil(per_part))
            .into_par_iter()
            .map(|gi| {
                let mut part = vec![0f32; g.cout * kk];
                let end = ((gi + 1) * per_part).min(g.b);
                for n0 in (gi * per_part..end).step_by(chunk) {
                    let n = chunk.min(end - n0);
                    let cols = n * p;
                    let gather_len = if n > 1 { g.cout * cols } else { 0 };
                    // Measured with the layer_speed example, this rule forced
                    // each way (docs/cpu-profile.md has the figures): with
                    // many columns the weight gradient is faster from a
                    // transposed copy of the columns (gemm then reads both
                    // operands along the reduction); with 256 columns the
                    // two are within the run-to-run noise. Layers with up
                    // to 64 output channels transpose too: no faster, but
                    // results/quick was computed so, and the choice changes
                    // rounding.
                    let transposed = cols > 2 * MIN_COLS || g.cout <= 64;
                    let colt_len = if transposed { kk * cols } else { 0 };
                    with_scratch(kk * cols + colt_len + gather_len, |buf| {
                        let (colbuf, rest) = buf.split_at_mut(kk * cols);
                        let (colt, gbuf) = rest.split_at_mut(colt_len);
                        let col = g.columns(&x[n0 * img..][..n * img], n, colbuf);
                        let d = g.gather_out(&dy[n0 * oimg..][..n * oimg], n, gbuf);
                        let acc = n0 > gi * per_part;
                        if transposed {
                            // col^T (cols, K), row-major
                            transpose(col, kk, cols, colt);
                            matmul(g.cout, kk, cols, &mut part, acc, d, cols, 1, colt, kk, 1);
                        } else {
                            // col^T (cols, K): element (i, j) is col[j * cols + i].
                            matmul(g.cout, kk, cols, &mut part, acc, d, cols, 1, col, 1, cols);
                        }
                    });
                }
                part
            })
            .collect();
        Ok((
            CpuStorage::F32(sum_in_f64(&groups, g.cout * kk)),
            self.kernel.clone(),
        ))
    }
}

/// The sum of the f32 partials of `len` floats each, in f64, in order.
fn sum_in_f64(parts: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut sum = vec![0f64; len];
    for part in parts {
        for (s, v) in sum.iter_mut().zip(part) {
            *s += *v as f64;
        }
    }
    sum.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn f64s(t: &Tensor) -> Vec<f64> {
        crate::fixtures::f64s(t).unwrap()
    }

    /// Test data of `shape`: f32 values uniform in [-1, 1) from a fixed hash
    /// of (index, `stream`), so a failure reproduces.
    fn noise(shape: impl Into<candle_core::Shape>, stream: u32) -> Tensor {
        let shape = shape.into();
        let v: Vec<f32> = (0..shape.elem_count())
            .map(|k| crate::fixtures::hashed(k, stream) as f32)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Rounding-error model of an f32 sum of products (docs/numerics.md):
    /// each of the at most `n` additions and each product rounds by a
    /// relative `d` with `|d| <= u = 2^-24`, independently and without
    /// bias (Higham and Mary's probabilistic model, 2019), so the error of
    /// one output has a standard deviation of at most
    /// `u sqrt(sum_j s_j^2 + sum_i p_i^2)` over the partial sums `s_j` and
    /// the products `p_i`. With products of random sign (the inputs are
    /// Gaussian) every partial sum has `E s_j^2 <= sum_i p_i^2`, in any
    /// order or tree (gemm's blocking, the direct kernel's channel blocks,
    /// the f32 groups of the weight gradient): the deviation is at most
    /// `u (sqrt(n) + 1) |p|_2`. `LAMBDA` such deviations bound each element
    /// (a Gaussian exceeds 6 with probability 2e-9). The reference is the
    /// exact (f64) result of the same f32 inputs, so input rounding is no
    /// part of the error.
    const LAMBDA: f64 = 6.0;

    /// The worst `|got - want| / bound` over the elements, where each
    /// element's bound is `LAMBDA u (sqrt(n) + 1) sqrt(p2)` (`p2`: the sum
    /// of its squared products); fails above 1.
    fn within_rounding(what: &str, got: &Tensor, want: &Tensor, p2: &Tensor, n: usize) -> f64 {
        let u = f32::EPSILON as f64 / 2.0;
        let c = LAMBDA * u * ((n as f64).sqrt() + 1.0);
        let (got, want, p2) = (f64s(got), f64s(want), f64s(p2));
        assert_eq!((got.len(), want.len()), (p2.len(), p2.len()), "{what}");
        let mut worst = 0f64;
        for (i, ((g, w), q)) in got.iter().zip(&want).zip(&p2).enumerate() {
            let bound = c * q.sqrt();
            assert!(
                (g - w).abs() <= bound,
                "{what}[{i}]: {g} vs exact {w}, beyond the rounding bound {bound:.3e}"
            );
            if bound > 0.0 {
                worst = worst.max((g - w).abs() / bound);
            }
        }
        worst
    }

    /// Forward and both gradients against candle's convolution in f64 of
    /// the same f32 inputs, element by element within the rounding model
    /// of [`LAMBDA`]: an output that drops or repeats one of its `n`
    /// products is off by about `|p|_2 / sqrt(n)`, `1 / (LAMBDA u n)` bounds
    /// (over 500 at the largest `n` here).
    #[test]
    fn matches_candle_in_f64() {
        // forward, input gradient, weight gradient
        let mut worst = [0f64; 3];
        for (b, cin, h, wd, cout, k, stride, pad) in [
            (3, 4, 9, 10, 5, 3, 1, 1),
            (2, 3, 8, 10, 6, 3, 2, 1),
            (GROUP + 3, 2, 6, 8, 3, 1, 2, 0),
            (2, 5, 7, 6, 4, 3, 1, 0),
            // ResNet-18's layer4 shapes: K = 2304 and 4608, P = 16
            (2, 256, 8, 8, 64, 3, 2, 1),
            (2, 512, 4, 4, 32, 3, 1, 1),
            // several images per gemm (P = 16: chunks of 16, 16 and 5;
            // P = 9: one chunk of 21), pointwise with and without chunks
            (37, 3, 4, 4, 5, 3, 1, 1),
            (21, 4, 6, 6, 3, 3, 2, 1),
            (3, 4, 16, 16, 5, 1, 1, 0),
            (5, 4, 4, 4, 3, 1, 1, 0),
            // P = 576: the weight gradient from transposed columns; and
            // from the columns as they are (192 columns, 80 channels out)
            (2, 3, 24, 24, 4, 3, 1, 1),
            (3, 8, 8, 8, 80, 3, 1, 1),
            // stride 1 without "same" padding: the transposed convolution
            // pads by 2 and by 0
            (2, 3, 6, 5, 4, 3, 1, 2),
            // rows of 16 or more: the direct kernel (on AVX2 + FMA) for the
            // forward pass, the input gradient and (3x3) the weight
            // gradient; output channels not a multiple of its tile, more
            // than one block of input channels, padding 0, 1 and 2, 5x5,
            // and more images than one f32 partial of the weight gradient
            (3, 4, 16, 16, 5, 3, 1, 1),
            (GROUP + 2, 3, 17, 20, 6, 3, 1, 0),
            (2, 37, 16, 19, 9, 3, 1, 1),
            (2, 6, 18, 16, 4, 5, 1, 2),
        ] {
            // f32 inputs, exact in f64
            let x = noise((b, cin, h, wd), 1);
            let w = noise((cout, cin, k, k), 2);
            let (x, w) = (
                x.to_dtype(DType::F64).unwrap(),
                w.to_dtype(DType::F64).unwrap(),
            );
            let (x64, w64) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
            let y64 = x64
                .as_tensor()
                .conv2d(w64.as_tensor(), pad, stride, 1, 1)
                .unwrap();
            let r = noise(y64.shape(), 3).to_dtype(DType::F64).unwrap();
            let g64 = (&y64 * &r).unwrap().sum_all().unwrap().backward().unwrap();
            // Each output's sum of squared products: the forward pass's
            // `conv(x^2, w^2)`; the gradients' from the same backward with
            // `r^2` and `w^2` (input) or `x^2` (weight).
            let sq = |t: &Tensor| t.sqr().unwrap();
            let fwd_p2 = sq(&x).conv2d(&sq(&w), pad, stride, 1, 1).unwrap();
            // The gradient of sum(y * r^2) with respect to `of`.
            let grad_r2 = |y: Tensor, of: &Tensor| {
                let g = (&y * sq(&r))
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                g.get(of).unwrap().clone()
            };
            let dx_p2 = grad_r2(
                x64.as_tensor().conv2d(&sq(&w), pad, stride, 1, 1).unwrap(),
                x64.as_tensor(),
            );
            let dw_p2 = grad_r2(
                sq(&x).conv2d(w64.as_tensor(), pad, stride, 1, 1).unwrap(),
                w64.as_tensor(),
            );
            let x32 = Var::from_tensor(&x.to_dtype(DType::F32).unwrap()).unwrap();
            let w32 = Var::from_tensor(&w.to_dtype(DType::F32).unwrap()).unwrap();
            let y32 = x32
                .as_tensor()
                .apply_op2(
                    w32.as_tensor(),
                    ConvOp {
                        stride,
                        padding: pad,
                    },
                )
                .unwrap();
            assert_eq!(y32.dims(), y64.dims());
            let r32 = r.to_dtype(DType::F32).unwrap();
            let g32 = (&y32 * &r32)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let case = format!("b{b} cin{cin} h{h} cout{cout} k{k} s{stride} p{pad}");
            let geom = Geom::new(x.shape(), w.shape(), stride, pad).unwrap();
            // The tiling this shape takes where the direct kernel runs, and
            // whether it runs on this CPU under this process's path.
            let natural = if stride == 1 && geom.ow >= 16 {
                Tiling::Pixels
            } else {
                Tiling::Channels
            };
            let runs = direct::available()
                && match path() {
                    Path::Auto | Path::Col2im => true,
                    Path::Pixels => natural == Tiling::Pixels,
                    Path::Im2col | Path::Portable => false,
                };
            let want = (k > 1 && runs).then_some(natural);
            assert_eq!(geom.direct().map(|d| d.tiling), want, "{case}");
            // Products per output: the forward pass's taps, each input
            // pixel's (output channel, tap) pairs, each weight's (image,
            // output pixel) pairs.
            let (n_fwd, n_dx, n_dw) = (cin * k * k, cout * k * k, b * geom.p());
            let passes = [
                ("forward", &y32, &y64, &fwd_p2, n_fwd),
                (
                    "input gradient",
                    g32.get(x32.as_tensor()).unwrap(),
                    g64.get(x64.as_tensor()).unwrap(),
                    &dx_p2,
                    n_dx,
                ),
                (
                    "weight gradient",
                    g32.get(w32.as_tensor()).unwrap(),
                    g64.get(w64.as_tensor()).unwrap(),
                    &dw_p2,
                    n_dw,
                ),
            ];
            for (i, (what, got, want, p2, n)) in passes.into_iter().enumerate() {
                let at = within_rounding(&format!("{case}: {what}"), got, want, p2, n);
                worst[i] = worst[i].max(at);
            }
        }
        eprintln!("worst error / rounding bound (forward, input, weight gradient): {worst:.3?}");
    }

    /// The same bits as gemm + col2im (the path it replaces), on every
    /// strided convolution of the networks the step benchmark runs
    /// (ResNet-8/20 and ResNet-18 downsampling 3x3 and 1x1 shortcuts,
    /// WRN-16-2's strided second convolutions and shortcuts) and on odd
    /// sizes, paddings and kernels. Values from a fixed hash, weights of
    /// both signs and zeros in `dy` (ReLU masks), so signed zeros and
    /// ordering both show.
    #[test]
    fn strided_input_gradient_has_the_bits_of_col2im() {
        if !direct::available() {
            eprintln!("no AVX2 + FMA here: the kernel never runs, nothing to compare");
            return;
        }
        for (b, cin, h, wd, cout, k, stride, pad) in [
            // ResNet-8/20: layer 2 and 3 downsampling, and their shortcuts
            (3, 16, 32, 32, 32, 3, 2, 1),
            (5, 32, 16, 16, 64, 3, 2, 1),
            (3, 16, 32, 32, 32, 1, 2, 0),
            (5, 32, 16, 16, 64, 1, 2, 0),
            // WRN-16-2 (second convolution strides, 1x1 shortcut)
            (2, 64, 32, 32, 64, 3, 2, 1),
            (2, 128, 16, 16, 128, 3, 2, 1),
            (2, 32, 32, 32, 64, 1, 2, 0),
            // ResNet-18's downsampling, 512 output channels the most
            (2, 64, 32, 32, 128, 3, 2, 1),
            (2, 256, 8, 8, 512, 3, 2, 1),
            (2, 256, 8, 8, 512, 1, 2, 0),
            // odd sizes, channels not a multiple of the tile, padding 0
            // and 2, stride 3, 5x5, the fewest channels it takes
            (2, 5, 9, 11, 7, 3, 2, 1),
            (2, 3, 10, 7, 6, 3, 2, 0),
            (2, 2, 13, 12, 5, 5, 2, 2),
            (2, 6, 11, 10, 4, 3, 3, 1),
            (3, 1, 8, 8, 3, 2, 2, 0),
            (1, 3, 5, 5, 3, 3, 2, 1),
        ] {
            let geom = Geom::new(
                &Shape::from((b, cin, h, wd)),
                &Shape::from((cout, cin, k, k)),
                stride,
                pad,
            )
            .unwrap();
            let (oh, ow) = (geom.oh, geom.ow);
            let sg = StridedGrad::new(cin, h, wd, cout, k, stride, pad, oh, ow)
                .expect("the kernel applies");
            let w: Vec<f32> = (0..cout * cin * k * k)
                .map(|i| crate::fixtures::hashed(i, 11) as f32)
                .collect();
            let dy: Vec<f32> = (0..b * cout * oh * ow)
                .map(|i| {
                    let v = crate::fixtures::hashed(i, 12) as f32;
                    // a quarter zero, as behind a ReLU
                    if v < -0.5 { 0.0 } else { v }
                })
                .collect();
            let old = geom.grad_input_col2im(&dy, &w);
            let new = geom.grad_input_strided(&sg, &dy, &w);
            assert_eq!(old.len(), new.len());
            let case = format!("b{b} cin{cin} {h}x{wd} cout{cout} k{k} s{stride} p{pad}");
            for (i, (o, n)) in old.iter().zip(&new).enumerate() {
                assert_eq!(
                    o.to_bits(),
                    n.to_bits(),
                    "{case}: dx[{i}] {o} (col2im) vs {n}"
                );
            }
        }
    }

    /// im2col and col2im against the element-by-element definition, exactly.
    #[test]
    fn im2col_and_col2im_follow_the_definition() {
        for (cin, h, w, k, stride, pad) in [
            (2, 5, 7, 3, 1, 1),
            (1, 6, 6, 3, 2, 1),
            (3, 4, 5, 1, 2, 0),
            (1, 3, 3, 3, 1, 2),
            (2, 9, 8, 3, 2, 0),
            (2, 4, 4, 3, 1, 0),
            (1, 2, 2, 3, 1, 1),
        ] {
            let xs = Shape::from((1, cin, h, w));
            let g = Geom::new(&xs, &Shape::from((1, cin, k, k)), stride, pad).unwrap();
            let x: Vec<f32> = (0..cin * h * w).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut col = vec![f32::NAN; g.kk() * g.p()];
            g.im2col(&x, &mut col, g.p());
            let mut back = vec![0f32; x.len()];
            g.col2im(&col, g.p(), &mut back);
            // Written with a row pitch of three images at image 1's place,
            // the same rows land there and nothing else is touched.
            let ld = 3 * g.p();
            let mut wide = vec![f32::NAN; g.kk() * ld];
            g.im2col(&x, &mut wide[g.p()..], ld);
            for r in 0..g.kk() {
                let row = &wide[r * ld..(r + 1) * ld];
                assert!(
                    row[..g.p()]
                        .iter()
                        .chain(&row[2 * g.p()..])
                        .all(|v| v.is_nan())
                );
                let want = &col[r * g.p()..(r + 1) * g.p()];
                assert!(
                    row[g.p()..2 * g.p()]
                        .iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
            }
            let mut back_wide = vec![0f32; x.len()];
            g.col2im(&wide[g.p()..], ld, &mut back_wide);
            assert_eq!(back_wide, back);
            let mut want_back = vec![0f32; x.len()];
            for c in 0..cin {
                for kh in 0..k {
                    for kw in 0..k {
                        for oy in 0..g.oh {
                            for ox in 0..g.ow {
                                let iy = (oy * stride + kh) as isize - pad as isize;
                                let ix = (ox * stride + kw) as isize - pad as isize;
                                let inside =
                                    iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize;
                                let at = c * h * w + (iy.max(0) as usize) * w + ix.max(0) as usize;
                                let v = if inside { x[at] } else { 0.0 };
                                let got = col[((c * k + kh) * k + kw) * g.p() + oy * g.ow + ox];
                                assert_eq!(
                                    got.to_bits(),
                                    v.to_bits(),
                                    "{cin} {h}x{w} k{k} s{stride} p{pad}"
                                );
                                if inside {
                                    want_back[at] += v;
                                }
                            }
                        }
                    }
                }
            }
            assert_eq!(back, want_back);
        }
    }

    /// The transpose (8x8 AVX blocks and the scalar edges) is exact.
    #[test]
    fn transpose_is_exact() {
        for (rows, cols) in [
            (1, 1),
            (3, 5),
            (8, 8),
            (13, 37),
            (16, 24),
            (27, 1024),
            (9, 17),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.25 - 7.0).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            transpose(&src, rows, cols, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at {r},{c}"
                    );
                }
            }
        }
    }

    /// As accurate as candle's convolution: against the exact (f64) result
    /// of the same f32 inputs, the mean absolute error is within 20% of
    /// candle's on ResNet shapes (both sum K products in f32; the order
    /// differs).
    #[test]
    fn as_accurate_as_candle() {
        for (b, cin, h, cout, stride) in
            [(4, 16, 32, 16, 1), (4, 32, 16, 64, 2), (4, 128, 8, 128, 1)]
        {
            let x = noise((b, cin, h, h), 4).relu().unwrap();
            let w = (noise((cout, cin, 3, 3), 5) * 0.05).unwrap();
            let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let exact = f64_of(&x).conv2d(&f64_of(&w), 1, stride, 1, 1).unwrap();
            let mean_err = |t: &Tensor| {
                (f64_of(t) - &exact)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let mine = mean_err(&x.apply_op2(&w, ConvOp { stride, padding: 1 }).unwrap());
            let candle = mean_err(&x.conv2d(&w, 1, stride, 1, 1).unwrap());
            eprintln!("cin {cin}: mean error {:.3} of candle's", mine / candle);
            assert!(
                mine <= 1.2 * candle,
                "cin {cin}: mean error {mine:.3e} vs candle's {candle:.3e}"
            );
        }
    }
}
