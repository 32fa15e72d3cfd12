//! The runner library's typed errors.

use std::path::{Path, PathBuf};

/// An error of the study runner: what went wrong, and where.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct Error {
    pub kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The study file is not valid RON of the expected shape.
    #[error("{file}:{line}:{col}: {message}")]
    Syntax {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
    /// The study parses but says something impossible (unknown reference,
    /// cycle, missing field, bad value). `line` is the line of the stage or
    /// block it concerns, when known.
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Study {
        file: String,
        line: Option<usize>,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A cache file that cannot be read as what it should be.
    #[error("cache {}: {message}", path.display())]
    Cache { path: PathBuf, message: String },
    /// A stage failed while running.
    #[error("stage {stage}: {message}")]
    Stage { stage: String, message: String },
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Data(#[from] samlab_data::Error),
    #[error(transparent)]
    Model(#[from] samlab_models::Error),
    #[error(transparent)]
    Optim(#[from] samlab_optim::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl<E: Into<ErrorKind>> From<E> for Error {
    fn from(e: E) -> Self {
        Error { kind: e.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with the path it concerns.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| {
        ErrorKind::Io {
            path: path.to_path_buf(),
            source,
        }
        .into()
    }
}

pub(crate) fn cache_err(path: &Path, message: impl Into<String>) -> Error {
    ErrorKind::Cache {
        path: path.to_path_buf(),
        message: message.into(),
    }
    .into()
}

pub(crate) fn stage_err(stage: &str, message: impl Into<String>) -> Error {
    ErrorKind::Stage {
        stage: stage.to_string(),
        message: message.into(),
    }
    .into()
}
