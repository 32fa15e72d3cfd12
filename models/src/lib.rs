//! The thesis' convolutional networks (ResNet-18, PreAct-ResNet-164,
//! WideResNet-28-10, PyramidNet-110) and CPU-sized relatives, built on candle.
//!
//! Filled in by the models issue; this crate is a compiling skeleton for now.
