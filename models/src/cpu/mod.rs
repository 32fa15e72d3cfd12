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
