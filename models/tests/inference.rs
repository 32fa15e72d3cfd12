//! `Model::infer` (inference mode: BatchNorm applied as the convolution
//! before it writes its output) gives the bits of an evaluation-mode
//! `forward`, on every family, with running statistics that are not the
//! initial ones.

use candle_core::{Device, Tensor};
use samlab_models::{Arch, Model, fixtures};

fn bits(t: &Tensor) -> Vec<u32> {
    fixtures::bits(t).unwrap()
}

#[test]
fn inference_has_the_bits_of_evaluation_mode() {
    let dev = Device::Cpu;
    // Post-activation (conv, BatchNorm, ReLU) and pre-activation blocks,
    // 1x1 shortcuts (gemm, not the direct kernel) and strided layers.
    for arch in [
        "resnet8",
        "resnet18",
        "preactresnet11",
        "wrn10-1",
        "pyramidnet8-a16",
    ] {
        let model = Model::new(&arch.parse::<Arch>().unwrap(), 10, 1, &dev).unwrap();
        let x = fixtures::images(10, 3, &dev).unwrap();
        let y = fixtures::labels(10, &dev).unwrap();
        // Two steps move the weights and every running statistic away from
        // their initial values (mean 0, variance 1, scale 1, shift 0).
        for _ in 0..2 {
            fixtures::plain_sgd_step(&model, &x, &y, 0.5).unwrap();
        }
        let moved = model.params.buffers().any(|(name, v)| {
            name.ends_with("running_mean")
                && v.as_tensor()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
        });
        assert!(moved, "{arch}: the running statistics did not move");
        let test = fixtures::images(7, 11, &dev).unwrap();
        let want = model.forward(&test, false).unwrap();
        let got = model.infer(&test).unwrap();
        assert_eq!(bits(&got), bits(&want), "{arch}");
    }
}

/// The fused path is the one inference mode takes: its output carries no
/// graph where the layers' does, with the same bits, for every tiling
/// (32x32 along the pixels, 8x8 and stride 2 along the channels, 1x1 by
/// gemm) and each end (BatchNorm alone, with ReLU, with a residual block's
/// add and ReLU).
#[test]
fn inference_fuses_the_convolution_and_batch_norm() {
    use samlab_models::Builder;
    use samlab_models::layers::{BatchNorm2d, Conv2d, ConvSpec, inference};
    let dev = Device::Cpu;
    for (cin, cout, k, stride, hw) in [
        (3, 16, 3, 1, 32),
        (16, 32, 3, 1, 8),
        (16, 32, 3, 2, 16),
        (16, 32, 1, 2, 16),
    ] {
        let b = Builder::new(5, &dev);
        let conv = Conv2d::new(ConvSpec::new(cin, cout, k, stride), &b.pp("conv")).unwrap();
        let bn = BatchNorm2d::new(cout, &b.pp("bn")).unwrap();
        let x = Tensor::randn(0f32, 1.0, (6, cin, hw, hw), &dev).unwrap();
        // Running statistics away from (0, 1): one training-mode pass.
        bn.forward(&conv.forward(&x).unwrap(), true).unwrap();
        let out = conv.forward(&x).unwrap();
        let short = Tensor::randn(0f32, 1.0, out.dims(), &dev).unwrap();
        for end in ["none", "relu", "add relu"] {
            let pass = || match end {
                "none" => bn.forward_after(&conv, &x, false),
                "relu" => bn.forward_relu_after(&conv, &x, false),
                _ => bn.forward_add_relu_after(&conv, &x, &short, false),
            };
            let plain = pass().unwrap();
            let fused = inference(pass).unwrap();
            let case = format!("cin {cin} cout {cout} k {k} stride {stride} {hw}x{hw} then {end}");
            assert!(plain.track_op(), "{case}: the layers' output has no graph");
            assert!(!fused.track_op(), "{case}: inference mode did not fuse");
            assert_eq!(bits(&fused), bits(&plain), "{case}");
        }
    }
}
