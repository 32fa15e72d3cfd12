//! The official CIFAR binary distributions.
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin`..`data_batch_5.bin`
//! and `test_batch.bin`, 10,000 records each of 1 label byte + 3,072 pixel
//! bytes (R plane, G plane, B plane, each 32x32 row-major).
//!
//! CIFAR-100 (`cifar-100-binary/`): `train.bin` (50,000 records) and
//! `test.bin` (10,000), each record 1 coarse label byte, 1 fine label byte,
//! 3,072 pixel bytes.
//!
//! Both are read from the extracted folder or straight from the `.tar.gz`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::ops::ControlFlow;
use std::path::Path;

use crate::dataset::{
    CIFAR10_CLASSES, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES, Dataset, DatasetName,
    ImageShape, Split,
};
use crate::error::{Error, ErrorKind, IoContext, Result, member};

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR-100 label a record's sample gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Cifar100Labels {
    /// The 100 fine classes (the thesis' setting).
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

/// One file of a binary distribution and what it must hold.
struct Part {
    file: &'static str,
    records: usize,
    train: bool,
}

/// The folder inside the official archive and the files inside it.
struct Layout {
    folder: &'static str,
    label_bytes: usize,
    parts: &'static [Part],
}

const CIFAR10_LAYOUT: Layout = Layout {
    folder: "cifar-10-batches-bin",
    label_bytes: 1,
    parts: &[
        Part {
            file: "data_batch_1.bin",
            records: 10_000,
            train: true,
        },
        Part {
            file: "data_batch_2.bin",
            records: 10_000,
            train: true,
        },
        Part {
            file: "data_batch_3.bin",
            records: 10_000,
            train: true,
        },
        Part {
            file: "data_batch_4.bin",
            records: 10_000,
            train: true,
        },
        Part {
            file: "data_batch_5.bin",
            records: 10_000,
            train: true,
        },
        Part {
            file: "test_batch.bin",
            records: 10_000,
            train: false,
        },
    ],
};

const CIFAR100_LAYOUT: Layout = Layout {
    folder: "cifar-100-binary",
    label_bytes: 2,
    parts: &[
        Part {
            file: "train.bin",
            records: 50_000,
            train: true,
        },
        Part {
            file: "test.bin",
            records: 10_000,
            train: false,
        },
    ],
};

fn layout(name: DatasetName) -> &'static Layout {
    match name {
        DatasetName::Cifar10 => &CIFAR10_LAYOUT,
        DatasetName::Cifar100 => &CIFAR100_LAYOUT,
    }
}

/// The folder name of the official distribution (`cifar-10-batches-bin`, `cifar-100-binary`).
pub fn folder_name(name: DatasetName) -> &'static str {
    layout(name).folder
}

/// The file names every official distribution of `name` holds.
pub fn file_names(name: DatasetName) -> Vec<&'static str> {
    layout(name).parts.iter().map(|p| p.file).collect()
}

/// Parses the records of one binary file into `split`.
///
/// `location` names the file in errors; `records` is how many it must hold.
pub fn parse_records(
    location: &Path,
    bytes: &[u8],
    label_bytes: usize,
    label_index: usize,
    num_classes: usize,
    records: usize,
    split: &mut Split,
) -> Result<()> {
    let record_bytes = label_bytes + PIXELS;
    let expected = (records * record_bytes) as u64;
    if bytes.len() as u64 != expected {
        return Err(Error::at(
            location,
            ErrorKind::WrongSize {
                expected_bytes: expected,
                records,
                record_bytes,
                found_bytes: bytes.len() as u64,
            },
        ));
    }
    split.images.reserve(records * PIXELS);
    split.labels.reserve(records);
    for (i, rec) in bytes.chunks_exact(record_bytes).enumerate() {
        let label = rec[label_index] as u16;
        if label as usize >= num_classes {
            return Err(Error::at(
                location,
                ErrorKind::LabelOutOfRange {
                    record: i,
                    label,
                    classes: num_classes,
                },
            ));
        }
        split.labels.push(label);
        split.images.extend_from_slice(&rec[label_bytes..]);
    }
    Ok(())
}

fn classes_of(name: DatasetName, labels: Cifar100Labels) -> Vec<String> {
    let names: &[&str] = match (name, labels) {
        (DatasetName::Cifar10, _) => &CIFAR10_CLASSES,
        (DatasetName::Cifar100, Cifar100Labels::Fine) => &CIFAR100_FINE_CLASSES,
        (DatasetName::Cifar100, Cifar100Labels::Coarse) => &CIFAR100_COARSE_CLASSES,
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// Builds the dataset from the raw bytes of each file (keyed by file name).
fn assemble(
    name: DatasetName,
    labels: Cifar100Labels,
    root: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    describe: impl Fn(&str) -> std::path::PathBuf,
) -> Result<Dataset> {
    let layout = layout(name);
    let classes = classes_of(name, labels);
    // CIFAR-100 records are (coarse, fine, pixels).
    let label_index = match (name, labels) {
        (DatasetName::Cifar100, Cifar100Labels::Fine) => 1,
        _ => 0,
    };
    let empty = || Split {
        shape: ImageShape::CIFAR,
        images: Vec::new(),
        labels: Vec::new(),
    };
    let (mut train, mut test) = (empty(), empty());
    for part in layout.parts {
        let bytes = files
            .get(part.file)
            .ok_or_else(|| Error::missing(root, format!("{}/{}", layout.folder, part.file)))?;
        let split = if part.train { &mut train } else { &mut test };
        parse_records(
            &describe(part.file),
            bytes,
            layout.label_bytes,
            label_index,
            classes.len(),
            part.records,
            split,
        )?;
    }
    Ok(Dataset::new(name, classes, train, test))
}

/// Reads an extracted distribution: `dir` is the `cifar-10-batches-bin` /
/// `cifar-100-binary` folder itself.
pub fn read_folder(name: DatasetName, labels: Cifar100Labels, dir: &Path) -> Result<Dataset> {
    let mut files = BTreeMap::new();
    for part in layout(name).parts {
        let path = dir.join(part.file);
        if !path.is_file() {
            return Err(Error::missing(dir, part.file));
        }
        files.insert(part.file.to_string(), std::fs::read(&path).at(&path)?);
    }
    assemble(name, labels, dir, &files, |f| dir.join(f))
}

/// Reads the official archive (`cifar-10-binary.tar.gz`, `cifar-100-binary.tar.gz`,
/// or the same as a plain `.tar`) without extracting it.
pub fn read_archive(name: DatasetName, labels: Cifar100Labels, archive: &Path) -> Result<Dataset> {
    let layout = layout(name);
    let wanted: Vec<&str> = layout.parts.iter().map(|p| p.file).collect();
    let mut files = BTreeMap::new();
    for_each_tar_entry(archive, |path, entry| {
        let Some((dir, file)) = path.rsplit_once('/') else {
            return Ok(());
        };
        let dir = dir.rsplit('/').next().unwrap_or(dir);
        if dir == layout.folder && wanted.contains(&file) {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io(&member(archive, path), e))?;
            files.insert(file.to_string(), bytes);
        }
        Ok(())
    })?;
    assemble(name, labels, archive, &files, |f| {
        member(archive, &format!("{}/{}", layout.folder, f))
    })
}

/// Opens `.tar`, `.tar.gz` or `.tgz` and calls `f` on each regular file with
/// its path inside the archive.
pub(crate) fn for_each_tar_entry(
    archive: &Path,
    mut f: impl FnMut(&str, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    walk_tar(archive, |path, entry| {
        f(path, entry).map(|()| ControlFlow::Continue(()))
    })
}

/// As [`for_each_tar_entry`], but `f` may stop the walk early.
pub(crate) fn walk_tar(
    archive: &Path,
    mut f: impl FnMut(&str, &mut dyn Read) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let file = File::open(archive).at(archive)?;
    let reader: Box<dyn Read> = if is_gzip(archive)? {
        Box::new(flate2::read::GzDecoder::new(BufReader::with_capacity(
            1 << 20,
            file,
        )))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, file))
    };
    let mut tar = tar::Archive::new(reader);
    let entries = tar.entries().map_err(|e| bad_archive(archive, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad_archive(archive, e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|e| bad_archive(archive, e))?;
        let path = path.to_string_lossy().trim_start_matches("./").to_string();
        if f(&path, &mut entry)?.is_break() {
            break;
        }
    }
    Ok(())
}

fn bad_archive(archive: &Path, e: std::io::Error) -> Error {
    Error::at(
        archive,
        ErrorKind::UnknownFormat {
            detail: format!("unreadable tar archive ({e})"),
        },
    )
}

/// Whether a file starts with the gzip magic bytes.
pub(crate) fn is_gzip(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    let mut f = File::open(path).at(path)?;
    let n = f.read(&mut magic).at(path)?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}
