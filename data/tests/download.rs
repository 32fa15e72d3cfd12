//! Download against an HTTP server on 127.0.0.1 serving a generated archive.

mod common;

use common::*;
use samlab_data::*;

/// Serves a small generated archive; returns the server, the bytes and a
/// description with the archive's real MD5 (or `md5` when given).
fn serve_archive(mode: Serve, md5: Option<&str>) -> (TestServer, Vec<u8>, Remote) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    write_tree(&root, &TEN, 2, 1);
    let archive = tmp.path().join("a.tar.gz");
    pack(&root, &archive);
    let bytes = std::fs::read(&archive).unwrap();
    let server = serve(bytes.clone(), mode);
    let remote = Remote {
        url: format!("{}/cifar-10-binary.tar.gz", server.url),
        file_name: "cifar-10-binary.tar.gz".into(),
        md5: md5
            .map(str::to_string)
            .unwrap_or_else(|| md5_hex(&archive).unwrap()),
        size: Some(bytes.len() as u64),
    };
    (server, bytes, remote)
}

#[test]
fn download_verifies_and_then_loads() {
    let (server, bytes, remote) = serve_archive(Serve::Ranges, None);
    let dir = tempfile::tempdir().unwrap();
    let path = download(&remote, dir.path(), false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(!dir.path().join("cifar-10-binary.tar.gz.part").exists());
    // A second call finds the verified file and asks the server nothing.
    download(&remote, dir.path(), false).unwrap();
    assert_eq!(server.ranges.lock().unwrap().len(), 1);
    // And the file is usable.
    let src = Source::detect(&path).unwrap();
    let ds = decode(DatasetName::Cifar10, &src, Cifar100Labels::Fine).unwrap();
    assert_eq!(ds.train.len(), 20);
}

#[test]
fn locate_downloads_into_the_data_dir() {
    let (server, _bytes, remote) = serve_archive(Serve::Ranges, None);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DataConfig::new(dir.path());
    cfg.base_url = server.url.clone();
    // The official md5 does not match the generated archive: refused, nothing kept.
    let err = locate(DatasetName::Cifar10, &cfg).unwrap_err();
    assert!(
        matches!(
            err.kind,
            ErrorKind::Download { .. } | ErrorKind::ChecksumMismatch { .. }
        ),
        "{err}"
    );
    assert!(!dir.path().join("cifar-10-binary.tar.gz").exists());
    // With the right description it works.
    download(&remote, dir.path(), false).unwrap();
    let src = locate(DatasetName::Cifar10, &cfg).unwrap();
    assert!(src.archive);
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let (server, bytes, remote) = serve_archive(Serve::BreakFirstAfter(1000), None);
    let dir = tempfile::tempdir().unwrap();
    let err = download(&remote, dir.path(), false).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Download { .. }), "{err}");
    assert!(err.to_string().contains("resume"), "{err}");
    let part = dir.path().join("cifar-10-binary.tar.gz.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 1000);
    assert!(!dir.path().join("cifar-10-binary.tar.gz").exists());

    let path = download(&remote, dir.path(), false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(*server.ranges.lock().unwrap(), vec![None, Some(1000)]);
}

#[test]
fn server_without_ranges_restarts_from_zero() {
    let (server, bytes, remote) = serve_archive(Serve::NoRanges, None);
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("cifar-10-binary.tar.gz.part");
    std::fs::write(&part, &bytes[..500]).unwrap();
    let path = download(&remote, dir.path(), false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(*server.ranges.lock().unwrap(), vec![Some(500)]);
}

#[test]
fn complete_part_file_is_verified_without_refetching() {
    let (server, bytes, remote) = serve_archive(Serve::Ranges, None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cifar-10-binary.tar.gz.part"), &bytes).unwrap();
    let path = download(&remote, dir.path(), false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(
        *server.ranges.lock().unwrap(),
        vec![Some(bytes.len() as u64)]
    );
}

#[test]
fn checksum_mismatch_keeps_nothing() {
    let wrong = "00000000000000000000000000000000";
    let (_server, _bytes, remote) = serve_archive(Serve::Ranges, Some(wrong));
    let dir = tempfile::tempdir().unwrap();
    let err = download(&remote, dir.path(), false).unwrap_err();
    match &err.kind {
        ErrorKind::ChecksumMismatch {
            algorithm,
            expected,
            found,
        } => {
            assert_eq!(*algorithm, "MD5");
            assert_eq!(expected, wrong);
            assert_ne!(found, wrong);
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert!(err.location.starts_with("http://127.0.0.1"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file may be left behind"
    );
}

#[test]
fn http_error_is_reported() {
    let (_server, _bytes, remote) = serve_archive(Serve::NotFound, None);
    let dir = tempfile::tempdir().unwrap();
    let err = download(&remote, dir.path(), false).unwrap_err();
    assert!(err.to_string().contains("HTTP status 404"), "{err}");
    assert!(!dir.path().join("cifar-10-binary.tar.gz").exists());
}

#[test]
fn official_remotes_have_the_published_checksums() {
    let r = official_remote(DatasetName::Cifar10, OFFICIAL_BASE_URL);
    assert_eq!(
        r.url,
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    );
    assert_eq!(r.md5, "c32a1d4ab5d03f1284b67883e8d87530");
    let r = official_remote(DatasetName::Cifar100, "http://mirror/");
    assert_eq!(r.url, "http://mirror/cifar-100-binary.tar.gz");
    assert_eq!(r.md5, "03b5dce01913d631647c71ecec9e9cb8");
}
