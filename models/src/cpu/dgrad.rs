//! The input gradient of a strided convolution without columns: the same
//! bits as gemm + col2im, in one pass.
//!
//! gemm + col2im computes `col = W^T (K, Cout) @ dy (Cout, P)` and adds
//! each column entry onto the input pixel its tap reads: for input pixel
//! `(c, iy, ix)`,
//!
//! `dx = (((0 + t(kh0, kw0)) + t(kh1, kw1)) + ...)`, `t(kh, kw) = sum_co w[co][c][kh][kw] * dy[co][oy][ox]`
//!
//! over the taps `(kh, kw)` in row-major order whose output pixel
//! `oy = (iy + pad - kh) / s`, `ox = (ix + pad - kw) / s` exists, each `t`
//! one chain of fused multiply-adds over `co` in order from zero. That is
//! what gemm 0.19 computes for each element when its depth (`Cout`) is one
//! block (`Cout <= 512`), not 1 or 2 (those take its `gevv`), and neither
//! result dimension is 1 (those take its `gemv`) — read from gemm-common
//! 0.19's `gemm_basic_generic`, `kernel_params` and `microkernel!`; the
//! unit test `dgrad::tests::same_bits_as_col2im` checks it on every shape
//! the networks have.
//!
//! Here the input pixels are split into the `s * s` classes `(iy % s, ix %
//! s)`: within a class every pixel has the same taps, and its neighbours
//! along a row read neighbouring outputs. So each (class, tap) is a run of
//! [`MR`] channels x [`NR`] pixels of the class, a chain over `co` as in the
//! direct kernel's tile, reading a zero-bordered copy of `dy` (a tap whose
//! output pixel does not exist adds `+0`, which changes no sum that
//! started from `+0`, for finite weights); the class sums are added tap by
//! tap in the same order, then written to their pixels of `dx`. No column
//! matrix is written and none read back.

use std::mem::MaybeUninit;

use super::direct::{self, MR, NR};

/// One class `(a, b)` of input pixels `(s j + a, s i + b)`.
#[derive(Clone, Debug)]
struct Class {
    a: usize,
    b: usize,
    /// Pixels per column and per row of the class.
    nj: usize,
    ni: usize,
    /// `(kh * k + kw, where tap (kh, kw) of pixel (0, 0) reads in a
    /// bordered plane)`, in row-major tap order.
    taps: Vec<(usize, usize)>,
}

/// A strided convolution's input gradient, per image.
#[derive(Clone, Debug)]
pub(crate) struct StridedGrad {
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    s: usize,
    oh: usize,
    ow: usize,
    /// The bordered copy of one output plane: `rows x pitch`, output pixel
    /// `(oy, ox)` at `(oy + top) * pitch + ox + left`, zero elsewhere.
    pitch: usize,
    rows: usize,
    top: usize,
    left: usize,
    classes: Vec<Class>,
    /// Floats of a class's sums per channel (its pixels at `pitch`,
    /// rounded up to whole tiles).
    qc: usize,
    /// Floats of the bordered copy, with the slack the last tiles read.
    dyp_len: usize,
}

impl StridedGrad {
    /// The kernel for this convolution, where it applies and gives the bits
    /// of gemm + col2im (module docs): a CPU with AVX2 and FMA, stride 2 or
    /// more, `3 <= cout <= 512`, `cin * k * k >= 2` and at least two output
    /// pixels.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: usize,
        s: usize,
        pad: usize,
        oh: usize,
        ow: usize,
    ) -> Option<StridedGrad> {
        if !(direct::available()
            && s >= 2
            && (3..=512).contains(&cout)
            && cin * k * k >= 2
            && oh * ow >= 2)
        {
            return None;
        }
        // Where tap `t` of class pixel 0 of class `r` reads, in output
        // pixels: `(r + pad - t) / s`, for the taps with `s | r + pad - t`.
        let offsets = |r: usize| -> Vec<(usize, isize)> {
            (0..k)
                .filter_map(|t| {
                    let d = (r + pad) as isize - t as isize;
                    (d.rem_euclid(s as isize) == 0).then_some((t, d / s as isize))
                })
                .collect()
        };
        let count = |size: usize, r: usize| (size - r).div_ceil(s);
        let (mut top, mut bottom, mut left, mut right) = (0isize, 0isize, 0isize, 0isize);
        for a in 0..s.min(h) {
            for (_, d) in offsets(a) {
                top = top.max(-d);
                bottom = bottom.max(count(h, a) as isize - 1 + d - (oh as isize - 1));
            }
        }
        for b in 0..s.min(w) {
            for (_, d) in offsets(b) {
                left = left.max(-d);
                right = right.max(count(w, b) as isize - 1 + d - (ow as isize - 1));
            }
        }
        let (top, left) = (top as usize, left as usize);
        let pitch = left + ow + right as usize;
        let rows = top + oh + bottom as usize;
        let mut classes = Vec::new();
        let mut qc = 0;
        for a in 0..s.min(h) {
            for b in 0..s.min(w) {
                let (nj, ni) = (count(h, a), count(w, b));
                let mut taps = Vec::new();
                for (kh, dh) in offsets(a) {
                    for (kw, dw) in offsets(b) {
                        let at =
                            (dh + top as isize) as usize * pitch + (dw + left as isize) as usize;
                        taps.push((kh * k + kw, at));
                    }
                }
                qc = qc.max((nj * pitch).div_ceil(NR) * NR);
                classes.push(Class { a, b, nj, ni, taps });
            }
        }
        let plane = rows * pitch;
        let read_end = classes
            .iter()
            .flat_map(|c| {
                let q = (c.nj * pitch).div_ceil(NR) * NR;
                c.taps.iter().map(move |&(_, at)| at + q)
            })
            .max()
            .unwrap_or(0);
        let dyp_len = (cout * plane).max((cout - 1) * plane + read_end);
        Some(StridedGrad {
            cin,
            h,
            w,
            cout,
            k,
            s,
            oh,
            ow,
            pitch,
            rows,
            top,
            left,
            classes,
            qc,
            dyp_len,
        })
    }

    fn plane(&self) -> usize {
        self.rows * self.pitch
    }

    fn cin_tiles(&self) -> usize {
        self.cin.div_ceil(MR)
    }

    /// The weights `(cout, cin, k, k)` as the tiles read them:
    /// `[tap][ci / MR][co][ci % MR]`, zero for channels past `cin`.
    pub(crate) fn pack(&self, w: &[f32]) -> Vec<f32> {
        let (kk, cin, cout, ct) = (self.k * self.k, self.cin, self.cout, self.cin_tiles());
        assert!(w.len() >= cout * cin * kk);
        let mut out = vec![0f32; kk * ct * cout * MR];
        for co in 0..cout {
            for ci in 0..cin {
                for t in 0..kk {
                    out[((t * ct + ci / MR) * cout + co) * MR + ci % MR] =
                        w[(co * cin + ci) * kk + t];
                }
            }
        }
        out
    }

    /// Scratch floats [`image`](Self::image) needs: the bordered copy and
    /// one tile row of class sums.
    pub(crate) fn scratch_len(&self) -> usize {
        self.dyp_len + MR * self.qc
    }

    /// `dx (cin, h, w)` of one image from its `dy (cout, oh, ow)`; every
    /// element of `dx[..cin * h * w]` is written.
    pub(crate) fn image(
        &self,
        dy: &[f32],
        packed: &[f32],
        dx: &mut [MaybeUninit<f32>],
        scratch: &mut [f32],
    ) {
        assert!(
            direct::available(),
            "the strided input gradient needs AVX2 and FMA"
        );
        let (cout, pitch, plane, qc) = (self.cout, self.pitch, self.plane(), self.qc);
        let (oh, ow, h, w, s) = (self.oh, self.ow, self.h, self.w, self.s);
        let ct = self.cin_tiles();
        assert!(dy.len() >= cout * oh * ow && dx.len() >= self.cin * h * w);
        assert!(packed.len() >= self.k * self.k * ct * cout * MR);
        let (dyp, sums) = scratch[..self.scratch_len()].split_at_mut(self.dyp_len);
        dyp.fill(0.0);
        for co in 0..cout {
            for oy in 0..oh {
                let at = co * plane + (oy + self.top) * pitch + self.left;
                dyp[at..at + ow].copy_from_slice(&dy[(co * oh + oy) * ow..][..ow]);
            }
        }
        // Classes without a tap (a 1x1 kernel's pixels between its
        // strides) are zero: the whole image is zeroed first then.
        if self.classes.iter().any(|c| c.taps.is_empty()) {
            dx[..self.cin * h * w].fill(MaybeUninit::new(0.0));
        }
        for t in 0..ct {
            let rows = MR.min(self.cin - t * MR);
            for cl in self.classes.iter().filter(|c| !c.taps.is_empty()) {
                let q = (cl.nj * pitch).div_ceil(NR) * NR;
                sums.fill(0.0);
                for &(tap, at) in &cl.taps {
                    let wt = &packed[(tap * ct + t) * cout * MR..][..cout * MR];
                    for q0 in (0..q).step_by(NR) {
                        // SAFETY: `available()` held above; the tile reads
                        // 24 floats at at + q0 + co * plane for every co <
                        // cout, which ends at or before (cout - 1) * plane +
                        // read_end <= dyp_len (`new`), cout * MR floats of
                        // wt, and reads and adds to MR rows of NR floats at
                        // q0 of `sums` (pitch qc >= q).
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            direct::tile_avx2(
                                dyp.as_ptr().add(at + q0),
                                plane,
                                pitch,
                                1,
                                cout,
                                wt.as_ptr(),
                                sums.as_mut_ptr().add(q0),
                                qc,
                                true,
                            )
                        };
                    }
                }
                for r in 0..rows {
                    let c = t * MR + r;
                    for j in 0..cl.nj {
                        let src = &sums[r * qc + j * pitch..][..cl.ni];
                        let row = &mut dx[(c * h + s * j + cl.a) * w..][..w];
                        for (i, &v) in src.iter().enumerate() {
                            row[s * i + cl.b].write(v);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where it does not give gemm's bits it does not apply.
    #[test]
    fn applies_only_where_the_bits_match() {
        let ok = direct::available();
        let new = |cout, k, s, oh, ow| StridedGrad::new(4, 8, 8, cout, k, s, 1, oh, ow).is_some();
        assert_eq!(new(8, 3, 2, 4, 4), ok);
        assert!(!new(2, 3, 2, 4, 4), "gemm's gevv for a depth of 2");
        assert!(!new(513, 3, 2, 4, 4), "gemm's depth blocks above 512");
        assert!(
            !new(8, 3, 1, 8, 8),
            "stride 1 is the transposed forward pass"
        );
        assert!(!new(8, 3, 2, 1, 1), "gemm's gemv for one output pixel");
    }
}
