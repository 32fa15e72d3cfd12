//! Where the tests find `../shared` (the folder CI lays beside the clone).
//! Included by path from every test that needs it.

use std::path::PathBuf;

/// `shared/data/cifar10-jpeg.tar.gz`: `$SAMLAB_SHARED_DIR`, or the `shared`
/// folder beside the workspace. Fails the test, never skips it, when missing.
pub fn cifar10_jpeg_archive() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = std::env::var_os("SAMLAB_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("../shared"));
    let path = shared.join("data/cifar10-jpeg.tar.gz");
    assert!(
        path.is_file(),
        "{} is missing: the tests need the shared CIFAR-10 JPEG archive (set SAMLAB_SHARED_DIR)",
        path.display()
    );
    path
}
