//! Direct convolution on a zero-padded copy of each image, with AVX2 + FMA
//! microkernels: no column matrix.
//!
//! Why: im2col copies every input element `k * k` times into columns that
//! gemm then packs again; with the 16-64 channels of the CIFAR ResNets that
//! copying was about a quarter of a step (docs/cpu-profile.md). Here the
//! image is padded once (row pitch `wp`, [`Direct::wp`]), and output pixel
//! `(oy, ox)` of a plane is
//!
//! `out[co][oy][ox] = sum_{ci, kh, kw} w[co][ci][kh][kw] * xp[ci][(oy s + kh) * wp + ox s + kw]`
//!
//! Two tilings ([`Tiling`]). Along the pixels (stride 1, wide rows): with
//! `q = oy * wp + ox`, a run of consecutive outputs reads a run of
//! consecutive inputs for each tap; the `ow..wp` columns of each row are
//! computed too (they read across the row's end) and dropped, `(k - 1 -
//! pad) / wp` of the work (a row carries only its left padding, the next
//! row's serving as its right: [`Direct::wp`]). Along the output channels (small maps, strides): each
//! pixel's input is broadcast against a vector of channels, nothing
//! dropped. Both sum the input channels in blocks of [`CB`] in registers and
//! add the blocks in order, so each output is summed in a fixed order:
//! results depend on the shapes only, never on threads. The weight
//! gradients ([`Direct::weight_grad_group`]) follow the same two tilings.

use std::mem::MaybeUninit;

use super::norm::Epilogue;

/// Output channels per microkernel tile.
pub(crate) const MR: usize = 4;
/// Output pixels per microkernel tile (three AVX vectors).
pub(crate) const NR: usize = 24;

/// Whether this process runs the microkernel: a CPU with AVX2 and FMA,
/// off the portable [`Path`](super::Path) (`SAMLAB_CPU_CONV=portable`).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::path() != super::Path::Portable
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One convolution's shapes (per image) and the tiling chosen for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Direct {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub pad: usize,
    /// 1 for [`Tiling::Pixels`]; any for [`Tiling::Channels`].
    pub stride: usize,
    pub tiling: Tiling,
    /// The padded rows' layout; [`Pitch::Narrow`] for the forward pass (the
    /// weight gradient takes [`Pitch::Wide`] itself).
    pub pitch: Pitch,
}

/// How the rows of a padded plane are laid out ([`Direct::wp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pitch {
    /// Left padding only, where it suffices (stride 1, `pad < k`): fewer
    /// dropped columns along the pixels. Each output's sum is the same
    /// whatever the pitch, so the forward pass takes it.
    Narrow,
    /// Both sides padded, `w + 2 pad`. The pixel-tiled weight gradient
    /// sums each weight's products in 8 lanes by position in the padded
    /// plane, so its bits depend on the pitch: it keeps this one, the
    /// layout the results in `results/` were computed with.
    Wide,
}

/// How the microkernel tiles the outputs of a plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tiling {
    /// [`MR`] channels x [`NR`] consecutive outputs of the padded plane
    /// (vectors along the pixels; the `k - 1` dropped columns per row are
    /// computed too): for wide rows.
    Pixels,
    /// [`CR`] channels x [`PR`] valid pixels (vectors along the output
    /// channels, each pixel's input broadcast): nothing dropped, for the
    /// small maps where Pixels would waste a third of its work.
    Channels,
}

/// Output channels per [`Tiling::Channels`] tile (two AVX vectors).
pub(crate) const CR: usize = 16;
/// Pixels per [`Tiling::Channels`] tile.
pub(crate) const PR: usize = 6;
/// Pixels a [`Tiling::Channels`] forward task covers at least
/// ([`Direct::images_per_task`]): each block of packed weights is read
/// once per task, and with one image of ResNet-18's 4x4 layer a task read
/// 9 MiB of weights for 16 pixels (docs/cpu-profile.md, seventh session).
const CHANNELS_MIN_PIXELS: usize = 96;
/// The fewest tasks a batch's forward pass splits into along the channels
/// where it has that many images ([`Direct::images_per_task`]).
const MIN_TASKS: usize = 16;
/// The most (tap, channel) sums the channel-tiled weight gradient keeps
/// (256 KiB of f32, half this CPU's L2).
const CHANNELS_WGRAD_MAX_SUMS: usize = 1 << 16;

impl Direct {
    fn hp(&self) -> usize {
        self.h + 2 * self.pad
    }
    /// The row pitch of a padded plane. [`Pitch::Narrow`] at stride 1 with `pad < k`: a row
    /// is its `pad` zeros on the left and its `w` values: a window's right
    /// overhang (`pad` columns) reads the next row's left zeros (the last
    /// row's, the next plane's top rows or the slack), so only `k - 1 -
    /// pad` columns per row are computed and dropped along the pixels
    /// instead of `k - 1`. Otherwise both sides are padded.
    fn wp(&self) -> usize {
        if self.pitch == Pitch::Narrow && self.stride == 1 && self.pad < self.k {
            self.w + self.pad
        } else {
            self.w + 2 * self.pad
        }
    }
    pub(crate) fn oh(&self) -> usize {
        (self.hp() - self.k) / self.stride + 1
    }
    pub(crate) fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Where output pixel `i` (row-major) reads its window's first input
    /// in a padded plane.
    fn pixel_start(&self, i: usize) -> usize {
        let ow = self.ow();
        (i / ow) * self.stride * self.wp() + (i % ow) * self.stride
    }
    fn plane(&self) -> usize {
        self.hp() * self.wp()
    }
    /// Outputs per plane computed, garbage columns included, rounded up to tiles.
    fn q(&self) -> usize {
        (self.oh() * self.wp()).div_ceil(NR) * NR
    }
    /// Output channels per tile.
    fn mr(&self) -> usize {
        match self.tiling {
            Tiling::Pixels => MR,
            Tiling::Channels => CR,
        }
    }
    fn cout_tiles(&self) -> usize {
        self.cout.div_ceil(self.mr())
    }
    /// Floats of the padded image, with the slack the last tiles read past
    /// it: along the pixels, the last tile's run; along the channels, the
    /// last window's overhang past the last plane (at most `pad` floats,
    /// [`wp`](Self::wp)).
    fn padded_len(&self) -> usize {
        let read_end = (self.cin - 1) * self.plane() + self.q() + (self.k - 1) * (self.wp() + 1);
        read_end.max(self.cin * self.plane() + self.pad)
    }

    /// Images one forward task ([`images`](Self::images)) takes: one along
    /// the pixels; along the channels, enough images for
    /// [`CHANNELS_MIN_PIXELS`] pixels, and up to [`PR`] - 1 more where
    /// that makes the pixels fill whole tiles; at most a
    /// [`MIN_TASKS`]th of the `batch`, so that a small batch (a sliced
    /// pass's slice) still splits into tasks for the threads. Fixed by the
    /// shapes, never by the threads; it changes no sum (each output is
    /// summed over its own taps in the same order whichever tile holds it).
    pub(crate) fn images_per_task(&self, batch: usize) -> usize {
        let p = self.oh() * self.ow();
        if self.tiling == Tiling::Pixels || p >= CHANNELS_MIN_PIXELS {
            return 1;
        }
        let n = CHANNELS_MIN_PIXELS.div_ceil(p);
        let n = (n..n + PR)
            .find(|m| (m * p).is_multiple_of(PR))
            .unwrap_or(n);
        n.min(batch.div_ceil(MIN_TASKS)).max(1)
    }

    /// Scratch floats a task of `n` images needs: the padded images and
    /// the tiles of one output-channel block (along the pixels, images run
    /// one after another in one image's scratch).
    pub(crate) fn scratch_len(&self, n: usize) -> usize {
        match self.tiling {
            Tiling::Pixels => self.padded_len() + MR * self.q(),
            Tiling::Channels => {
                n * self.padded_len() + (n * self.oh() * self.ow()).div_ceil(PR) * PR * CR
            }
        }
    }

    /// The weights `(cout, cin, k, k)` in the microkernel's order:
    /// `[co / mr][ci][kh][kw][co % mr]` (`mr` the tile's channels), zero
    /// for channels past `cout`.
    pub(crate) fn pack(&self, w: &[f32]) -> Vec<f32> {
        let (kk, cin, mr) = (self.k * self.k, self.cin, self.mr());
        let mut out = vec![0f32; self.cout_tiles() * mr * cin * kk];
        for co in 0..self.cout {
            let (t, r) = (co / mr, co % mr);
            for ci in 0..cin {
                for i in 0..kk {
                    out[((t * cin + ci) * kk + i) * mr + r] = w[(co * cin + ci) * kk + i];
                }
            }
        }
        out
    }

    /// `out (n, cout, oh, ow) = conv(xs (n, cin, h, w), packed)` for `n`
    /// consecutive images (a task of [`images_per_task`](Self::images_per_task));
    /// every element of `out[..n * cout * oh * ow]` is written (callers
    /// rely on it to skip zeroing the output).
    ///
    /// With an epilogue, each output is written through it (BatchNorm in
    /// evaluation mode, and a residual block's add and ReLU, applied as the
    /// output leaves the tile instead of in passes of their own).
    pub(crate) fn images(
        &self,
        xs: &[f32],
        n: usize,
        packed: &[f32],
        epilogue: Option<Epilogue<'_>>,
        out: &mut [MaybeUninit<f32>],
        scratch: &mut [f32],
    ) {
        assert!(available(), "direct convolution needs AVX2 and FMA");
        assert!(self.stride == 1 || self.tiling == Tiling::Channels);
        let (img, oimg) = (
            self.cin * self.h * self.w,
            self.cout * self.oh() * self.ow(),
        );
        assert!(xs.len() >= n * img && out.len() >= n * oimg);
        match self.tiling {
            Tiling::Pixels => {
                for (i, o) in out[..n * oimg].chunks_exact_mut(oimg).enumerate() {
                    let ep = epilogue.map(|e| e.part(i * oimg, oimg));
                    self.image_pixels(&xs[i * img..][..img], packed, ep, o, scratch);
                }
            }
            Tiling::Channels => self.images_channels(xs, n, packed, epilogue, out, scratch),
        }
    }

    /// [`images`](Self::images) along the channels: the tiles run over the
    /// pixels of all `n` images, so each block of packed weights serves
    /// `n` images' tiles while it is in cache.
    fn images_channels(
        &self,
        xs: &[f32],
        n: usize,
        packed: &[f32],
        epilogue: Option<Epilogue<'_>>,
        out: &mut [MaybeUninit<f32>],
        scratch: &mut [f32],
    ) {
        let (wp, plane, kk) = (self.wp(), self.plane(), self.k * self.k);
        let (oh, ow, cin) = (self.oh(), self.ow(), self.cin);
        let (p, img, xlen) = (oh * ow, cin * self.h * self.w, self.padded_len());
        let all = n * p;
        let tiles = all.div_ceil(PR);
        assert!(out.len() >= n * self.cout * p);
        assert!(packed.len() >= self.cout_tiles() * CR * cin * kk);
        let (xp, tile) = scratch[..self.scratch_len(n)].split_at_mut(n * xlen);
        for (i, dst) in xp.chunks_exact_mut(xlen).enumerate() {
            self.pad_into(&xs[i * img..][..img], dst);
        }
        // Where each tile's pixels start: image `g / p`'s padded copy, its
        // pixel `g % p`; the last tile repeats the last pixel.
        let offs: Vec<[usize; PR]> = (0..tiles)
            .map(|t| {
                std::array::from_fn(|j| {
                    let g = (t * PR + j).min(all - 1);
                    (g / p) * xlen + self.pixel_start(g % p)
                })
            })
            .collect();
        let taps = cin * kk;
        for t in 0..self.cout_tiles() {
            let wt = &packed[t * taps * CR..(t + 1) * taps * CR];
            for c0 in (0..cin).step_by(CB) {
                let cb = CB.min(cin - c0);
                for (pt, off) in offs.iter().enumerate() {
                    // SAFETY: `available()` held above; the tile reads xp at
                    // c0*plane + off[j] + (cb-1)*plane + (k-1)*(wp+1), inside
                    // one image's padded copy (off[j] is that copy's start
                    // plus a valid output pixel, whose window overhangs the
                    // last plane by at most `pad` floats: padded_len), and
                    // cb*kk*CR floats of wt from c0*kk*CR, and reads/writes
                    // PR*CR floats of `tile` at pt*PR*CR, all in the slices.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        tile_channels_avx2(
                            xp.as_ptr().add(c0 * plane),
                            plane,
                            wp,
                            self.k,
                            cb,
                            off,
                            wt.as_ptr().add(c0 * kk * CR),
                            tile.as_mut_ptr().add(pt * PR * CR),
                            c0 > 0,
                        )
                    };
                }
            }
            for i in 0..n {
                for co in t * CR..self.cout.min((t + 1) * CR) {
                    let r = co - t * CR;
                    let dst = &mut out[(i * self.cout + co) * p..][..p];
                    let src = (0..p).map(|j| tile[(i * p + j) * CR + r]);
                    match epilogue {
                        None => dst.iter_mut().zip(src).for_each(|(o, v)| {
                            o.write(v);
                        }),
                        Some(e) => e.write(co, (i * self.cout + co) * p, src, dst),
                    }
                }
            }
        }
    }

    fn image_pixels(
        &self,
        x: &[f32],
        packed: &[f32],
        epilogue: Option<Epilogue<'_>>,
        out: &mut [MaybeUninit<f32>],
        scratch: &mut [f32],
    ) {
        let (wp, plane, q) = (self.wp(), self.plane(), self.q());
        let (oh, ow) = (self.oh(), self.ow());
        assert!(out.len() >= self.cout * oh * ow);
        assert!(packed.len() >= self.cout_tiles() * MR * self.cin * self.k * self.k);
        let (xp, tile) = scratch[..self.scratch_len(1)].split_at_mut(self.padded_len());
        self.pad_into(x, xp);
        let kk = self.k * self.k;
        let taps = self.cin * kk;
        for t in 0..self.cout_tiles() {
            let wt = &packed[t * taps * MR..(t + 1) * taps * MR];
            for c0 in (0..self.cin).step_by(CB) {
                let cb = CB.min(self.cin - c0);
                for q0 in (0..q).step_by(NR) {
                    // SAFETY: `available()` held above; the tile reads xp
                    // from c0*plane + q0 up to (cin-1)*plane + q0 + NR-1 +
                    // (k-1)*(wp+1) < padded_len, cb*kk*MR floats of wt from
                    // c0*kk*MR, and reads/writes MR rows of NR floats at q0
                    // of `tile` (pitch q), all inside the slices.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        tile_avx2(
                            xp.as_ptr().add(c0 * plane + q0),
                            plane,
                            wp,
                            self.k,
                            cb,
                            wt.as_ptr().add(c0 * kk * MR),
                            tile.as_mut_ptr().add(q0),
                            q,
                            c0 > 0,
                        )
                    };
                }
            }
            for r in 0..MR.min(self.cout - t * MR) {
                let co = t * MR + r;
                for oy in 0..oh {
                    let src = &tile[r * q + oy * wp..][..ow];
                    let dst = &mut out[(co * oh + oy) * ow..][..ow];
                    match epilogue {
                        None => {
                            for (o, &v) in dst.iter_mut().zip(src) {
                                o.write(v);
                            }
                        }
                        Some(e) => e.write(co, (co * oh + oy) * ow, src.iter().copied(), dst),
                    }
                }
            }
        }
    }
}

impl Direct {
    /// Output pixels per plane of the padded output gradient (garbage
    /// columns included, rounded up to whole vectors).
    fn q8(&self) -> usize {
        (self.oh() * self.wp()).div_ceil(8) * 8
    }

    /// This convolution with the layout the weight gradient uses.
    fn wide(&self) -> Direct {
        Direct {
            pitch: Pitch::Wide,
            ..*self
        }
    }

    /// Scratch floats [`weight_grad_group`](Self::weight_grad_group) needs.
    pub(crate) fn weight_grad_scratch_len(&self) -> usize {
        let d = self.wide();
        d.wide_weight_grad_scratch_len()
    }

    fn wide_weight_grad_scratch_len(&self) -> usize {
        match self.tiling {
            Tiling::Pixels => self.padded_len() + self.cout_tiles() * MR * self.q8(),
            Tiling::Channels => {
                let ldc = self.cout_tiles() * CR;
                self.padded_len() + self.oh() * self.ow() * ldc + self.taps_padded() * ldc
            }
        }
    }

    /// Whether [`weight_grad_group`](Self::weight_grad_group) handles this
    /// convolution (along the pixels its microkernel holds the three taps
    /// of a kernel row: 3x3 only; along the channels, few enough sums).
    pub(crate) fn has_weight_grad(&self) -> bool {
        match self.tiling {
            // With 128 input channels at 16x16 (ResNet-18's layer 2) it
            // ran at 0.9x of im2col + gemm, with 16-64 at 1.1-1.4x.
            Tiling::Pixels => self.k == 3 && self.cin <= 64,
            // Its (tap, channel) sums stay in cache only up to here: with
            // ResNet-18's 8x8 and 4x4 layers (2,304 x 256 and 4,608 x 512
            // sums) it ran at 0.7x and 0.4x of im2col + gemm
            // (docs/cpu-profile.md).
            Tiling::Channels => {
                self.taps_padded() * self.cout_tiles() * CR <= CHANNELS_WGRAD_MAX_SUMS
            }
        }
    }

    /// Taps `(ci, kh, kw)` rounded up to whole [`PR`]-tap tiles.
    fn taps_padded(&self) -> usize {
        (self.cin * self.k * self.k).div_ceil(PR) * PR
    }

    /// Adds the weight gradient of `n` images (`xs`, `dys` consecutive) to
    /// `dw (cout, cin, k, k)`, summing images in order.
    pub(crate) fn weight_grad_group(
        &self,
        xs: &[f32],
        dys: &[f32],
        n: usize,
        dw: &mut [f32],
        scratch: &mut [f32],
    ) {
        let d = self.wide();
        let (img, oimg) = (d.cin * d.h * d.w, d.cout * d.oh() * d.ow());
        match d.tiling {
            Tiling::Pixels => {
                for i in 0..n {
                    let (x, dy) = (&xs[i * img..][..img], &dys[i * oimg..][..oimg]);
                    d.weight_grad_image(x, dy, dw, scratch);
                }
            }
            Tiling::Channels => d.weight_grad_channels(xs, dys, n, dw, scratch),
        }
    }

    /// [`weight_grad_group`](Self::weight_grad_group) along the channels:
    /// for [`CR`] output channels x [`PR`] taps, `sum_p dy[co][p] *
    /// xp[ci][base(p) + kh * wp + kw]` over the pixels of an image in one
    /// FMA chain per sum, accumulated over the images in a (tap, channel)
    /// buffer, then added to `dw`.
    fn weight_grad_channels(
        &self,
        xs: &[f32],
        dys: &[f32],
        n: usize,
        dw: &mut [f32],
        scratch: &mut [f32],
    ) {
        assert!(available() && self.tiling == Tiling::Channels);
        let (wp, plane, k) = (self.wp(), self.plane(), self.k);
        let (oh, ow, cin, cout) = (self.oh(), self.ow(), self.cin, self.cout);
        let (p, taps, ldc) = (oh * ow, cin * k * k, self.cout_tiles() * CR);
        let (img, oimg) = (cin * self.h * self.w, cout * p);
        assert!(xs.len() >= n * img && dys.len() >= n * oimg && dw.len() >= cout * taps);
        let (xp, rest) =
            scratch[..self.wide_weight_grad_scratch_len()].split_at_mut(self.padded_len());
        let (dyt, acc) = rest.split_at_mut(p * ldc);
        acc.fill(0.0);
        dyt.fill(0.0);
        let base: Vec<usize> = (0..p).map(|i| self.pixel_start(i)).collect();
        let tap_off = |t: usize| {
            let t = t.min(taps - 1);
            let (ci, r) = (t / (k * k), t % (k * k));
            ci * plane + (r / k) * wp + r % k
        };
        for i in 0..n {
            self.pad_into(&xs[i * img..][..img], xp);
            let dy = &dys[i * oimg..][..oimg];
            for co in 0..cout {
                for (q, v) in dy[co * p..(co + 1) * p].iter().enumerate() {
                    dyt[q * ldc + co] = *v;
                }
            }
            for t in 0..self.cout_tiles() {
                for t0 in (0..taps).step_by(PR) {
                    let offs: [usize; PR] = std::array::from_fn(|j| tap_off(t0 + j));
                    // SAFETY: `available()` held above; reads xp at
                    // base[q] + offs[j] (inside the cin planes: a valid
                    // output pixel's window), 16 floats of each of the p
                    // rows of dyt at t*CR (pitch ldc), and adds to PR rows
                    // of 16 floats of acc at t0*ldc + t*CR (pitch ldc),
                    // t0 + PR <= taps_padded.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        wgrad_channels_avx2(
                            xp.as_ptr(),
                            &base,
                            &offs,
                            dyt.as_ptr().add(t * CR),
                            ldc,
                            acc.as_mut_ptr().add(t0 * ldc + t * CR),
                        )
                    };
                }
            }
        }
        for co in 0..cout {
            for (t, d) in dw[co * taps..(co + 1) * taps].iter_mut().enumerate() {
                *d += acc[t * ldc + co];
            }
        }
    }

    /// Adds one image's weight gradient to `dw (cout, cin, 3, 3)`:
    /// `dw[co][ci][kh][kw] += sum_q dy[co][q] * xp[ci][q + kh * wp + kw]`,
    /// with `dy` laid out at the padded pitch and zero in the dropped
    /// columns. Each sum runs over the image's pixels in eight lanes, then
    /// across the lanes in a fixed order.
    fn weight_grad_image(&self, x: &[f32], dy: &[f32], dw: &mut [f32], scratch: &mut [f32]) {
        assert!(available() && self.has_weight_grad());
        let (wp, plane, q8) = (self.wp(), self.plane(), self.q8());
        let (oh, ow, cin, k) = (self.oh(), self.ow(), self.cin, self.k);
        assert!(dy.len() >= self.cout * oh * ow && dw.len() >= self.cout * cin * k * k);
        let (xp, dyp) =
            scratch[..self.wide_weight_grad_scratch_len()].split_at_mut(self.padded_len());
        self.pad_into(x, xp);
        // Zero in the dropped columns, past the last row and in the rows of
        // the channels that round `cout` up to whole tiles.
        for (co, plane) in dyp.chunks_exact_mut(q8).enumerate() {
            if co >= self.cout {
                plane.fill(0.0);
                continue;
            }
            for oy in 0..oh {
                let row = &mut plane[oy * wp..(oy + 1) * wp];
                row[..ow].copy_from_slice(&dy[(co * oh + oy) * ow..][..ow]);
                row[ow..].fill(0.0);
            }
            plane[oh * wp..].fill(0.0);
        }
        let mut sums = [0f32; 12];
        for t in 0..self.cout_tiles() {
            let rows = MR.min(self.cout - t * MR);
            for ci in 0..cin {
                for kh in 0..k {
                    // SAFETY: `available()` held above; reads q8 floats
                    // from each of the MR rows of dyp at t*MR*q8 (inside
                    // cout_tiles*MR*q8) and q8 + 2 floats of xp from
                    // ci*plane + kh*wp, which ends before
                    // (cin-1)*plane + q + (k-1)*(wp+1) <= padded_len.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        wgrad_avx2(
                            xp.as_ptr().add(ci * plane + kh * wp),
                            dyp.as_ptr().add(t * MR * q8),
                            q8,
                            &mut sums,
                        )
                    };
                    for r in 0..rows {
                        let at = ((t * MR + r) * cin + ci) * 9 + kh * 3;
                        for kw in 0..3 {
                            dw[at + kw] += sums[r * 3 + kw];
                        }
                    }
                }
            }
        }
    }

    /// The zero-padded copy of one image (and zero slack) in `xp`.
    fn pad_into(&self, x: &[f32], xp: &mut [f32]) {
        let (wp, plane, pad) = (self.wp(), self.plane(), self.pad);
        assert!(x.len() >= self.cin * self.h * self.w && xp.len() >= self.padded_len());
        let (h, w) = (self.h, self.w);
        for c in 0..self.cin {
            let dst = &mut xp[c * plane..(c + 1) * plane];
            dst[..pad * wp].fill(0.0);
            dst[(h + pad) * wp..].fill(0.0);
            for y in 0..h {
                // `pad + w` floats, then the right padding where `wp` has it.
                let row = &mut dst[(y + pad) * wp..(y + pad + 1) * wp];
                row[..pad].fill(0.0);
                row[pad..pad + w].copy_from_slice(&x[(c * h + y) * w..][..w]);
                row[pad + w..].fill(0.0);
            }
        }
        xp[self.cin * plane..self.padded_len()].fill(0.0);
    }
}

/// `sums[r * 3 + kw] = sum_{j < n} dy[r * ldq + j] * x[j + kw]` for the
/// MR rows `r` and the three taps `kw`, `n` a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wgrad_avx2(x: *const f32, dy: *const f32, n: usize, sums: &mut [f32; 12]) {
    use std::arch::x86_64::*;
    // SAFETY (every pointer operation below): the caller guarantees the
    // ranges (see `Direct::weight_grad_image`); ldq = n.
    unsafe {
        let ldq = n;
        let z = _mm256_setzero_ps();
        let mut acc = [z; 12];
        let mut j = 0;
        while j < n {
            let xs = x.add(j);
            let (x0, x1, x2) = (
                _mm256_loadu_ps(xs),
                _mm256_loadu_ps(xs.add(1)),
                _mm256_loadu_ps(xs.add(2)),
            );
            for r in 0..MR {
                let d = _mm256_loadu_ps(dy.add(r * ldq + j));
                acc[r * 3] = _mm256_fmadd_ps(d, x0, acc[r * 3]);
                acc[r * 3 + 1] = _mm256_fmadd_ps(d, x1, acc[r * 3 + 1]);
                acc[r * 3 + 2] = _mm256_fmadd_ps(d, x2, acc[r * 3 + 2]);
            }
            j += 8;
        }
        for (s, a) in sums.iter_mut().zip(acc) {
            // lanes (0+4, 1+5, 2+6, 3+7), then (0+2, 1+3), then 0+1
            let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps::<1>(h, h));
            *s = _mm_cvtss_f32(h);
        }
    }
}

/// Input channels summed in registers before a tile's partial sum is added
/// to the stored one: shorter f32 chains (as accurate as gemm's blocked
/// sums, `conv::tests::as_accurate_as_candle`), and a block of planes that
/// stays in cache across the tiles of a row.
const CB: usize = 16;

/// One MR x NR tile: `dst[r * ldd + j] (+)= sum_{ci, kh, kw} w[.., r] * x[ci * plane + kh * wp + kw + j]`,
/// added to `dst` when `accumulate`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_avx2(
    x: *const f32,
    plane: usize,
    wp: usize,
    k: usize,
    cin: usize,
    w: *const f32,
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY (every pointer operation below): the caller guarantees the
    // ranges (see `Direct::image_pixels`).
    unsafe {
        // Twelve named accumulators: written as an array with loops over
        // MR and the three vectors, LLVM spilled one and shuffled the rest
        // every iteration (seen in the disassembly).
        let z = _mm256_setzero_ps();
        let (mut a00, mut a01, mut a02) = (z, z, z);
        let (mut a10, mut a11, mut a12) = (z, z, z);
        let (mut a20, mut a21, mut a22) = (z, z, z);
        let (mut a30, mut a31, mut a32) = (z, z, z);
        let mut wv = w;
        for ci in 0..cin {
            let xc = x.add(ci * plane);
            for kh in 0..k {
                let xr = xc.add(kh * wp);
                for kw in 0..k {
                    let xs = xr.add(kw);
                    let (x0, x1, x2) = (
                        _mm256_loadu_ps(xs),
                        _mm256_loadu_ps(xs.add(8)),
                        _mm256_loadu_ps(xs.add(16)),
                    );
                    let w0 = _mm256_broadcast_ss(&*wv);
                    a00 = _mm256_fmadd_ps(w0, x0, a00);
                    a01 = _mm256_fmadd_ps(w0, x1, a01);
                    a02 = _mm256_fmadd_ps(w0, x2, a02);
                    let w1 = _mm256_broadcast_ss(&*wv.add(1));
                    a10 = _mm256_fmadd_ps(w1, x0, a10);
                    a11 = _mm256_fmadd_ps(w1, x1, a11);
                    a12 = _mm256_fmadd_ps(w1, x2, a12);
                    let w2 = _mm256_broadcast_ss(&*wv.add(2));
                    a20 = _mm256_fmadd_ps(w2, x0, a20);
                    a21 = _mm256_fmadd_ps(w2, x1, a21);
                    a22 = _mm256_fmadd_ps(w2, x2, a22);
                    let w3 = _mm256_broadcast_ss(&*wv.add(3));
                    a30 = _mm256_fmadd_ps(w3, x0, a30);
                    a31 = _mm256_fmadd_ps(w3, x1, a31);
                    a32 = _mm256_fmadd_ps(w3, x2, a32);
                    wv = wv.add(MR);
                }
            }
        }
        let acc = [
            [a00, a01, a02],
            [a10, a11, a12],
            [a20, a21, a22],
            [a30, a31, a32],
        ];
        store_tile(acc, dst, ldd, accumulate);
    }
}

/// One CR x PR tile of [`Tiling::Channels`]: for pixel `j` and channel `c`,
/// `dst[j * CR + c] (+)= sum_{ci, kh, kw} w[.., c] * x[ci * plane + off[j] + kh * wp + kw]`,
/// added to `dst` when `accumulate`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_channels_avx2(
    x: *const f32,
    plane: usize,
    wp: usize,
    k: usize,
    cin: usize,
    off: &[usize; PR],
    w: *const f32,
    dst: *mut f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY (every pointer operation below): the caller guarantees the
    // ranges (see `Direct::images_channels`).
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; PR];
        let mut wv = w;
        for ci in 0..cin {
            let xc = x.add(ci * plane);
            for kh in 0..k {
                for kw in 0..k {
                    let d = kh * wp + kw;
                    let (w0, w1) = (_mm256_loadu_ps(wv), _mm256_loadu_ps(wv.add(8)));
                    for (a, o) in acc.iter_mut().zip(off) {
                        let xj = _mm256_broadcast_ss(&*xc.add(o + d));
                        a[0] = _mm256_fmadd_ps(w0, xj, a[0]);
                        a[1] = _mm256_fmadd_ps(w1, xj, a[1]);
                    }
                    wv = wv.add(CR);
                }
            }
        }
        store_tile(acc, dst, CR, accumulate);
    }
}

/// Stores (or, when `accumulate`, adds) an R x V tile of vectors at
/// `dst`: row `j` at `dst + j * ld`, V vectors of 8 floats each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_tile<const R: usize, const V: usize>(
    acc: [[std::arch::x86_64::__m256; V]; R],
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY: the callers guarantee R rows of 8 * V floats at pitch `ld`.
    unsafe {
        for (j, row) in acc.into_iter().enumerate() {
            for (h, a) in row.into_iter().enumerate() {
                let p = dst.add(j * ld + 8 * h);
                let v = if accumulate {
                    _mm256_add_ps(_mm256_loadu_ps(p), a)
                } else {
                    a
                };
                _mm256_storeu_ps(p, v);
            }
        }
    }
}

/// For [`CR`] channels `c` and [`PR`] taps `j`: `acc[j * ld + c] +=
/// sum_q dyt[q * ld + c] * x[base[q] + off[j]]`, one FMA chain per sum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wgrad_channels_avx2(
    x: *const f32,
    base: &[usize],
    off: &[usize; PR],
    dyt: *const f32,
    ld: usize,
    acc_out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY (every pointer operation below): the caller guarantees the
    // ranges (see `Direct::weight_grad_channels`).
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; PR];
        for (q, &b) in base.iter().enumerate() {
            let d = dyt.add(q * ld);
            let (d0, d1) = (_mm256_loadu_ps(d), _mm256_loadu_ps(d.add(8)));
            let xb = x.add(b);
            for (a, &o) in acc.iter_mut().zip(off) {
                let xj = _mm256_broadcast_ss(&*xb.add(o));
                a[0] = _mm256_fmadd_ps(d0, xj, a[0]);
                a[1] = _mm256_fmadd_ps(d1, xj, a[1]);
            }
        }
        store_tile(acc, acc_out, ld, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from a fixed hash, of both signs.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| crate::cpu::test_unit(crate::cpu::test_hash(i, seed)))
            .collect()
    }

    /// The narrow pitch (rows with their left padding only) gives the
    /// forward pass the bits of the wide one, along the pixels and along
    /// the channels, for paddings 0-2 and 3x3 and 5x5 kernels, from a
    /// scratch buffer that starts as NaN (as a reused one holds stale
    /// values): every padding position the kernels read is a written zero.
    #[test]
    fn the_narrow_pitch_changes_no_bit() {
        if !available() {
            eprintln!("skipped: the direct kernels need AVX2 and FMA, which this CPU lacks");
            return;
        }
        // (cin, h, w, cout, k, pad, tiling)
        let shapes = [
            (16, 32, 32, 16, 3, 1, Tiling::Pixels),
            (5, 17, 20, 7, 3, 0, Tiling::Pixels),
            (3, 16, 19, 9, 3, 2, Tiling::Pixels),
            (4, 18, 16, 6, 5, 2, Tiling::Pixels),
            (32, 8, 8, 20, 3, 1, Tiling::Channels),
            (6, 5, 7, 17, 3, 2, Tiling::Channels),
            (9, 6, 6, 16, 5, 1, Tiling::Channels),
        ];
        for (cin, h, w, cout, k, pad, tiling) in shapes {
            let case = format!("cin {cin} {h}x{w} cout {cout} k {k} pad {pad} {tiling:?}");
            let run = |pitch: Pitch| {
                let d = Direct {
                    cin,
                    h,
                    w,
                    cout,
                    k,
                    pad,
                    stride: 1,
                    tiling,
                    pitch,
                };
                let n = 2;
                let x = values(n * cin * h * w, 7);
                let packed = d.pack(&values(cout * cin * k * k, 8));
                let mut out = vec![MaybeUninit::new(f32::NAN); n * cout * d.oh() * d.ow()];
                let mut scratch = vec![f32::NAN; d.scratch_len(n)];
                if tiling == Tiling::Channels {
                    d.images(&x, n, &packed, None, &mut out, &mut scratch);
                } else {
                    let (img, oimg) = (cin * h * w, cout * d.oh() * d.ow());
                    for (i, o) in out.chunks_exact_mut(oimg).enumerate() {
                        d.images(&x[i * img..][..img], 1, &packed, None, o, &mut scratch);
                    }
                }
                // SAFETY: filled with NaN, then written by `images`.
                let bits: Vec<u32> = out
                    .iter()
                    .map(|o| unsafe { o.assume_init() }.to_bits())
                    .collect();
                (bits, d.wp())
            };
            let ((narrow, wp_n), (wide, wp_w)) = (run(Pitch::Narrow), run(Pitch::Wide));
            assert_eq!(wp_n, w + pad, "{case}: the narrow pitch");
            assert_eq!(wp_w, w + 2 * pad, "{case}: the wide pitch");
            assert!(
                narrow.iter().all(|&b| !f32::from_bits(b).is_nan()),
                "{case}: a NaN output"
            );
            assert_eq!(narrow, wide, "{case}");
        }
    }

    /// A task of several images along the channels gives every output the
    /// bits one image per task gave: the grouping moves pixels between
    /// tiles, and no tile sums across pixels. Shapes: ResNet-18's 4x4
    /// layer and its strided 8x8 -> 4x4 convolution, ResNet-8's 8x8 layer,
    /// and maps whose pixel count fills no whole tile (5x5, 3x3 stride 2,
    /// 1x1), with channel counts off the tile.
    #[test]
    fn several_images_per_task_change_no_bit() {
        if !available() {
            // `Direct::images` asserts AVX2 + FMA: nothing of this runs on
            // this CPU (conv.rs's tests cover the im2col path it takes).
            eprintln!("skipped: the direct kernels need AVX2 and FMA, which this CPU lacks");
            return;
        }
        // (cin, h, cout, k, pad, stride)
        let shapes = [
            (512, 4, 512, 3, 1, 1),
            (256, 8, 512, 3, 1, 2),
            (64, 8, 64, 3, 1, 1),
            (20, 5, 17, 3, 1, 1),
            (7, 5, 33, 3, 0, 2),
            (3, 1, 5, 3, 1, 1),
        ];
        for (cin, h, cout, k, pad, stride) in shapes {
            let d = Direct {
                cin,
                h,
                w: h,
                cout,
                k,
                pad,
                stride,
                tiling: Tiling::Channels,
                pitch: Pitch::Narrow,
            };
            let n = d.images_per_task(128);
            let p = d.oh() * d.ow();
            let case = format!("cin {cin} h {h} cout {cout} k {k} pad {pad} stride {stride}");
            assert!(
                n > 1 || p >= CHANNELS_MIN_PIXELS,
                "{case}: {n} images per task"
            );
            let (img, oimg) = (cin * h * h, cout * p);
            let x = values(n * img, cin as u32);
            let packed = d.pack(&values(cout * cin * k * k, cout as u32 + 1));
            let mut together = vec![MaybeUninit::new(f32::NAN); n * oimg];
            // Scratch as a reused buffer may hold it: not zeros.
            let mut scratch = vec![f32::NAN; d.scratch_len(n)];
            d.images(&x, n, &packed, None, &mut together, &mut scratch);
            let mut alone = vec![MaybeUninit::new(f32::NAN); n * oimg];
            let mut scratch = vec![f32::NAN; d.scratch_len(1)];
            for (i, o) in alone.chunks_exact_mut(oimg).enumerate() {
                d.images(&x[i * img..][..img], 1, &packed, None, o, &mut scratch);
            }
            // SAFETY: both were filled with NaN and then written by
            // `images`; reading an initialised f32.
            let bits = |v: &[MaybeUninit<f32>]| -> Vec<u32> {
                v.iter()
                    .map(|o| unsafe { o.assume_init() }.to_bits())
                    .collect()
            };
            let (t, a) = (bits(&together), bits(&alone));
            assert!(
                t.iter().all(|&b| !f32::from_bits(b).is_nan()),
                "{case}: an output left unwritten"
            );
            assert_eq!(t, a, "{case}");
        }
    }
}
