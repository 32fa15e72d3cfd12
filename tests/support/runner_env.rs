//! A scratch folder for running the `runner` binary on studies, shared by
//! the end-to-end tests (included by path; needs `mod shared` beside it).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::shared;

/// A scratch folder with a cache, results and study files; the decoded
/// dataset is shared by all tests.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn command(&self, args: &[&str], cache: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("SAMLAB_DATA_DIR", data_dir())
            .env("SAMLAB_CIFAR10", shared::cifar10_jpeg_archive())
            .env("SAMLAB_CACHE_DIR", self.path(cache));
        c
    }

    pub fn run(&self, args: &[&str], cache: &str) -> Output {
        self.command(args, cache).output().expect("runner starts")
    }

    /// Runs a study and checks that it succeeded; returns the last-run table.
    pub fn ok(&self, args: &[&str], cache: &str) -> BTreeMap<String, Vec<String>> {
        let o = self.run(args, cache);
        let (out, err) = text(&o);
        assert!(o.status.success(), "runner {args:?} failed:\n{out}\n{err}");
        let results = args
            .windows(2)
            .find(|w| w[0] == "--results-dir")
            .map(|w| self.path(w[1]))
            .expect("tests name their results folder");
        last_run(&results)
    }
}

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("samlab-data")
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `last-run.csv` by stage: state, start_epoch, resumed_from, steps_run, passes_run, detail.
pub fn last_run(results: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(results.join("last-run.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let mut parts: Vec<String> = l.splitn(7, ',').map(str::to_string).collect();
            let stage = parts.remove(0);
            (stage, parts)
        })
        .collect()
}

pub fn states(t: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, String> {
    t.iter().map(|(k, v)| (k.clone(), v[0].clone())).collect()
}

/// `summary.csv` of a results folder without its wall-time column.
pub fn summary_without_wall(results: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(results.join("summary.csv")).unwrap();
    let head: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let wall = head.iter().position(|h| *h == "wall_s");
    text.lines()
        .map(|l| {
            l.split(',')
                .enumerate()
                .filter(|(i, _)| Some(*i) != wall)
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}
