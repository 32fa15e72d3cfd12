/// An error of the optimiser crate.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct Error {
    pub kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] samlab_models::Error),
    #[error("invalid optimiser setting: {0}")]
    BadConfig(String),
    #[error("{path}: optimiser state does not fit: {detail}")]
    StateMismatch { path: String, detail: String },
    #[error("non-finite loss {loss} at step {step}")]
    NonFinite { step: u64, loss: f64 },
}

impl<T: Into<ErrorKind>> From<T> for Error {
    fn from(e: T) -> Self {
        Error { kind: e.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn bad(msg: impl Into<String>) -> Error {
    ErrorKind::BadConfig(msg.into()).into()
}
