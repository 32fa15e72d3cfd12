//! Reading every supported format from generated files, and the decoded cache.

mod common;

use std::sync::OnceLock;

use common::*;
use samlab_data::*;

fn opts(dir: &std::path::Path) -> LoadOptions {
    LoadOptions {
        data_dir: dir.to_path_buf(),
        cifar100_labels: Cifar100Labels::Fine,
    }
}

/// One generated CIFAR-10 distribution (folder and archive) per test binary.
fn cifar10() -> &'static (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    static CELL: OnceLock<(tempfile::TempDir, std::path::PathBuf, std::path::PathBuf)> =
        OnceLock::new();
    CELL.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let folder = write_cifar10_folder(tmp.path());
        let archive = tmp.path().join("cifar-10-binary.tar.gz");
        pack(&folder, &archive);
        (tmp, folder, archive)
    })
}

#[test]
fn cifar10_folder_and_archive_read_the_same_data() {
    let (_t, folder, archive) = cifar10();
    let a = Source::detect(folder).unwrap();
    assert_eq!(a.format, SourceFormat::Cifar10Binary);
    assert!(!a.archive);
    let b = Source::detect(archive).unwrap();
    assert_eq!(b.format, SourceFormat::Cifar10Binary);
    assert!(b.archive);
    // The parent folder of cifar-10-batches-bin is recognised too.
    assert_eq!(
        Source::detect(folder.parent().unwrap()).unwrap().path,
        *folder
    );

    let da = decode(DatasetName::Cifar10, &a, Cifar100Labels::Fine).unwrap();
    let db = decode(DatasetName::Cifar10, &b, Cifar100Labels::Fine).unwrap();
    assert_eq!(da.train.len(), 50_000);
    assert_eq!(da.test.len(), 10_000);
    assert_eq!(da.classes, CIFAR10_CLASSES.map(String::from).to_vec());
    // Record 17 of data_batch_3 is train image 2*10000 + 17; test record 5 is test image 5.
    let i = 20_017;
    assert_eq!(da.train.labels[i], label(2, 17, 10) as u16);
    let expect: Vec<u8> = (0..PIXELS).map(|j| pixel(2, 17, j)).collect();
    assert_eq!(da.train.image(i), &expect[..]);
    assert_eq!(da.test.labels[5], label(5, 5, 10) as u16);
    assert_eq!(da.train, db.train);
    assert_eq!(da.test, db.test);
    assert_eq!(da.fingerprint, db.fingerprint);
    assert_eq!(da.fingerprint, da.compute_fingerprint());
}

#[test]
fn cifar100_fine_and_coarse_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = write_cifar100_folder(tmp.path());
    let archive = tmp.path().join("cifar-100-binary.tar");
    pack(&folder, &archive);
    for src in [&folder, &archive] {
        let s = Source::detect(src).unwrap();
        assert_eq!(s.format, SourceFormat::Cifar100Binary);
        let fine = decode(DatasetName::Cifar100, &s, Cifar100Labels::Fine).unwrap();
        let coarse = decode(DatasetName::Cifar100, &s, Cifar100Labels::Coarse).unwrap();
        assert_eq!((fine.train.len(), fine.test.len()), (50_000, 10_000));
        assert_eq!(fine.num_classes(), 100);
        assert_eq!(coarse.num_classes(), 20);
        assert_eq!(fine.classes[0], "apple");
        assert_eq!(coarse.classes[19], "vehicles_2");
        assert_eq!(fine.train.labels[123], label(0, 123, 100) as u16);
        assert_eq!(coarse.train.labels[123], label(0, 123, 20) as u16);
        assert_eq!(fine.train.images, coarse.train.images);
        assert_ne!(fine.fingerprint, coarse.fingerprint);
    }
}

#[test]
fn image_tree_folder_and_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    write_tree(&root, &TEN, 3, 2);
    std::fs::write(root.join("train/cat/.DS_Store"), b"ignored").unwrap();
    let archive = tmp.path().join("tree.tar.gz");
    pack(&root, &archive); // wrapped in a top-level folder `tree/`
    let flat = tmp.path().join("flat.tar.gz");
    pack_contents(&root, &flat); // no top-level folder

    let mut prints = Vec::new();
    for src in [&root, &archive, &flat] {
        let s = Source::detect(src).unwrap();
        assert_eq!(s.format, SourceFormat::ImageTree, "{src:?}");
        let ds = decode(DatasetName::Cifar10, &s, Cifar100Labels::Fine).unwrap();
        assert_eq!(ds.classes, TEN.map(String::from).to_vec());
        assert_eq!(ds.train.len(), 30);
        assert_eq!(ds.test.len(), 20);
        assert_eq!(ds.train.class_counts(10), vec![3; 10]);
        // Sorted by class then file: train image 3*4+1 is class 4 (deer), file 0001.
        assert_eq!(ds.train.labels[13], 4);
        let img = tree_pixels(4, 1, 32, 32);
        let px = ds.train.image(13);
        for (x, y, p) in [(0u32, 0u32, 0usize), (5, 9, 1), (31, 30, 2)] {
            assert_eq!(
                px[p * 1024 + y as usize * 32 + x as usize],
                img.get_pixel(x, y)[p]
            );
        }
        prints.push(ds.fingerprint);
    }
    assert!(prints.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn decoded_cache_is_used_and_gives_the_same_dataset() {
    let (_t, folder, _) = cifar10();
    let data = tempfile::tempdir().unwrap();
    let src = Source::detect(folder).unwrap();
    let (a, ra) = load(DatasetName::Cifar10, &src, &opts(data.path())).unwrap();
    assert!(!ra.from_cache);
    assert!(ra.cache_file.is_file());
    let (b, rb) = load(DatasetName::Cifar10, &src, &opts(data.path())).unwrap();
    assert!(rb.from_cache);
    assert_eq!(rb.repaired, None);
    assert_eq!(ra.source_digest, rb.source_digest);
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_eq!(a.train, b.train);
    assert_eq!(a.test, b.test);
    assert_eq!(a.classes, b.classes);
}

#[test]
fn damaged_decoded_cache_is_reported_and_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    write_tree(&root, &TEN, 2, 1);
    let src = Source::detect(&root).unwrap();
    let data = tmp.path().join("data");
    let (good, r) = load(DatasetName::Cifar10, &src, &opts(&data)).unwrap();

    // A flipped pixel byte: the CRC catches it.
    let mut bytes = std::fs::read(&r.cache_file).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0xff;
    std::fs::write(&r.cache_file, &bytes).unwrap();
    let (again, r2) = load(DatasetName::Cifar10, &src, &opts(&data)).unwrap();
    assert!(!r2.from_cache);
    assert!(
        r2.repaired.as_deref().unwrap().contains("CRC32"),
        "{:?}",
        r2.repaired
    );
    assert_eq!(again.train, good.train);

    // A truncated file: the size check catches it.
    let bytes = std::fs::read(&r.cache_file).unwrap();
    std::fs::write(&r.cache_file, &bytes[..bytes.len() / 2]).unwrap();
    let (_, r3) = load(DatasetName::Cifar10, &src, &opts(&data)).unwrap();
    assert!(
        r3.repaired.as_deref().unwrap().contains("bytes"),
        "{:?}",
        r3.repaired
    );
    let (_, r4) = load(DatasetName::Cifar10, &src, &opts(&data)).unwrap();
    assert!(r4.from_cache);
}

#[test]
fn source_digest_is_remembered_and_follows_the_content() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    write_tree(&root, &TEN, 1, 1);
    let data = tmp.path().join("data");
    let src = Source::detect(&root).unwrap();
    let d1 = source_digest(&src, &data).unwrap();
    assert_eq!(
        std::fs::read_dir(data.join("fingerprints"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(source_digest(&src, &data).unwrap(), d1);
    // Another image changes the digest (new file, so a new identity).
    tree_pixels(0, 9, 32, 32)
        .save(root.join("train/bird/0009.png"))
        .unwrap();
    assert_ne!(source_digest(&src, &data).unwrap(), d1);
}

#[test]
fn locate_prefers_explicit_then_data_dir_and_respects_no_download() {
    let (_t, folder, archive) = cifar10();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = DataConfig::new(data.path());
    cfg.download = false;
    let err = locate(DatasetName::Cifar10, &cfg).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Missing { .. }));
    assert!(err.to_string().contains("cifar-10-binary.tar.gz"), "{err}");

    std::fs::copy(archive, data.path().join("cifar-10-binary.tar.gz")).unwrap();
    let s = locate(DatasetName::Cifar10, &cfg).unwrap();
    assert!(s.archive);
    cfg.source = Some(folder.clone());
    let s = locate(DatasetName::Cifar10, &cfg).unwrap();
    assert_eq!(s.path, *folder);
}
