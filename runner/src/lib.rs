//! The study runner behind the `runner` binary: RON studies resolved into a
//! graph of content-hashed stages, a checkpoint cache shared by every study,
//! shared training prefixes, exact resume, and the results folder.
//!
//! - [`study`]: the file format, composition and grids.
//! - [`stages`]: the stage kinds (Train, Evaluate), one module each.
//! - [`key`]: what goes into a stage's key (one table).
//! - [`plan`]: keys, cache states and costs before anything runs.
//! - [`cache`]: entries, prefixes, rolling checkpoints, locks.
//! - [`exec`]: runs a plan; [`results`]: writes what it found.
//!
//! This crate reads study files and the cache; the binary adds only the
//! command line.

pub mod cache;
pub mod check;
pub mod device;
mod error;
pub mod exec;
pub mod key;
pub mod plan;
pub mod plots;
pub mod progress;
pub mod results;
pub mod slurm;
pub mod stages;
pub mod study;

pub use error::{Error, ErrorKind, Result};
