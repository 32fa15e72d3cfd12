//! Data benchmark: `cargo bench -p samlab-data`.
//!
//! Prints, for `../shared/data/cifar10-jpeg.tar.gz` (or `$SAMLAB_SHARED_DIR/data/...`):
//! - cold load: source digest + JPEG decode + decoded-cache write, in a fresh data dir;
//! - warm load: the same call again, served by the decoded cache;
//! - one training epoch over the 50,000 train images (shuffle + crop/flip +
//!   normalise + batch 256, produced on the background thread), consumed
//!   as plain batches and as candle tensors.
//!
//! Goals from the foundation issue: epoch < 1 s, warm load < 0.5 s (2 cores).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use samlab_data::*;

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

fn summary(name: &str, runs: &[Duration], goal: Option<f64>) {
    let mut s: Vec<f64> = runs.iter().map(|d| d.as_secs_f64()).collect();
    s.sort_by(f64::total_cmp);
    let goal = goal
        .map(|g| format!("   (goal < {g} s)"))
        .unwrap_or_default();
    println!(
        "{name:<44} min {:>7.3} s   median {:>7.3} s   runs {}{goal}",
        s[0],
        s[s.len() / 2],
        s.len()
    );
}

fn main() {
    let shared = std::env::var_os("SAMLAB_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let archive = shared.join("data/cifar10-jpeg.tar.gz");
    let src = Source::detect(&archive).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "samlab-data benchmark on {} ({} threads)",
        archive.display(),
        rayon::current_num_threads()
    );

    let mut cold = Vec::new();
    let mut ds = None;
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let opts = LoadOptions {
            data_dir: dir.path().to_path_buf(),
            cifar100_labels: Default::default(),
        };
        let ((d, report), t) = time(|| load(DatasetName::Cifar10, &src, &opts).unwrap());
        assert!(!report.from_cache);
        cold.push(t);
        ds = Some(d);
    }
    summary("cold load (digest + decode 60k JPEGs + cache)", &cold, None);

    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        data_dir: dir.path().to_path_buf(),
        cifar100_labels: Default::default(),
    };
    load(DatasetName::Cifar10, &src, &opts).unwrap();
    let warm: Vec<Duration> = (0..5)
        .map(|_| {
            let ((_, r), t) = time(|| load(DatasetName::Cifar10, &src, &opts).unwrap());
            assert!(r.from_cache);
            t
        })
        .collect();
    summary("warm load (decoded cache)", &warm, Some(0.5));

    let ds = ds.unwrap();
    let loader = Loader::new(
        ds.train.clone(),
        None,
        PipelineConfig::train(256, ds.name.normalization(), 0),
    )
    .unwrap();
    let epochs: Vec<Duration> = (0..5)
        .map(|e| {
            let (n, t) = time(|| {
                let mut n = 0usize;
                for b in loader.epoch(e) {
                    n += b.labels.len();
                    std::hint::black_box(&b.images);
                }
                n
            });
            assert_eq!(n, 49_920);
            t
        })
        .collect();
    summary(
        "train epoch, batch 256 (Vec<f32> batches)",
        &epochs,
        Some(1.0),
    );
    let epochs: Vec<Duration> = (0..5)
        .map(|e| {
            time(|| {
                for b in loader.epoch(e) {
                    std::hint::black_box(b.to_tensors(&candle_core::Device::Cpu).unwrap());
                }
            })
            .1
        })
        .collect();
    summary(
        "train epoch, batch 256 (candle tensors)",
        &epochs,
        Some(1.0),
    );
}
