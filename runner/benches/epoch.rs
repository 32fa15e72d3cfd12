//! How close a training epoch in the runner comes to the step benchmark:
//! `cargo bench -p samlab-runner --bench epoch`.
//!
//! The runner trains ResNet-8 on 1,280 real CIFAR-10 images (batch 128, no
//! augmentation, one BatchNorm batch, Nesterov SGD with weight decay) for 4
//! epochs in a fresh cache; its epoch time is the mean `wall_s` its
//! metrics.csv records for epochs 2-4 (the loader, the steps and the
//! per-step metrics; the first epoch, which grows buffers, is left out as
//! the step bench leaves out its warm-up). Beside it, in this process, the
//! step benchmark's step (`models/benches/step.rs`: forward, cross entropy,
//! backward and a plain SGD update on random images) at the same batch.
//! Best of 2 runs each, alternating. The ratio runner / bench is the
//! issue-19 figure (goal >= 0.95): what the data pipeline, the optimiser's
//! momentum and weight decay and the metrics cost on top of the network.

#[path = "../../tests/support/shared.rs"]
mod shared;

use std::process::Command;
use std::time::Instant;

use candle_core::Device;
use samlab_models::{Arch, Model, fixtures};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IMAGES: usize = 1280;
const BATCH: usize = 128;
const EPOCHS: usize = 4;

fn study(epochs: usize) -> String {
    format!(
        r#"Study(version: 1, dataset: "cifar10",
    stages: {{
        "run": Train(model: "resnet8", train_subset: PerClass(128), batch: {BATCH},
                     augment: false, epochs: {epochs}, test_subset: PerClass(1),
                     optimizer: (momentum: 0.9, nesterov: true, weight_decay: 5e-4)),
    }})"#
    )
}

/// Mean training seconds of epochs 2..=EPOCHS of a fresh runner process.
fn runner_epoch_seconds(data: &std::path::Path) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("epoch.ron");
    std::fs::write(&file, study(EPOCHS)).unwrap();
    let cache = dir.path().join("cache");
    let o = Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg(&file)
        .args(["--results-dir", "results", "-q"])
        .current_dir(dir.path())
        .env("SAMLAB_DATA_DIR", data)
        .env("SAMLAB_CIFAR10", shared::cifar10_jpeg_archive())
        .env("SAMLAB_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let entries: Vec<_> = std::fs::read_dir(cache.join("entries"))
        .unwrap()
        .map(|e| e.unwrap().path().join("metrics.csv"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(entries.len(), 1, "one trained entry");
    let text = std::fs::read_to_string(&entries[0]).unwrap();
    let walls: Vec<f64> = text
        .lines()
        .skip(2) // the header and epoch 1
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(walls.len(), EPOCHS - 1, "{text}");
    walls.iter().sum::<f64>() / walls.len() as f64
}

/// Images per second of the step benchmark's training step.
fn bench_img_per_s(steps: usize) -> f64 {
    let dev = Device::Cpu;
    let m = Model::new(&"resnet8".parse::<Arch>().unwrap(), 10, 0, &dev).unwrap();
    let x = fixtures::images(BATCH, 7, &dev).unwrap();
    let y = fixtures::labels(BATCH, &dev).unwrap();
    let step = || {
        fixtures::plain_sgd_step(&m, &x, &y, 0.01).unwrap();
    };
    for _ in 0..3 {
        step();
    }
    let t = Instant::now();
    for _ in 0..steps {
        step();
    }
    (steps * BATCH) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    // As the runner and the step bench do.
    samlab_models::keep_freed_pages();
    // SAFETY: first thing in main, no other thread yet.
    unsafe { samlab_models::shorten_candle_spin() };
    // The decoded dataset is cached by the first run; time later ones.
    let data = tempfile::tempdir().unwrap();
    runner_epoch_seconds(data.path());
    let (mut epochs, mut bench) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        bench.push(bench_img_per_s(30));
        epochs.push(runner_epoch_seconds(data.path()));
    }
    let epoch = epochs.iter().copied().fold(f64::MAX, f64::min);
    let runner = IMAGES as f64 / epoch;
    let bench = bench.iter().copied().fold(0.0, f64::max);
    println!("ResNet-8, batch {BATCH}, CPU, f32 (best of 2 runs each)");
    println!("runner epoch:     {epoch:.3} s = {runner:.1} img/s");
    println!("step bench:       {bench:.1} img/s");
    println!("runner / bench:   {:.3} (goal >= 0.95)", runner / bench);
}
