//! The real CIFAR-10 images in `../shared/data/cifar10-jpeg.tar.gz`.
//!
//! The archive is part of the test environment (CI has `../shared` beside
//! the clone): when it is missing this test fails, it never skips.
//! `SAMLAB_SHARED_DIR` points elsewhere when the folder lives elsewhere.

#[path = "../../tests/support/shared.rs"]
mod shared;

use samlab_data::*;

/// The archive's SHA-256 as published in `shared/data/README.md`.
const ARCHIVE_SHA256: &str = "fce16ab37917c13d8a9b35edcfa4b08a91ece148eb3dd3c31841a09fe35f276a";
/// The decoded content's fingerprint, recorded when this test was written:
/// it changes only if decoding (or the fingerprint's definition) changes.
const CONTENT_FINGERPRINT: &str =
    "f654ceae8b5964d5b4e9f5a2c0a07ca667491b113085ad748c822163135b0c61";

#[test]
fn shared_cifar10_jpeg_archive() {
    let path = shared::cifar10_jpeg_archive();
    let src = Source::detect(&path).unwrap();
    assert_eq!(src.format, SourceFormat::ImageTree);
    assert!(src.archive);
    let data = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        data_dir: data.path().to_path_buf(),
        cifar100_labels: Cifar100Labels::Fine,
    };
    let (ds, report) = load(DatasetName::Cifar10, &src, &opts).unwrap();
    assert_eq!(report.source_digest.to_hex().len(), 64);
    assert_eq!(sha256_hex(&path), ARCHIVE_SHA256);

    assert_eq!(ds.classes, CIFAR10_CLASSES.map(String::from).to_vec());
    assert_eq!(ds.shape(), ImageShape::CIFAR);
    assert_eq!(ds.train.len(), 50_000);
    assert_eq!(ds.test.len(), 10_000);
    assert_eq!(ds.train.class_counts(10), vec![5_000; 10]);
    assert_eq!(ds.test.class_counts(10), vec![1_000; 10]);
    // Real photographs: the mean pixel is near the published CIFAR-10 means.
    let mean = |c: usize| -> f64 {
        let s: u64 = (0..ds.train.len())
            .map(|i| {
                ds.train.image(i)[c * 1024..(c + 1) * 1024]
                    .iter()
                    .map(|&v| v as u64)
                    .sum::<u64>()
            })
            .sum();
        s as f64 / (ds.train.len() * 1024) as f64 / 255.0
    };
    for (c, want) in [0.4914, 0.4822, 0.4465].into_iter().enumerate() {
        assert!(
            (mean(c) - want).abs() < 0.01,
            "channel {c}: mean {}",
            mean(c)
        );
    }

    assert_eq!(ds.fingerprint, ds.compute_fingerprint());
    assert_eq!(ds.fingerprint.to_hex(), CONTENT_FINGERPRINT);
    let (again, r2) = load(DatasetName::Cifar10, &src, &opts).unwrap();
    assert!(r2.from_cache);
    assert_eq!(again.fingerprint, ds.fingerprint);
    assert_eq!(again.train, ds.train);
}

fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
