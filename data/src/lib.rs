//! CIFAR data for samlab: readers for the official CIFAR-10/100 binaries and
//! for image trees (folders or tar archives), download with checksum
//! verification, a content fingerprint per dataset, a decoded cache, and a
//! deterministic, prefetching input pipeline that yields f32 NCHW batches.
//!
//! This crate knows nothing about studies, RON or the runner's cache.
//!
//! ```no_run
//! use samlab_data::{DataConfig, DatasetName, LoadOptions, Loader, PipelineConfig, locate, load};
//! let cfg = DataConfig::new(samlab_data::default_data_dir());
//! let source = locate(DatasetName::Cifar10, &cfg)?;
//! let opts = LoadOptions { data_dir: cfg.data_dir.clone(), cifar100_labels: Default::default() };
//! let (ds, _report) = load(DatasetName::Cifar10, &source, &opts)?;
//! let train = Loader::new(ds.train.clone(), None,
//!     PipelineConfig::train(256, ds.name.normalization(), 0))?;
//! for batch in train.epoch(0) {
//!     let (_x, _y) = batch.to_tensors(&candle_core::Device::Cpu).unwrap();
//! }
//! # Ok::<(), samlab_data::Error>(())
//! ```

mod cifar_bin;
mod dataset;
mod device;
mod download;
mod error;
mod image_tree;
mod locate;
mod pipeline;
mod source;

pub use cifar_bin::{
    Cifar100Labels, file_names as cifar_file_names, folder_name as cifar_folder_name,
};
pub use dataset::{
    CIFAR10_CLASSES, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES, Dataset, DatasetName,
    Fingerprint, ImageShape, Normalization, Split,
};
pub use device::DeviceLoader;
pub use download::{OFFICIAL_BASE_URL, Remote, download, md5_hex, official_remote};
pub use error::{Error, ErrorKind, Result};
pub use locate::{DataConfig, default_data_dir, locate};
pub use pipeline::{
    Augment, Batch, EpochIter, LastBatch, Loader, PipelineConfig, Reshuffle, split_per_class,
    subset_per_class,
};
pub use source::{LoadOptions, LoadReport, Source, SourceFormat, decode, load, source_digest};
