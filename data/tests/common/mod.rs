//! Generators for the data tests: files in each official format, image
//! trees, archives, and a local HTTP server.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const PIXELS: usize = 3072;

/// The pixel byte `j` of record `r` of file `file` in generated data.
pub fn pixel(file: usize, r: usize, j: usize) -> u8 {
    (file * 101 + r * 7 + j * 13 + (j >> 8)) as u8
}

/// The label of record `r` of file `file`, below `classes`.
pub fn label(file: usize, r: usize, classes: usize) -> u8 {
    ((file * 3 + r * 11 + r / 7) % classes) as u8
}

/// One official-format binary file: `records` records of `label_bytes`
/// label bytes (fine label last) + 3072 pixels.
pub fn binary_file(file: usize, records: usize, label_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(records * (label_bytes + PIXELS));
    for r in 0..records {
        if label_bytes == 2 {
            out.push(label(file, r, 20)); // coarse
            out.push(label(file, r, 100)); // fine
        } else {
            out.push(label(file, r, 10));
        }
        out.extend((0..PIXELS).map(|j| pixel(file, r, j)));
    }
    out
}

pub const CIFAR10_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

/// Writes a full-size CIFAR-10 binary folder `root/cifar-10-batches-bin`.
pub fn write_cifar10_folder(root: &Path) -> PathBuf {
    let dir = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, f) in CIFAR10_FILES.iter().enumerate() {
        std::fs::write(dir.join(f), binary_file(i, 10_000, 1)).unwrap();
    }
    std::fs::write(dir.join("batches.meta.txt"), "airplane\n").unwrap();
    dir
}

/// Writes a full-size CIFAR-100 binary folder `root/cifar-100-binary`.
pub fn write_cifar100_folder(root: &Path) -> PathBuf {
    let dir = root.join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.bin"), binary_file(0, 50_000, 2)).unwrap();
    std::fs::write(dir.join("test.bin"), binary_file(1, 10_000, 2)).unwrap();
    dir
}

/// Packs `dir` (as its own name) into `archive` (.tar.gz when the name ends so).
pub fn pack(dir: &Path, archive: &Path) {
    let file = std::fs::File::create(archive).unwrap();
    let name = dir.file_name().unwrap();
    if archive.to_string_lossy().ends_with(".gz") {
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all(name, dir).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    } else {
        let mut tar = tar::Builder::new(file);
        tar.append_dir_all(name, dir).unwrap();
        tar.finish().unwrap();
    }
}

/// Packs the contents of `dir` (no top folder) into a .tar.gz.
pub fn pack_contents(dir: &Path, archive: &Path) {
    let file = std::fs::File::create(archive).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(".", dir).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

/// The RGB pixels (HWC) of generated tree image `k` of class `c`.
pub fn tree_pixels(c: usize, k: usize, w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (c * 20 + x as usize) as u8,
            (k * 30 + y as usize) as u8,
            ((x + y) as usize * 3 + c) as u8,
        ])
    })
}

/// Writes an image tree of lossless PNGs: `classes` class folders, `n_train`
/// and `n_test` images each, 32x32.
pub fn write_tree(root: &Path, classes: &[&str], n_train: usize, n_test: usize) {
    for (split, n) in [("train", n_train), ("test", n_test)] {
        for (c, class) in classes.iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for k in 0..n {
                let k_all = if split == "train" { k } else { 100 + k };
                tree_pixels(c, k_all, 32, 32)
                    .save(dir.join(format!("{k:04}.png")))
                    .unwrap();
            }
        }
    }
}

pub const TEN: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// How the test server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serve {
    /// Honours `Range: bytes=N-` with 206.
    Ranges,
    /// Ignores ranges, always answers 200 with the whole file.
    NoRanges,
    /// The first answer sends only this many bytes of the body and hangs up;
    /// later answers honour ranges.
    BreakFirstAfter(usize),
    /// Answers 404.
    NotFound,
}

/// A one-file HTTP server on 127.0.0.1; records the range start of each request.
pub struct TestServer {
    pub url: String,
    pub ranges: Arc<Mutex<Vec<Option<u64>>>>,
}

pub fn serve(body: Vec<u8>, mode: Serve) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for (count, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req).to_lowercase();
            let start: Option<u64> = text
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .and_then(|r| r.trim().trim_end_matches('-').parse().ok());
            seen.lock().unwrap().push(start);
            let total = body.len() as u64;
            let _ = match mode {
                Serve::NotFound => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
                Serve::BreakFirstAfter(n) if count == 0 => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|_| stream.write_all(&body[..n]))
                }
                Serve::Ranges | Serve::BreakFirstAfter(_) if start.is_some() => {
                    let s = start.unwrap();
                    if s >= total {
                        stream.write_all(
                            format!(
                                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\n\
                                 Content-Length: 0\r\nConnection: close\r\n\r\n"
                            )
                            .as_bytes(),
                        )
                    } else {
                        let head = format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                             Content-Range: bytes {s}-{}/{total}\r\nConnection: close\r\n\r\n",
                            total - s,
                            total - 1
                        );
                        stream
                            .write_all(head.as_bytes())
                            .and_then(|_| stream.write_all(&body[s as usize..]))
                    }
                }
                _ => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|_| stream.write_all(&body))
                }
            };
            let _ = stream.flush();
        }
    });
    TestServer {
        url: format!("http://127.0.0.1:{port}"),
        ranges,
    }
}
