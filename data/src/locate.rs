//! Finding a dataset: an explicit path, the data directory, or a download.

use std::path::{Path, PathBuf};

use crate::cifar_bin;
use crate::dataset::DatasetName;
use crate::download::{self, official_remote};
use crate::error::{Error, ErrorKind, Result};
use crate::source::Source;

/// Where to look for a dataset.
#[derive(Clone, Debug)]
pub struct DataConfig {
    /// Holds downloads, source digests and the decoded cache.
    pub data_dir: PathBuf,
    /// An explicit source (folder or archive in any supported format); when
    /// set, nothing else is searched.
    pub source: Option<PathBuf>,
    /// Whether a missing official archive may be downloaded.
    pub download: bool,
    /// Base URL of the official archives (or a mirror with the same names).
    pub base_url: String,
    /// Whether to draw a progress bar while downloading.
    pub progress: bool,
}

impl DataConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        DataConfig {
            data_dir: data_dir.into(),
            source: None,
            download: true,
            base_url: download::OFFICIAL_BASE_URL.to_string(),
            progress: false,
        }
    }
}

/// The default data directory: `samlab/data` under the user's cache
/// directory (`~/.cache` on Linux), or `.samlab-data` when there is none.
pub fn default_data_dir() -> PathBuf {
    dirs::cache_dir()
        .map(|d| d.join("samlab").join("data"))
        .unwrap_or_else(|| PathBuf::from(".samlab-data"))
}

/// Finds dataset `name`, in this order: `cfg.source`; the official folder
/// or archive in `cfg.data_dir`; a download into `cfg.data_dir`.
pub fn locate(name: DatasetName, cfg: &DataConfig) -> Result<Source> {
    if let Some(path) = &cfg.source {
        return Source::detect(path);
    }
    let remote = official_remote(name, &cfg.base_url);
    let candidates = [
        cfg.data_dir.join(cifar_bin::folder_name(name)),
        cfg.data_dir.join(&remote.file_name),
    ];
    for c in &candidates {
        if c.exists() {
            return Source::detect(c);
        }
    }
    if !cfg.download {
        return Err(not_found(name, &cfg.data_dir, &candidates));
    }
    let archive = download::download(&remote, &cfg.data_dir, cfg.progress)?;
    Source::detect(&archive)
}

fn not_found(name: DatasetName, dir: &Path, candidates: &[PathBuf]) -> Error {
    Error::at(
        dir,
        ErrorKind::Missing {
            what: format!(
                "{name}: looked for {} and downloads are off; name a source explicitly \
                 (official folder or archive, or an image tree) or allow the download",
                candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        },
    )
}
