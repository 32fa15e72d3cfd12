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
