//! The CPU f32 kernels behind the layers, as candle custom ops: the
//! convolution (`conv`: im2col + gemm for the forward pass and both
//! gradients) and BatchNorm with its fused ReLU and `relu(a + b)`
//! (`batchnorm`). Both split their work by image, channel or a chunk size
//! fixed by the shapes, never by thread count, so results are bit-identical
//! whatever the number of threads (`models/tests/threads.rs`). Where each
//! choice came from, with its measurement, is in `docs/cpu-profile.md`.

pub(crate) mod batchnorm;
pub(crate) mod conv;
pub(crate) mod dgrad;
pub(crate) mod direct;
pub(crate) mod norm;

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

/// A vector of `len` floats filled in parallel chunks of `chunk` (the last
/// may be shorter) by `fill(index, chunk)`, without zeroing it first: a
/// zeroed output was a tenth of a ResNet-8 evaluation (docs/cpu-profile.md).
///
/// # Safety
///
/// `fill` must write every element of every chunk it is given.
pub(crate) unsafe fn par_filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    if len > 0 {
        v.spare_capacity_mut()[..len]
            .par_chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(i, c)| fill(i, c));
    }
    // SAFETY: the chunks cover the first `len` elements, and the caller
    // guarantees `fill` wrote each of them.
    unsafe { v.set_len(len) };
    v
}

/// Whether the element-wise loops take their AVX2 copies ([`avx2_copy!`]):
/// a CPU with AVX2, off the portable [`Path`].
pub(crate) fn wide_loops() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        path() != Path::Portable && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines a function (`fn name / name_portable(..)`: the baseline body
/// under the second name) whose body is also compiled for AVX2, the copy
/// taken where [`wide_loops`] holds: for the element-wise loops (BatchNorm's
/// passes, `relu(a + b)`), which the x86-64 baseline compiles for SSE2 or
/// scalar. Both copies do the same operations per element in the same
/// order: Rust never contracts a multiply and an add into an FMA, and a
/// sum's lanes keep their own elements in order on either width, so both
/// give the same bits (`models/tests/threads.rs`' fingerprints hold on
/// both). Closures called in the body must be small enough to inline.
macro_rules! avx2_copy {
    ($(#[$m:meta])* $vis:vis fn $name:ident / $portable:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        /// The baseline body of the function without the portable suffix
        /// (for comparing its AVX2 copy with it).
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        $vis fn $portable($($arg: $ty),*) $(-> $ret)? $body

        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                if $crate::cpu::wide_loops() {
                    // SAFETY: the CPU has AVX2 (`wide_loops`).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}
pub(crate) use avx2_copy;

/// Which of samlab's own CPU code paths the kernels may take, from
/// `SAMLAB_CPU_CONV` (read once per process; docs/numerics.md), for
/// measuring one path against another:
///
/// - unset or empty: every kernel the CPU supports (the direct kernels
///   where [`direct::available`]);
/// - `pixels`: the direct kernels only for [`direct::Tiling::Pixels`];
/// - `col2im`: every kernel but [`dgrad`]'s: strided input gradients by
///   gemm + col2im, as before it (the same bits, for measuring one
///   against the other);
/// - `im2col`: no direct kernel (im2col + gemm throughout);
/// - `portable`: what a CPU without AVX2 and FMA runs in samlab's code: no
///   direct kernel, and the scalar transpose instead of the AVX one.
///
/// gemm (under im2col and candle's matmul) picks its own kernels by the
/// CPU's features and cache sizes; no setting here reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    Auto,
    Pixels,
    Col2im,
    Im2col,
    Portable,
}

impl Path {
    /// The path a value of `SAMLAB_CPU_CONV` names (`None`: none).
    pub(crate) fn parse(s: &str) -> Option<Path> {
        match s {
            "" => Some(Path::Auto),
            "pixels" => Some(Path::Pixels),
            "col2im" => Some(Path::Col2im),
            "im2col" => Some(Path::Im2col),
            "portable" => Some(Path::Portable),
            _ => None,
        }
    }
}

/// This process's [`Path`] (an unknown value warns once and means `Auto`).
pub(crate) fn path() -> Path {
    static PATH: OnceLock<Path> = OnceLock::new();
    *PATH.get_or_init(|| {
        let v = std::env::var("SAMLAB_CPU_CONV").unwrap_or_default();
        Path::parse(&v).unwrap_or_else(|| {
            eprintln!(
                "warning: SAMLAB_CPU_CONV={v:?} is none of \"pixels\", \"col2im\", \"im2col\", \"portable\"; using every kernel"
            );
            Path::Auto
        })
    })
}

/// Whether [`conv`]'s transpose may use its AVX blocks: on a CPU with AVX,
/// off the portable [`Path`].
pub(crate) fn simd_transpose() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        path() != Path::Portable && std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Two implementations of one pass, called side by side in one process by
/// the `layer_speed` example to time them against each other (not part of
/// the API).
#[doc(hidden)]
pub mod measure {
    use candle_core::Shape;

    /// The input gradient `dx` of a strided convolution (input shape `x`,
    /// kernel `w_shape`) from `dy`, by [`super::dgrad`]'s kernel or, with
    /// `col2im`, by gemm + col2im; `None` where the kernel does not apply.
    pub fn strided_grad_input(
        x: &Shape,
        w_shape: &Shape,
        stride: usize,
        pad: usize,
        dy: &[f32],
        w: &[f32],
        col2im: bool,
    ) -> Option<Vec<f32>> {
        super::conv::measure_strided_grad_input(x, w_shape, stride, pad, dy, w, col2im)
    }
}

/// A fixed hash of `(i, seed)`, for the kernels' test values.
#[cfg(test)]
pub(crate) fn test_hash(i: u32, seed: u32) -> u32 {
    let h = (i ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x85eb_ca6b);
    (h ^ (h >> 13)).wrapping_mul(0xc2b2_ae35)
}

/// [`test_hash`] as a value in [-1, 1).
#[cfg(test)]
pub(crate) fn test_unit(h: u32) -> f32 {
    ((h >> 8) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_names_parse() {
        assert_eq!(Path::parse(""), Some(Path::Auto));
        assert_eq!(Path::parse("pixels"), Some(Path::Pixels));
        assert_eq!(Path::parse("col2im"), Some(Path::Col2im));
        assert_eq!(Path::parse("im2col"), Some(Path::Im2col));
        assert_eq!(Path::parse("portable"), Some(Path::Portable));
        assert_eq!(Path::parse("Portable"), None);
        assert_eq!(Path::parse("avx2"), None);
    }

    /// The portable path turns off every kernel that needs more than the
    /// x86-64 baseline; the others take what the CPU has.
    #[test]
    fn the_portable_path_takes_no_simd_kernel() {
        let portable = path() == Path::Portable;
        #[cfg(target_arch = "x86_64")]
        let (avx, avx2_fma) = (
            std::arch::is_x86_feature_detected!("avx"),
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"),
        );
        #[cfg(not(target_arch = "x86_64"))]
        let (avx, avx2_fma) = (false, false);
        assert_eq!(direct::available(), !portable && avx2_fma);
        assert_eq!(simd_transpose(), !portable && avx);
    }
}
