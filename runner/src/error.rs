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
    /// A GPU rates file (`results/gpu/rates.csv`, `plan --rates`) with a
    /// malformed line.
    #[error("{}:{line}: {message}", path.display())]
    Rates {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A cache file that cannot be read as what it should be.
    #[error("cache {}: {message}", path.display())]
    Cache { path: PathBuf, message: String },
    /// A stage failed while running.
    #[error("stage {stage}: {message}")]
    Stage { stage: String, message: String },
    /// A training or escape step failed (a non-finite loss: the run
    /// diverged); the optimiser's error stays typed.
    #[error("stage {stage}: {source}")]
    Step {
        stage: String,
        #[source]
        source: Box<samlab_optim::Error>,
    },
    /// A run stopped on SIGTERM or SIGINT after saving what it had: run
    /// the same command again to resume (exit status
    /// [`crate::interrupt::EXIT_INTERRUPTED`]).
    #[error("stage {stage}: interrupted by {signal} {at}; run it again to resume")]
    Interrupted {
        stage: String,
        signal: crate::interrupt::Signal,
        /// Where it stopped (`after step 130 of epoch 4, checkpoint saved`).
        at: String,
    },
    #[error("device: {0}")]
    Device(String),
    /// A stage that failed in a run (what `runner STUDY --only STAGE`, a
    /// Slurm job, reports), kept typed.
    #[error("{0}")]
    Failed(std::sync::Arc<Error>),
    /// A command-line value that does not fit the study (an unknown stage
    /// in `--force`, say).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Data(#[from] samlab_data::Error),
    #[error(transparent)]
    Model(#[from] samlab_models::Error),
    #[error(transparent)]
    Optim(#[from] samlab_optim::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// What is wrong with a stage as written: found while resolving its
/// fields and linking it to the stages it names. The study adds the file,
/// the line and the stage's name.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// A field without a default is unset; `hint` says what to write.
    #[error("`{field}` is missing{hint}")]
    Missing {
        field: &'static str,
        hint: &'static str,
    },
    #[error("`{0}` must be at least 1")]
    NotPositive(&'static str),
    #[error("unknown grid field `{0}`")]
    UnknownGridField(String),
    /// A reference names a stage of the wrong kind.
    #[error("`{role}` must name a Train or Import stage, not {found}")]
    NotTrain {
        role: &'static str,
        found: &'static str,
    },
    /// A value outside what the field accepts; the message names both.
    #[error("{0}")]
    Value(String),
    #[error(transparent)]
    Optim(#[from] samlab_optim::Error),
    #[error(transparent)]
    Model(#[from] samlab_models::Error),
}

impl Error {
    /// Whether a run stopped on a signal, resumable.
    pub fn is_interrupted(&self) -> bool {
        match &self.kind {
            ErrorKind::Failed(inner) => inner.is_interrupted(),
            ErrorKind::Interrupted { .. } => true,
            _ => false,
        }
    }

    /// Whether a run failed because its loss became non-finite.
    pub fn is_divergence(&self) -> bool {
        if let ErrorKind::Failed(inner) = &self.kind {
            return inner.is_divergence();
        }
        matches!(
            &self.kind,
            ErrorKind::Step { source, .. }
                if matches!(source.kind, samlab_optim::ErrorKind::NonFinite { .. })
        ) || matches!(&self.kind, ErrorKind::Optim(e) if matches!(e.kind, samlab_optim::ErrorKind::NonFinite { .. }))
    }
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

/// A step of `stage` failed.
pub(crate) fn step_err(stage: &str) -> impl FnOnce(samlab_optim::Error) -> Error + '_ {
    move |source| {
        ErrorKind::Step {
            stage: stage.to_string(),
            source: Box::new(source),
        }
        .into()
    }
}

pub(crate) fn stage_err(stage: &str, message: impl Into<String>) -> Error {
    ErrorKind::Stage {
        stage: stage.to_string(),
        message: message.into(),
    }
    .into()
}

/// The choice nearest to `word` by edit distance, where it is near: at
/// most a third of the word's length away (a typo, not another name).
pub(crate) fn closest<'a>(word: &str, choices: &'a [String]) -> Option<&'a str> {
    choices
        .iter()
        .map(|c| (strsim::levenshtein(word, c), c.as_str()))
        .filter(|(d, _)| *d <= (word.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
