//! The CPU f32 kernels behind the layers, as candle custom ops: the
//! convolution (`conv`: im2col + gemm for the forward pass and both
//! gradients) and BatchNorm with its fused ReLU and `relu(a + b)`
//! (`batchnorm`). Both split their work by image, channel or a chunk size
//! fixed by the shapes, never by thread count, so results are bit-identical
//! whatever the number of threads (`models/tests/threads.rs`). Where each
//! choice came from, with its measurement, is in `docs/cpu-profile.md`.

pub(crate) mod batchnorm;
pub(crate) mod conv;
pub(crate) mod direct;

use std::mem::MaybeUninit;

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
