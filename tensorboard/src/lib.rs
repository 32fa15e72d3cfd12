//! TensorBoard event files, written without TensorFlow: TFRecord framing
//! ([`record`]) around `tensorflow.Event` protobufs ([`proto`]) holding
//! scalars (`simple_value`, what TensorBoard's scalars dashboard, W&B's
//! `sync_tensorboard` and Aim's converter read) and text (the text
//! plugin's string tensor).
//!
//! A writer's bytes depend only on what it is given: the file is named
//! `events.out.tfevents.0.samlab` (not after the clock and host, as
//! TensorFlow names it), and every event's wall time is the caller's, so
//! writing the same values again gives the same file.
//!
//! ```no_run
//! # fn main() -> samlab_tensorboard::Result<()> {
//! use samlab_tensorboard::EventWriter;
//! let mut w = EventWriter::create(std::path::Path::new("runs"), "sgd-seed0")?;
//! w.add_scalar("train_loss", 10, 2.26, 1.26)?;
//! w.add_text("settings", 0, "lr 0.1", 0.0)?;
//! w.close()?;
//! # Ok(()) }
//! ```

pub mod proto;
pub mod record;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use proto::summary::{Value, value::Kind};
use proto::{Event, PluginData, Summary, SummaryMetadata, TensorProto, TensorShapeProto, event};

/// The file name every writer uses inside its run folder.
pub const FILE_NAME: &str = "events.out.tfevents.0.samlab";

/// The version string of an event file's first record.
pub const FILE_VERSION: &str = "brain.Event:2";

/// What went wrong, with the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A run name that is not one folder name of letters, digits and `._=,+-`.
    #[error(
        "run name {name:?} is not a plain folder name (letters, digits and `._=,+-`, not starting with `.`)"
    )]
    RunName { name: String },
    #[error("empty tag (at step {step})")]
    EmptyTag { step: i64 },
    /// A record whose framing is broken.
    #[error("{}: record {index} at byte {offset}: {what}", path.display())]
    Corrupt {
        path: PathBuf,
        index: usize,
        offset: u64,
        what: String,
    },
    /// A record whose payload is not an `Event`.
    #[error("{}: record {index} is not an Event: {source}", path.display())]
    Decode {
        path: PathBuf,
        index: usize,
        source: prost::DecodeError,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Whether `name` is one safe folder name (on Linux, macOS and Windows).
pub fn valid_run_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._=,+-".contains(c))
}

/// Writes one run's event file, `LOGDIR/RUN/events.out.tfevents.0.samlab`.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `logdir/run/` and its event file (replacing one there), and
    /// writes the file-version record at wall time 0.
    pub fn create(logdir: &Path, run: &str) -> Result<EventWriter> {
        if !valid_run_name(run) {
            return Err(Error::RunName { name: run.into() });
        }
        let dir = logdir.join(run);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let file = File::create(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let mut w = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        w.write(&Event {
            wall_time: 0.0,
            step: 0,
            what: Some(event::What::FileVersion(FILE_VERSION.into())),
        })?;
        Ok(w)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `value` under `tag` at `step` (f32, as TensorBoard stores scalars).
    pub fn add_scalar(&mut self, tag: &str, step: i64, value: f32, wall_time: f64) -> Result<()> {
        self.summary(
            step,
            wall_time,
            Value {
                tag: tag.into(),
                value: Some(Kind::SimpleValue(value)),
                metadata: None,
            },
        )
    }

    /// Records `text` (markdown, as the text plugin renders it) under `tag`.
    pub fn add_text(&mut self, tag: &str, step: i64, text: &str, wall_time: f64) -> Result<()> {
        let metadata = SummaryMetadata {
            plugin_data: Some(PluginData {
                plugin_name: "text".into(),
                // TextPluginData { version: 0 } encodes to no bytes.
                content: Vec::new(),
            }),
            data_class: proto::DATA_CLASS_TENSOR,
            ..Default::default()
        };
        let tensor = TensorProto {
            dtype: proto::DT_STRING,
            tensor_shape: Some(TensorShapeProto { dim: Vec::new() }),
            string_val: vec![text.as_bytes().to_vec()],
        };
        self.summary(
            step,
            wall_time,
            Value {
                tag: tag.into(),
                value: Some(Kind::Tensor(tensor)),
                metadata: Some(metadata),
            },
        )
    }

    fn summary(&mut self, step: i64, wall_time: f64, value: Value) -> Result<()> {
        if value.tag.is_empty() {
            return Err(Error::EmptyTag { step });
        }
        self.write(&Event {
            wall_time,
            step,
            what: Some(event::What::Summary(Summary { value: vec![value] })),
        })
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        record::write_record(&mut self.out, &event.encode_to_vec()).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes what is buffered to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes and closes the file, reporting any error (dropping a writer
    /// flushes too but cannot report one).
    pub fn close(mut self) -> Result<()> {
        self.flush()?;
        self.out.get_ref().sync_all().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Every record of the event file at `path`, lengths and CRCs checked.
pub fn read_records(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    record::parse_records(path, &bytes)
}

/// Every event of the file at `path`.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    read_records(path)?
        .iter()
        .enumerate()
        .map(|(index, r)| {
            Event::decode(r.as_slice()).map_err(|source| Error::Decode {
                path: path.to_path_buf(),
                index,
                source,
            })
        })
        .collect()
}

/// One summary value of an event, simplified: what [`read_values`] returns.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    Scalar(f32),
    /// A string tensor's strings (text), lossily decoded as UTF-8.
    Text(Vec<String>),
    /// A value of another kind (or none).
    Other,
}

/// `(step, wall_time, tag, reading)` for every summary value in the file, in order.
pub fn read_values(path: &Path) -> Result<Vec<(i64, f64, String, Reading)>> {
    let mut out = Vec::new();
    for e in read_events(path)? {
        let Some(event::What::Summary(s)) = e.what else {
            continue;
        };
        for v in s.value {
            let r = match v.value {
                Some(Kind::SimpleValue(x)) => Reading::Scalar(x),
                Some(Kind::Tensor(t)) if t.dtype == proto::DT_STRING => Reading::Text(
                    t.string_val
                        .iter()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .collect(),
                ),
                _ => Reading::Other,
            };
            out.push((e.step, e.wall_time, v.tag, r));
        }
    }
    Ok(out)
}
