//! Download of the official binary archives, verified against the published
//! MD5 checksums.
//!
//! The bytes go to `FILE.part` first; an interrupted download is resumed
//! from there with an HTTP range request (or restarted when the server
//! ignores ranges). Only a file whose size and checksum match is renamed to
//! its final name, so a file under the final name is always complete; a
//! `.part` that fails the check is deleted.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::dataset::DatasetName;
use crate::error::{Error, ErrorKind, IoContext, Result};

/// Where the official archives are published.
pub const OFFICIAL_BASE_URL: &str = "https://www.cs.toronto.edu/~kriz";

/// A file to download and what it must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub url: String,
    pub file_name: String,
    /// Lowercase hex MD5, as the dataset authors publish it.
    pub md5: String,
    /// The size in bytes, when known.
    pub size: Option<u64>,
}

/// The official binary archive of `name`, under `base_url` (normally
/// [`OFFICIAL_BASE_URL`]; a mirror holding the same file names works too).
pub fn official_remote(name: DatasetName, base_url: &str) -> Remote {
    let (file, md5, size) = match name {
        DatasetName::Cifar10 => (
            "cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
            170_052_171,
        ),
        DatasetName::Cifar100 => (
            "cifar-100-binary.tar.gz",
            "03b5dce01913d631647c71ecec9e9cb8",
            168_513_733,
        ),
    };
    Remote {
        url: format!("{}/{file}", base_url.trim_end_matches('/')),
        file_name: file.to_string(),
        md5: md5.to_string(),
        size: Some(size),
    }
}

/// Downloads `remote` into `dir` and returns the verified file's path. A
/// file already under the final name is returned as it is.
pub fn download(remote: &Remote, dir: &Path, progress: bool) -> Result<PathBuf> {
    let target = dir.join(&remote.file_name);
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(dir).at(dir)?;
    let part = dir.join(format!("{}.part", remote.file_name));
    let fail = |reason: String| Error::new(&remote.url, ErrorKind::Download { reason });

    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut request = ureq::get(&remote.url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    match request.call() {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let resumed = status == 206 && have > 0;
            let length: Option<u64> = response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let start = if resumed { have } else { 0 };
            let mut file = if resumed {
                OpenOptions::new().append(true).open(&part).at(&part)?
            } else {
                File::create(&part).at(&part)?
            };
            let bar = progress_bar(progress, length.map(|l| l + start), &remote.file_name);
            bar.set_position(start);
            let mut body = response.body_mut().as_reader();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = body.read(&mut buf).map_err(|e| {
                    fail(format!("connection broke off ({e}); run again to resume"))
                })?;
                if n == 0 {
                    break;
                }
                file.write_all(&buf[..n]).at(&part)?;
                bar.inc(n as u64);
            }
            file.flush().at(&part)?;
            bar.finish_and_clear();
        }
        // The server says the range starts at or past the end: the part holds everything.
        Err(ureq::Error::StatusCode(416)) if have > 0 => {}
        Err(ureq::Error::StatusCode(code)) => return Err(fail(format!("HTTP status {code}"))),
        Err(e) => return Err(fail(e.to_string())),
    }

    let size = std::fs::metadata(&part).at(&part)?.len();
    if let Some(expected) = remote.size
        && size != expected
    {
        if size > expected {
            std::fs::remove_file(&part).at(&part)?;
        }
        return Err(fail(format!(
            "got {size} bytes, expected {expected}{}",
            if size < expected {
                "; run again to resume"
            } else {
                "; the partial file was deleted"
            }
        )));
    }
    let found = md5_hex(&part)?;
    if found != remote.md5 {
        std::fs::remove_file(&part).at(&part)?;
        return Err(Error::new(
            &remote.url,
            ErrorKind::ChecksumMismatch {
                algorithm: "MD5",
                expected: remote.md5.clone(),
                found,
            },
        ));
    }
    std::fs::rename(&part, &target).at(&target)?;
    Ok(target)
}

fn progress_bar(show: bool, len: Option<u64>, name: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match len {
        Some(l) => indicatif::ProgressBar::new(l),
        None => indicatif::ProgressBar::no_length(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(format!("downloading {name}"));
    bar
}

/// The lowercase hex MD5 of a file.
pub fn md5_hex(path: &Path) -> Result<String> {
    let mut f = File::open(path).at(path)?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
