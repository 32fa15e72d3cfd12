use candle_core::Device;
use samlab_models::{Arch, Model};

fn count(name: &str, classes: usize) -> usize {
    let arch: Arch = name.parse().unwrap();
    Model::new(&arch, classes, 0, &Device::Cpu)
        .unwrap()
        .params
        .num_trainable()
}

#[test]
fn thesis_models_have_the_published_parameter_counts() {
    assert_eq!(count("resnet18", 10), 11_173_962);
    assert_eq!(count("preactresnet164", 10), 1_703_258);
    assert_eq!(count("wrn28-10", 10), 36_479_194);
    let pyramid = count("pyramidnet110", 10) as f64;
    assert!(
        (pyramid / 28.3e6 - 1.0).abs() < 0.01,
        "PyramidNet-110: {pyramid}"
    );
}

/// The SAM authors' JAX WideResNet has no shortcut convolutions: 258,560
/// fewer parameters than samlab's variant (16x160 + 160x320 + 320x640 1x1
/// kernels), and it trains (finite loss, a gradient for every parameter).
#[test]
fn jax_wideresnet_has_parameter_free_shortcuts_and_trains() {
    assert_eq!(count("wrn28-10-jax", 10), 36_479_194 - 258_560);
    let arch: Arch = "wrn10-1-jax".parse().unwrap();
    assert_eq!(arch.name(), "wrn10-1-jax");
    let m = Model::new(&arch, 10, 0, &Device::Cpu).unwrap();
    assert!(m.params.trainable().all(|(n, _)| !n.contains("shortcut")));
    let bound = 1.0 / 10f64.sqrt();
    let w = m
        .params
        .get("linear.weight")
        .unwrap()
        .flatten_all()
        .unwrap();
    let max = w.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!(max <= bound && max > 0.9 * bound, "{max}");
    let x = samlab_models::fixtures::images(4, 3, &Device::Cpu).unwrap();
    let y = candle_core::Tensor::new(&[1u32, 2, 3, 4], &Device::Cpu).unwrap();
    for train in [true, false] {
        let logits = m.forward(&x, train).unwrap();
        assert_eq!(logits.dims(), &[4, 10]);
        let loss = samlab_models::cross_entropy(&logits, &y).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap().is_finite());
        let grads = loss.backward().unwrap();
        for (name, v) in m.params.trainable() {
            assert!(grads.get(v.as_tensor()).is_some(), "no gradient for {name}");
        }
    }
}

/// The forward FLOPs per image the step benchmark divides by, against a
/// count written out from the architectures (2 FLOPs per multiply-add of
/// the convolutions and the linear layer): ResNet-8 layer by layer, and
/// ResNet-18 and WRN-16-2 by their stage structure.
#[test]
fn forward_flops_follow_from_the_shapes() {
    let flops = |name: &str| {
        let arch: Arch = name.parse().unwrap();
        Model::new(&arch, 10, 0, &Device::Cpu)
            .unwrap()
            .forward_flops_per_image(32, 32)
            .unwrap()
    };
    // multiply-adds of a k x k convolution: cout * cin * k^2 per output pixel
    let conv = |cin: usize, cout: usize, k: usize, out: usize| cout * cin * k * k * out * out;
    let resnet8 = conv(3, 16, 3, 32)
        + 2 * conv(16, 16, 3, 32)
        + conv(16, 32, 3, 16)
        + conv(32, 32, 3, 16)
        + conv(16, 32, 1, 16)
        + conv(32, 64, 3, 8)
        + conv(64, 64, 3, 8)
        + conv(32, 64, 1, 8)
        + 64 * 10;
    assert_eq!(resnet8, 12_501_632);
    assert_eq!(flops("resnet8"), 2 * resnet8);
    // ResNet-18: stem 64, two basic blocks per stage, 1x1 projections
    // where a stage starts (stride 2) or widens
    let mut resnet18 = conv(3, 64, 3, 32) + 512 * 10;
    let (mut cin, mut size) = (64, 32);
    for width in [64, 128, 256, 512] {
        if width != 64 {
            size /= 2;
        }
        resnet18 += conv(cin, width, 3, size) + 3 * conv(width, width, 3, size);
        if cin != width {
            resnet18 += conv(cin, width, 1, size);
        }
        cin = width;
    }
    assert_eq!(flops("resnet18"), 2 * resnet18);
    // WRN-16-2: stem 16, two pre-activation blocks per stage of widths
    // 32/64/128, the second convolution strides, 1x1 projections
    let mut wrn = conv(3, 16, 3, 32) + 128 * 10;
    let (mut cin, mut size) = (16, 32);
    for (s, width) in [32, 64, 128].into_iter().enumerate() {
        let out = if s == 0 { size } else { size / 2 };
        wrn += conv(cin, width, 3, size) + conv(width, width, 3, out) + conv(cin, width, 1, out);
        wrn += 2 * conv(width, width, 3, out);
        (cin, size) = (width, out);
    }
    assert_eq!(flops("wrn16-2"), 2 * wrn);
    // Counting only runs inside `forward_flops`, and a model of another
    // input size counts its convolutions at that size (a quarter of the
    // pixels at 16x16; the linear layer sees the same 64 features).
    let (_, n) = samlab_models::layers::forward_flops(|| Ok(())).unwrap();
    assert_eq!(n, 0);
    let m = Model::new(&"resnet8".parse().unwrap(), 10, 0, &Device::Cpu).unwrap();
    assert_eq!(
        m.forward_flops_per_image(16, 16).unwrap(),
        2 * ((resnet8 - 640) / 4 + 640)
    );
}
