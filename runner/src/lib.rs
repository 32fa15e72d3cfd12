//! The study runner behind the `runner` binary: RON studies resolved into a
//! graph of content-hashed stages, a checkpoint cache shared by every study,
//! shared training prefixes, exact resume, and the results folder.
//!
//! - [`study`]: the file format, composition and grids.
//! - [`stages`]: the stage kinds behind one trait, one module each.
//! - [`key`]: every key document, stage and prefix (one table).
//! - [`plan`]: keys, cache states and costs before anything runs, and why
//!   a stage is not cached.
//! - [`cache`]: entries, prefixes, rolling checkpoints, locks, resume
//!   points, status and gc.
//! - [`exec`]: runs a plan; [`results`]: writes what it found, with
//!   [`compare`]'s tables and [`claims`]' verdicts.
//! - [`options`]: the run's command-line options, and a Slurm job's;
//!   [`commands`]: what each command does.
//!
//! This crate reads study files and the cache; the binary adds only the
//! command line.

pub mod cache;
pub mod chart;
pub mod check;
pub mod claims;
pub mod commands;
pub mod compare;
pub mod device;
mod error;
pub mod exec;
pub mod interrupt;
pub mod key;
pub mod options;
pub mod plan;
pub mod plots;
pub mod progress;
pub mod rates;
pub mod results;
pub mod slurm;
pub mod stages;
pub mod stats;
pub mod study;
pub mod thesis;

pub use error::{Error, ErrorKind, Invalid, Result};
