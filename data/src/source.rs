//! Where a dataset comes from, and loading it through the decoded cache.
//!
//! Loading a [`Source`] goes:
//! 1. **source digest**: SHA-256 over the source's files (relative path,
//!    length, bytes). Remembered in `DATA_DIR/fingerprints/`, keyed by the
//!    files' absolute paths, lengths and modification times, so it is
//!    computed once per copy of the data.
//! 2. **decoded cache**: `DATA_DIR/decoded/<key>.bin`, keyed by the source
//!    digest, the dataset name and the label choice. It holds the decoded u8
//!    images and labels plus the dataset's content fingerprint, with a CRC32
//!    over the payload. It is written to a temporary file and renamed into
//!    place, so a half-written file is never found under its name; a file
//!    that fails its checks is reported, deleted and rebuilt.
//! 3. otherwise the source is decoded and the cache written.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::cifar_bin::{self, Cifar100Labels};
use crate::dataset::{Dataset, DatasetName, Fingerprint, ImageShape, Split};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::image_tree;

/// The kinds of files samlab reads a dataset from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// The official CIFAR-10 binary distribution.
    Cifar10Binary,
    /// The official CIFAR-100 binary distribution.
    Cifar100Binary,
    /// A `SPLIT/CLASS/*.jpg|png` tree.
    ImageTree,
}

/// A located dataset source: its format and path (a folder, or a `.tar` /
/// `.tar.gz` archive when `archive` is set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub format: SourceFormat,
    pub path: PathBuf,
    pub archive: bool,
}

impl Source {
    /// Recognises the format of a folder or archive.
    ///
    /// Folders: the official `cifar-10-batches-bin` / `cifar-100-binary`
    /// folder, a folder that contains one of those, or an image tree with
    /// `train/` and `test/`. Files: a `.tar` or `.tar.gz` of any of these.
    pub fn detect(path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).at(path)?;
        if meta.is_dir() {
            return detect_folder(path);
        }
        let first = first_tar_member(path)?;
        let format = if first.contains(&format!(
            "{}/",
            cifar_bin::folder_name(DatasetName::Cifar10)
        )) {
            SourceFormat::Cifar10Binary
        } else if first.contains(&format!(
            "{}/",
            cifar_bin::folder_name(DatasetName::Cifar100)
        )) {
            SourceFormat::Cifar100Binary
        } else {
            SourceFormat::ImageTree
        };
        Ok(Source {
            format,
            path: path.to_path_buf(),
            archive: true,
        })
    }

    /// A short description, e.g. `CIFAR-10 binary archive`.
    pub fn describe(&self) -> String {
        let what = match self.format {
            SourceFormat::Cifar10Binary => "CIFAR-10 binary",
            SourceFormat::Cifar100Binary => "CIFAR-100 binary",
            SourceFormat::ImageTree => "image tree",
        };
        let container = if self.archive { "archive" } else { "folder" };
        format!("{what} {container} {}", self.path.display())
    }

    /// The files whose bytes make up the source, sorted, with the relative
    /// names that go into the source digest.
    fn files(&self) -> Result<Vec<(String, PathBuf)>> {
        if self.archive {
            let name = self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok(vec![(name, self.path.clone())]);
        }
        let mut out = Vec::new();
        match self.format {
            SourceFormat::Cifar10Binary | SourceFormat::Cifar100Binary => {
                let name = match self.format {
                    SourceFormat::Cifar10Binary => DatasetName::Cifar10,
                    _ => DatasetName::Cifar100,
                };
                for f in cifar_bin::file_names(name) {
                    out.push((f.to_string(), self.path.join(f)));
                }
            }
            SourceFormat::ImageTree => {
                for split in image_tree::SPLITS {
                    walk(&self.path, Path::new(split), &mut out)?;
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let dir = root.join(rel);
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&dir).at(&dir)? {
        let entry = entry.at(&dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let rel = rel.join(&name);
        let path = root.join(&rel);
        if path.is_dir() {
            walk(root, &rel, out)?;
        } else {
            out.push((rel.to_string_lossy().into_owned(), path));
        }
    }
    Ok(())
}

fn detect_folder(dir: &Path) -> Result<Source> {
    let folder = |format, path: PathBuf| Source {
        format,
        path,
        archive: false,
    };
    if dir.join("data_batch_1.bin").is_file() || dir.join("test_batch.bin").is_file() {
        return Ok(folder(SourceFormat::Cifar10Binary, dir.to_path_buf()));
    }
    if dir.join("train.bin").is_file() || dir.join("test.bin").is_file() {
        return Ok(folder(SourceFormat::Cifar100Binary, dir.to_path_buf()));
    }
    for (name, format) in [
        (DatasetName::Cifar10, SourceFormat::Cifar10Binary),
        (DatasetName::Cifar100, SourceFormat::Cifar100Binary),
    ] {
        let sub = dir.join(cifar_bin::folder_name(name));
        if sub.is_dir() {
            return Ok(folder(format, sub));
        }
    }
    if dir.join("train").is_dir() || dir.join("test").is_dir() {
        return Ok(folder(SourceFormat::ImageTree, dir.to_path_buf()));
    }
    Err(Error::at(
        dir,
        ErrorKind::UnknownFormat {
            detail: "expected cifar-10-batches-bin/ (data_batch_1.bin ..), cifar-100-binary/ \
                     (train.bin, test.bin), or an image tree with train/ and test/"
                .into(),
        },
    ))
}

/// The path of the first regular file in a tar archive.
fn first_tar_member(archive: &Path) -> Result<String> {
    let mut first = None;
    cifar_bin::walk_tar(archive, |path, _| {
        first = Some(path.to_string());
        Ok(std::ops::ControlFlow::Break(()))
    })?;
    first.ok_or_else(|| {
        Error::at(
            archive,
            ErrorKind::UnknownFormat {
                detail: "the archive holds no files".into(),
            },
        )
    })
}

/// Settings of [`load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where the source digests and the decoded cache are kept.
    pub data_dir: PathBuf,
    /// Fine or coarse labels, for CIFAR-100 binaries.
    pub cifar100_labels: Cifar100Labels,
}

/// What [`load`] did.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// SHA-256 over the source files.
    pub source_digest: Fingerprint,
    /// The decoded-cache file.
    pub cache_file: PathBuf,
    /// Whether the images came from the decoded cache.
    pub from_cache: bool,
    /// Set when a damaged cache file was found (and rebuilt): what was wrong.
    pub repaired: Option<String>,
}

/// Loads dataset `name` from `source`, through the decoded cache.
pub fn load(
    name: DatasetName,
    source: &Source,
    opts: &LoadOptions,
) -> Result<(Dataset, LoadReport)> {
    check_fits(name, source)?;
    let source_digest = source_digest(source, &opts.data_dir)?;
    let labels = match name {
        DatasetName::Cifar100 => format!("{:?}", opts.cifar100_labels).to_lowercase(),
        DatasetName::Cifar10 => "-".into(),
    };
    let key =
        Sha256::digest(format!("{CACHE_VERSION}\n{name}\n{labels}\n{source_digest}\n").as_bytes());
    let cache_dir = opts.data_dir.join("decoded");
    let cache_file = cache_dir.join(format!(
        "{name}-{}.bin",
        &Fingerprint(key.into()).to_hex()[..32]
    ));
    let mut report = LoadReport {
        source_digest,
        cache_file: cache_file.clone(),
        from_cache: false,
        repaired: None,
    };
    if cache_file.exists() {
        match read_cache(&cache_file, name) {
            Ok(ds) => {
                report.from_cache = true;
                return Ok((ds, report));
            }
            Err(e) => {
                report.repaired = Some(e.to_string());
                std::fs::remove_file(&cache_file).at(&cache_file)?;
            }
        }
    }
    let ds = decode(name, source, opts.cifar100_labels)?;
    std::fs::create_dir_all(&cache_dir).at(&cache_dir)?;
    write_cache(&cache_file, &ds)?;
    Ok((ds, report))
}

/// Decodes a source without any cache.
pub fn decode(name: DatasetName, source: &Source, labels: Cifar100Labels) -> Result<Dataset> {
    check_fits(name, source)?;
    match (source.format, source.archive) {
        (SourceFormat::ImageTree, false) => image_tree::read_folder(name, &source.path),
        (SourceFormat::ImageTree, true) => image_tree::read_archive(name, &source.path),
        (_, false) => cifar_bin::read_folder(name, labels, &source.path),
        (_, true) => cifar_bin::read_archive(name, labels, &source.path),
    }
}

fn check_fits(name: DatasetName, source: &Source) -> Result<()> {
    let fits = match source.format {
        SourceFormat::Cifar10Binary => name == DatasetName::Cifar10,
        SourceFormat::Cifar100Binary => name == DatasetName::Cifar100,
        SourceFormat::ImageTree => true,
    };
    if fits {
        Ok(())
    } else {
        Err(Error::at(
            &source.path,
            ErrorKind::WrongDataset {
                detail: format!("this is a {}, not {name}", source.describe()),
            },
        ))
    }
}

/// Bumped when the decoded-cache layout or the decoders' output changes.
const CACHE_VERSION: &str = "samlab-decoded-v1";
const MAGIC: &[u8; 8] = b"SAMLABD1";

/// SHA-256 over the source's files, remembered per (path, length, mtime).
pub fn source_digest(source: &Source, data_dir: &Path) -> Result<Fingerprint> {
    let files = source.files()?;
    let mut identity = Sha256::new();
    identity.update(b"samlab-source-identity-v1\n");
    for (rel, path) in &files {
        let meta = std::fs::metadata(path).at(path)?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let abs = std::fs::canonicalize(path).at(path)?;
        identity.update(format!("{rel}\n{}\n{}\n{mtime}\n", abs.display(), meta.len()).as_bytes());
    }
    let memo_dir = data_dir.join("fingerprints");
    let memo = memo_dir.join(Fingerprint(identity.finalize().into()).to_hex());
    if let Ok(text) = std::fs::read_to_string(&memo)
        && let Some(fp) = Fingerprint::from_hex(&text)
    {
        return Ok(fp);
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for (rel, path) in &files {
        let mut f = File::open(path).at(path)?;
        let len = f.metadata().at(path)?.len();
        h.update(format!("{rel}\n{len}\n").as_bytes());
        loop {
            let n = f.read(&mut buf).at(path)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    let fp = Fingerprint(h.finalize().into());
    std::fs::create_dir_all(&memo_dir).at(&memo_dir)?;
    write_atomic(&memo, |w| w.write_all(fp.to_hex().as_bytes()))?;
    Ok(fp)
}

/// Writes a file through a temporary file in the same folder and a rename.
pub(crate) fn write_atomic(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<&mut File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).at(dir)?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        body(&mut w).at(path)?;
        w.flush().at(path)?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

fn write_cache(path: &Path, ds: &Dataset) -> Result<()> {
    let shape = ds.shape();
    let mut header = format!(
        "name={}\nchannels={}\nheight={}\nwidth={}\ntrain={}\ntest={}\nfingerprint={}\n",
        ds.name,
        shape.channels,
        shape.height,
        shape.width,
        ds.train.len(),
        ds.test.len(),
        ds.fingerprint
    );
    for c in &ds.classes {
        header.push_str(&format!("class={c}\n"));
    }
    write_atomic(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&(header.len() as u32).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        let mut crc = crc32fast::Hasher::new();
        for split in [&ds.train, &ds.test] {
            let labels: Vec<u8> = split.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
            for section in [&labels[..], &split.images[..]] {
                crc.update(section);
                w.write_all(section)?;
            }
        }
        w.write_all(&crc.finalize().to_le_bytes())
    })
}

fn read_cache(path: &Path, name: DatasetName) -> Result<Dataset> {
    let corrupt = |reason: String| Error::at(path, ErrorKind::CorruptCache { reason });
    let mut f = File::open(path).at(path)?;
    let file_len = f.metadata().at(path)?.len();
    let mut magic = [0u8; 12];
    f.read_exact(&mut magic)
        .map_err(|_| corrupt("too short".into()))?;
    if &magic[..8] != MAGIC {
        return Err(corrupt("wrong magic bytes".into()));
    }
    let header_len = u32::from_le_bytes(magic[8..12].try_into().unwrap()) as u64;
    if header_len > 1 << 20 || 12 + header_len > file_len {
        return Err(corrupt("header length out of range".into()));
    }
    let mut header = String::new();
    (&mut f)
        .take(header_len)
        .read_to_string(&mut header)
        .map_err(|_| corrupt("header is not UTF-8".into()))?;
    let mut fields = std::collections::BTreeMap::new();
    let mut classes = Vec::new();
    for line in header.lines() {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| corrupt(format!("bad header line `{line}`")))?;
        if k == "class" {
            classes.push(v.to_string());
        } else {
            fields.insert(k, v);
        }
    }
    let num = |k: &str| -> Result<usize> {
        fields
            .get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt(format!("header lacks `{k}`")))
    };
    if fields.get("name") != Some(&name.as_str()) {
        return Err(corrupt(format!(
            "holds {:?}, not {name}",
            fields.get("name")
        )));
    }
    let shape = ImageShape {
        channels: num("channels")?,
        height: num("height")?,
        width: num("width")?,
    };
    let counts = [num("train")?, num("test")?];
    let fingerprint = fields
        .get("fingerprint")
        .and_then(|v| Fingerprint::from_hex(v))
        .ok_or_else(|| corrupt("header lacks `fingerprint`".into()))?;
    let payload: u64 = counts.iter().map(|&n| (n * (2 + shape.len())) as u64).sum();
    if 12 + header_len + payload + 4 != file_len {
        return Err(corrupt(format!(
            "file is {file_len} bytes, its header says {}",
            12 + header_len + payload + 4
        )));
    }
    let mut crc = crc32fast::Hasher::new();
    let mut read_section = |n: usize| -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity(n);
        (&mut f).take(n as u64).read_to_end(&mut v).at(path)?;
        if v.len() != n {
            return Err(corrupt("truncated".into()));
        }
        crc.update(&v);
        Ok(v)
    };
    let mut splits = Vec::new();
    for n in counts {
        let labels = read_section(2 * n)?;
        let images = read_section(n * shape.len())?;
        let labels: Vec<u16> = labels
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(corrupt(format!("label {bad} out of range")));
        }
        splits.push(Split {
            shape,
            images,
            labels,
        });
    }
    let mut stored = [0u8; 4];
    f.read_exact(&mut stored).at(path)?;
    if crc.finalize() != u32::from_le_bytes(stored) {
        return Err(corrupt("CRC32 of the payload does not match".into()));
    }
    let test = splits.pop().unwrap();
    let train = splits.pop().unwrap();
    Ok(Dataset::with_fingerprint(
        name,
        classes,
        train,
        test,
        fingerprint,
    ))
}
