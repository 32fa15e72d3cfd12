//! Image trees: `SPLIT/CLASS/*.{jpg,jpeg,png}` with the splits `train` and
//! `test`, as a folder or a `.tar` / `.tar.gz` archive (which may wrap the
//! tree in one top-level folder).
//!
//! The class index of a folder is its position among the class folders of
//! `train` in sorted order; `test` must have the same class folders. Images
//! are ordered by class, then by file name. Files whose names begin with `.`
//! are ignored; any other file must decode as an image of the same size as
//! the rest, or the whole read fails with an error that names it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::cifar_bin::for_each_tar_entry;
use crate::dataset::{Dataset, DatasetName, ImageShape, Split};
use crate::error::{Error, ErrorKind, IoContext, Result, member};

pub const SPLITS: [&str; 2] = ["train", "test"];

/// Encoded files of one split: class folder -> file name -> (location, bytes).
type RawSplit = BTreeMap<String, BTreeMap<String, (PathBuf, Vec<u8>)>>;

/// Reads an image tree from a folder.
pub fn read_folder(name: DatasetName, root: &Path) -> Result<Dataset> {
    let mut raw: BTreeMap<String, RawSplit> = BTreeMap::new();
    for split in SPLITS {
        let dir = root.join(split);
        if !dir.is_dir() {
            return Err(Error::missing(root, format!("split folder `{split}/`")));
        }
        let classes = raw.entry(split.to_string()).or_default();
        for class in sorted_dir(&dir)? {
            let class_dir = dir.join(&class);
            if class.starts_with('.') {
                continue;
            }
            if !class_dir.is_dir() {
                return Err(Error::at(
                    &class_dir,
                    ErrorKind::UnknownFormat {
                        detail: "expected only class folders in a split folder".into(),
                    },
                ));
            }
            let files = classes.entry(class.clone()).or_default();
            for file in sorted_dir(&class_dir)? {
                if file.starts_with('.') {
                    continue;
                }
                let path = class_dir.join(&file);
                let bytes = std::fs::read(&path).at(&path)?;
                files.insert(file, (path, bytes));
            }
        }
    }
    assemble(name, root, raw)
}

/// Reads an image tree from a `.tar` or `.tar.gz` archive.
pub fn read_archive(name: DatasetName, archive: &Path) -> Result<Dataset> {
    let mut raw: BTreeMap<String, RawSplit> = BTreeMap::new();
    let mut prefix: Option<String> = None;
    for_each_tar_entry(archive, |path, entry| {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| p.starts_with('.')) {
            return Ok(());
        }
        if parts.len() < 3 {
            return Err(Error::at(
                &member(archive, path),
                ErrorKind::UnknownFormat {
                    detail: "expected files at SPLIT/CLASS/FILE".into(),
                },
            ));
        }
        let n = parts.len();
        let here = parts[..n - 3].join("/");
        match &prefix {
            None => prefix = Some(here),
            Some(p) if *p != here => {
                return Err(Error::at(
                    &member(archive, path),
                    ErrorKind::UnknownFormat {
                        detail: format!("expected every file under `{p}/SPLIT/CLASS/`"),
                    },
                ));
            }
            Some(_) => {}
        }
        let (split, class, file) = (parts[n - 3], parts[n - 2], parts[n - 1]);
        if !SPLITS.contains(&split) {
            return Err(Error::at(
                &member(archive, path),
                ErrorKind::UnknownFormat {
                    detail: format!("split folder `{split}` is not one of {SPLITS:?}"),
                },
            ));
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&member(archive, path), e))?;
        raw.entry(split.to_string())
            .or_default()
            .entry(class.to_string())
            .or_default()
            .insert(file.to_string(), (member(archive, path), bytes));
        Ok(())
    })?;
    for split in SPLITS {
        if !raw.contains_key(split) {
            return Err(Error::missing(archive, format!("split folder `{split}/`")));
        }
    }
    assemble(name, archive, raw)
}

fn sorted_dir(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn assemble(
    name: DatasetName,
    root: &Path,
    mut raw: BTreeMap<String, RawSplit>,
) -> Result<Dataset> {
    let train_raw = raw.remove("train").unwrap_or_default();
    let test_raw = raw.remove("test").unwrap_or_default();
    let classes: Vec<String> = train_raw.keys().cloned().collect();
    let test_classes: Vec<String> = test_raw.keys().cloned().collect();
    if classes != test_classes {
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter().filter(|c| !b.contains(c)).cloned().collect()
        };
        return Err(Error::at(
            root,
            ErrorKind::ClassMismatch {
                detail: format!(
                    "only in train/: {:?}; only in test/: {:?}",
                    only(&classes, &test_classes),
                    only(&test_classes, &classes)
                ),
            },
        ));
    }
    if classes.len() != name.num_classes() {
        return Err(Error::at(
            root,
            ErrorKind::WrongDataset {
                detail: format!(
                    "{name} has {} classes, but this image tree has {} class folders: {:?}",
                    name.num_classes(),
                    classes.len(),
                    classes
                ),
            },
        ));
    }
    let train = decode_split(root, "train", &train_raw)?;
    let test = decode_split(root, "test", &test_raw)?;
    if train.shape != test.shape {
        return Err(Error::at(
            root,
            ErrorKind::WrongImageShape {
                expected: train.shape.to_string(),
                found: format!("{} in test/", test.shape),
            },
        ));
    }
    Ok(Dataset::new(name, classes, train, test))
}

fn decode_split(root: &Path, split: &str, raw: &RawSplit) -> Result<Split> {
    let mut items: Vec<(u16, &PathBuf, &[u8])> = Vec::new();
    for (label, files) in raw.values().enumerate() {
        for (path, bytes) in files.values() {
            items.push((label as u16, path, bytes));
        }
    }
    if items.is_empty() {
        return Err(Error::missing(root, format!("images in `{split}/`")));
    }
    let decoded: Vec<(ImageShape, Vec<u8>)> = items
        .par_iter()
        .map(|(_, path, bytes)| decode_chw(path, bytes))
        .collect::<Result<_>>()?;
    let shape = decoded[0].0;
    let mut images = Vec::with_capacity(items.len() * shape.len());
    for ((_, path, _), (s, pixels)) in items.iter().zip(&decoded) {
        if *s != shape {
            return Err(Error::at(
                path,
                ErrorKind::WrongImageShape {
                    expected: shape.to_string(),
                    found: s.to_string(),
                },
            ));
        }
        images.extend_from_slice(pixels);
    }
    Ok(Split {
        shape,
        images,
        labels: items.iter().map(|(l, _, _)| *l).collect(),
    })
}

/// Decodes one encoded image to RGB, channel-major.
fn decode_chw(path: &Path, bytes: &[u8]) -> Result<(ImageShape, Vec<u8>)> {
    let img = image::load_from_memory(bytes).map_err(|e| {
        Error::at(
            path,
            ErrorKind::BadImage {
                reason: e.to_string(),
            },
        )
    })?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let plane = w * h;
    let mut chw = vec![0u8; 3 * plane];
    for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
        chw[i] = px[0];
        chw[plane + i] = px[1];
        chw[2 * plane + i] = px[2];
    }
    let shape = ImageShape {
        channels: 3,
        height: h,
        width: w,
    };
    Ok((shape, chw))
}
