//! The crate's one error type: what went wrong ([`ErrorKind`]) and where (a path).

use std::fmt;
use std::path::{Path, PathBuf};

/// An error of the data crate: the file or folder it concerns, and what went wrong.
#[derive(Debug)]
pub struct Error {
    /// The file, folder, archive member or URL the error is about.
    pub location: String,
    /// What went wrong there.
    pub kind: ErrorKind,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The path could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A CIFAR binary file whose size is not what the format says.
    #[error(
        "expected {expected_bytes} bytes ({records} records of {record_bytes} bytes), found {found_bytes} bytes"
    )]
    WrongSize {
        expected_bytes: u64,
        records: usize,
        record_bytes: usize,
        found_bytes: u64,
    },
    /// A file or folder the format requires is absent.
    #[error("missing {what}")]
    Missing { what: String },
    /// A label outside the dataset's class range.
    #[error("record {record}: label {label} is out of range (the dataset has {classes} classes)")]
    LabelOutOfRange {
        record: usize,
        label: u16,
        classes: usize,
    },
    /// A file in an image tree that is not a decodable image.
    #[error("not a readable image: {reason}")]
    BadImage { reason: String },
    /// An image whose size differs from the dataset's.
    #[error("image is {found}, expected {expected}")]
    WrongImageShape { expected: String, found: String },
    /// The train and test splits of an image tree name different classes.
    #[error("class folders differ between splits: {detail}")]
    ClassMismatch { detail: String },
    /// A path that is none of the formats samlab reads.
    #[error("not a recognised dataset: {detail}")]
    UnknownFormat { detail: String },
    /// A dataset source that does not fit the dataset asked for.
    #[error("{detail}")]
    WrongDataset { detail: String },
    /// A downloaded or cached file whose checksum is wrong.
    #[error("checksum mismatch: expected {algorithm} {expected}, found {found}")]
    ChecksumMismatch {
        algorithm: &'static str,
        expected: String,
        found: String,
    },
    /// A download that failed.
    #[error("download failed: {reason}")]
    Download { reason: String },
    /// A decoded-cache file that is damaged.
    #[error("damaged decoded cache: {reason}")]
    CorruptCache { reason: String },
    /// A pipeline setting that cannot work (zero batch size, too few images per class...).
    #[error("invalid setting: {detail}")]
    InvalidConfig { detail: String },
}

impl Error {
    pub fn new(location: impl Into<String>, kind: ErrorKind) -> Self {
        Error {
            location: location.into(),
            kind,
        }
    }

    pub fn at(path: &Path, kind: ErrorKind) -> Self {
        Error::new(path.display().to_string(), kind)
    }

    pub(crate) fn io(path: &Path, err: std::io::Error) -> Self {
        Error::at(path, ErrorKind::Io(err))
    }

    pub(crate) fn missing(path: &Path, what: impl Into<String>) -> Self {
        Error::at(path, ErrorKind::Missing { what: what.into() })
    }

    pub(crate) fn config(detail: impl Into<String>) -> Self {
        Error::new(
            "pipeline",
            ErrorKind::InvalidConfig {
                detail: detail.into(),
            },
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a path to `std::io` results.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

/// The path as a display string, for archive members: `archive.tar.gz:member`.
pub(crate) fn member(archive: &Path, member: &str) -> PathBuf {
    PathBuf::from(format!("{}:{}", archive.display(), member))
}
