//! The libraries together: real CIFAR-10 images from the shared archive
//! through the input pipeline into ResNet-8, trained with the SGD->SAM
//! trainer. Training learns (the loss falls), and the same settings give
//! bit-identical weights: every random choice comes from the seeds.

#[path = "support/shared.rs"]
mod shared;

use candle_core::Device;
use samlab_data::{
    Cifar100Labels, DatasetName, LoadOptions, Loader, PipelineConfig, Source, subset_per_class,
};
use samlab_models::{Arch, Model};
use samlab_optim::{LrSchedule, Method, Point, SamConfig, SgdConfig, StepSchedule, Trainer};

/// Trains 4 epochs of 8 steps; returns the mean loss per epoch and the final weights' bits.
fn train(data_dir: &std::path::Path) -> (Vec<f64>, Vec<u32>) {
    let src = Source::detect(&shared::cifar10_jpeg_archive()).unwrap();
    let opts = LoadOptions {
        data_dir: data_dir.to_path_buf(),
        cifar100_labels: Cifar100Labels::Fine,
    };
    let (ds, _) = samlab_data::load(DatasetName::Cifar10, &src, &opts).unwrap();
    let subset = subset_per_class(&ds.train, 10, 20, 1).unwrap();
    let loader = Loader::new(
        ds.train.clone(),
        Some(subset),
        PipelineConfig::train(25, ds.name.normalization(), 2),
    )
    .unwrap();
    let epochs = 4;
    let steps_per_epoch = loader.batches_per_epoch() as u64;
    assert_eq!(steps_per_epoch, 8);
    let total = epochs * steps_per_epoch;
    let model = Model::new(&"resnet8".parse::<Arch>().unwrap(), 10, 3, &Device::Cpu).unwrap();
    let mut trainer = Trainer::new(
        SgdConfig::default(),
        SamConfig::new(0.05),
        LrSchedule::Cosine { lr: 0.05 },
        &StepSchedule::Switch {
            from: Method::Sgd,
            to: Method::Sam,
            at: Point::Fraction(0.75),
        },
        total,
        steps_per_epoch,
    )
    .unwrap();
    let mut losses = Vec::new();
    for epoch in 0..epochs {
        let mut sum = 0.0;
        for batch in loader.epoch(epoch) {
            let (x, y) = batch.to_tensors(&Device::Cpu).unwrap();
            sum += trainer.train_step(&model, &x, &y).unwrap().loss;
        }
        losses.push(sum / steps_per_epoch as f64);
    }
    assert_eq!(
        trainer.passes,
        24.0 + 2.0 * 8.0,
        "24 SGD steps, then 8 SAM steps"
    );
    let bits = samlab_models::fixtures::param_bits(&model).unwrap();
    (losses, bits)
}

#[test]
fn training_on_real_images_learns_and_is_bit_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let (losses, a) = train(dir.path());
    eprintln!("mean loss per epoch: {losses:?}");
    assert!(
        losses[3] < losses[0] - 0.1,
        "the loss must fall: {losses:?}"
    );
    let (again, b) = train(dir.path());
    assert_eq!(losses, again);
    assert!(a == b, "the same settings must give bit-identical weights");
}
