//! Every kind of bad input gives a typed error that names the file.

mod common;

use common::*;
use samlab_data::*;

fn decode_path(name: DatasetName, path: &std::path::Path) -> Error {
    let source = match Source::detect(path) {
        Ok(s) => s,
        Err(e) => return e,
    };
    decode(name, &source, Cifar100Labels::Fine).expect_err("bad input must fail")
}

#[test]
fn truncated_binary_file_names_the_file_and_the_expected_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar10_folder(tmp.path());
    let f = dir.join("data_batch_3.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 1000]).unwrap();
    let err = decode_path(DatasetName::Cifar10, &dir);
    assert!(
        matches!(
            err.kind,
            ErrorKind::WrongSize {
                found_bytes: 30_729_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.location.ends_with("data_batch_3.bin"), "{err}");
    assert!(
        err.to_string()
            .contains("expected 30730000 bytes (10000 records of 3073 bytes)"),
        "{err}"
    );

    // The same inside an archive names the member.
    let archive = tmp.path().join("c.tar.gz");
    pack(&dir, &archive);
    let err = decode_path(DatasetName::Cifar10, &archive);
    assert!(
        err.location
            .ends_with("c.tar.gz:cifar-10-batches-bin/data_batch_3.bin"),
        "{err}"
    );
}

#[test]
fn oversized_and_missing_binary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar100_folder(tmp.path());
    let mut test = std::fs::read(dir.join("test.bin")).unwrap();
    test.extend_from_slice(&[0u8; 3074]);
    std::fs::write(dir.join("test.bin"), &test).unwrap();
    let err = decode_path(DatasetName::Cifar100, &dir);
    assert!(
        matches!(
            err.kind,
            ErrorKind::WrongSize {
                records: 10_000,
                record_bytes: 3074,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.location.ends_with("test.bin"));

    std::fs::remove_file(dir.join("test.bin")).unwrap();
    let err = decode_path(DatasetName::Cifar100, &dir);
    assert!(
        matches!(&err.kind, ErrorKind::Missing { what } if what == "test.bin"),
        "{err}"
    );
}

#[test]
fn label_out_of_range() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar10_folder(tmp.path());
    let f = dir.join("test_batch.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[3073 * 4] = 10; // record 4's label
    std::fs::write(&f, &bytes).unwrap();
    let err = decode_path(DatasetName::Cifar10, &dir);
    assert!(
        matches!(
            err.kind,
            ErrorKind::LabelOutOfRange {
                record: 4,
                label: 10,
                classes: 10
            }
        ),
        "{err}"
    );
    assert!(err.location.ends_with("test_batch.bin"));
}

#[test]
fn wrong_dataset_for_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar100_folder(tmp.path());
    let err = decode_path(DatasetName::Cifar10, &dir);
    assert!(matches!(err.kind, ErrorKind::WrongDataset { .. }), "{err}");
    assert!(err.to_string().contains("not cifar10"), "{err}");
}

#[test]
fn corrupt_and_non_image_files_in_a_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    write_tree(&root, &TEN, 2, 1);
    let bad = root.join("train/dog/0001.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    let err = decode_path(DatasetName::Cifar10, &root);
    assert!(matches!(err.kind, ErrorKind::BadImage { .. }), "{err}");
    assert!(err.location.ends_with("train/dog/0001.png"), "{err}");

    std::fs::write(&bad, &bytes).unwrap();
    std::fs::write(root.join("test/ship/notes.txt"), b"not an image").unwrap();
    let err = decode_path(DatasetName::Cifar10, &root);
    assert!(matches!(err.kind, ErrorKind::BadImage { .. }), "{err}");
    assert!(err.location.ends_with("test/ship/notes.txt"), "{err}");

    // Inside an archive the member is named.
    let archive = tmp.path().join("tree.tar.gz");
    pack(&root, &archive);
    let err = decode_path(DatasetName::Cifar10, &archive);
    assert!(
        err.location
            .ends_with("tree.tar.gz:tree/test/ship/notes.txt"),
        "{err}"
    );
}

#[test]
fn image_of_the_wrong_size() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    write_tree(&root, &TEN, 2, 1);
    tree_pixels(0, 0, 28, 32)
        .save(root.join("train/frog/0001.png"))
        .unwrap();
    let err = decode_path(DatasetName::Cifar10, &root);
    assert!(
        matches!(&err.kind, ErrorKind::WrongImageShape { expected, found }
        if expected == "3x32x32" && found == "3x32x28"),
        "{err}"
    );
    assert!(err.location.ends_with("train/frog/0001.png"), "{err}");
}

#[test]
fn missing_split_and_class_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    write_tree(&root, &TEN, 1, 1);
    std::fs::remove_dir_all(root.join("test/horse")).unwrap();
    let err = decode_path(DatasetName::Cifar10, &root);
    assert!(matches!(err.kind, ErrorKind::ClassMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("only in train/: [\"horse\"]"),
        "{err}"
    );

    std::fs::remove_dir_all(root.join("test")).unwrap();
    let err = decode_path(DatasetName::Cifar10, &root);
    assert!(
        matches!(&err.kind, ErrorKind::Missing { what } if what.contains("test/")),
        "{err}"
    );

    // An archive without a test split.
    let archive = tmp.path().join("t.tar.gz");
    pack(&root, &archive);
    let err = decode_path(DatasetName::Cifar10, &archive);
    assert!(
        matches!(&err.kind, ErrorKind::Missing { what } if what.contains("test/")),
        "{err}"
    );
}

#[test]
fn tree_with_the_wrong_number_of_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    write_tree(&root, &TEN[..7], 1, 1);
    let err = decode_path(DatasetName::Cifar10, &root);
    assert!(matches!(err.kind, ErrorKind::WrongDataset { .. }), "{err}");
    assert!(err.to_string().contains("7 class folders"), "{err}");
}

#[test]
fn unreadable_and_unrecognised_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = Source::detect(&missing).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Io(_)), "{err}");
    assert!(err.location.ends_with("nope"));

    let junk = tmp.path().join("junk.tar.gz");
    std::fs::write(&junk, b"\x1f\x8bthis is not gzip at all").unwrap();
    let err = Source::detect(&junk).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::UnknownFormat { .. }), "{err}");
    assert!(err.location.ends_with("junk.tar.gz"));

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = Source::detect(&empty).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("cifar-10-batches-bin"), "{err}");
}
