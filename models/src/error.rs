use std::path::PathBuf;

/// An error of the models crate.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct Error {
    pub kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("unknown model `{name}`; valid choices: {choices}")]
    UnknownModel { name: String, choices: String },
    #[error("invalid model configuration: {0}")]
    BadConfig(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: checkpoint does not fit this model: {detail}")]
    CheckpointMismatch { path: PathBuf, detail: String },
    #[error("{path}: unreadable checkpoint: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error { kind: e.into() }
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error { kind }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
