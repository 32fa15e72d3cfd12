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
