//! The checkpoint cache: one directory per stage key, written atomically,
//! checked against a manifest of SHA-256 digests before every use.
//!
//! ```text
//! CACHE/entries/KEY/       a finished stage: manifest.json, spec.json, metrics.csv,
//!                          summary.json and, for training, model.safetensors and
//!                          optim.safetensors
//! CACHE/prefixes/PKEY/     the checkpoint after the first k epochs of a training run,
//!                          kept where runs of a study branch off
//! CACHE/partial/KEY/epoch-NNNNNN/   rolling checkpoints of a stage being computed
//! CACHE/locks/KEY.lock     held (flock) while a runner computes stage KEY
//! CACHE/tmp/               directories being written; renamed into place when complete
//! ```
//!
//! A directory counts only with a `manifest.json` whose digests match its
//! files; a damaged one is reported, removed and recomputed, never used.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, cache_err, io};
use crate::key::{PrefixPlan, hex};

pub const MANIFEST: &str = "manifest.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// What this directory is: `entry`, `prefix` or `partial`.
    pub what: String,
    pub key: String,
    /// The stage that wrote it (for people reading the cache; not part of the key).
    pub stage: String,
    /// SHA-256 of every other file in the directory.
    pub files: BTreeMap<String, String>,
    /// Free-form facts (device, epoch, creation time).
    #[serde(default)]
    pub info: BTreeMap<String, String>,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Missing,
    Valid(PathBuf, Manifest),
    /// Present but not usable; the reason names the file.
    Damaged(PathBuf, String),
}

/// Where a training run starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeFrom {
    /// Its own rolling checkpoint.
    Partial,
    /// A shared prefix (of its own or another run of the same settings).
    Prefix,
}

impl ResumeFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeFrom::Partial => "partial",
            ResumeFrom::Prefix => "prefix",
        }
    }
}

/// A checkpoint a training run can start from: after `epoch` epochs.
#[derive(Clone, Debug, PartialEq)]
pub struct ResumePoint {
    pub epoch: u64,
    pub dir: PathBuf,
    pub from: ResumeFrom,
}

/// What [`resume_point`] found.
#[derive(Debug, Default)]
pub struct ResumeSearch {
    pub point: Option<ResumePoint>,
    /// Directories that failed their manifest check, with the reason.
    pub damaged: Vec<(PathBuf, String)>,
}

#[derive(Clone, Debug)]
pub struct Cache {
    pub root: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Cache {
    /// Opens (creating) the cache at `root`; fails clearly when it cannot be written.
    pub fn open(root: &Path) -> Result<Cache> {
        for sub in ["entries", "prefixes", "partial", "locks", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let probe = root
            .join("tmp")
            .join(format!(".probe-{}", std::process::id()));
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .map_err(|e| cache_err(root, format!("the cache directory is not writable: {e}")))?;
        let _ = fs::remove_file(&probe);
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    /// Opens an existing cache without creating anything (for `status`).
    pub fn existing(root: &Path) -> Option<Cache> {
        root.join("entries").is_dir().then(|| Cache {
            root: root.to_path_buf(),
        })
    }

    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(key)
    }

    pub fn prefix_dir(&self, pkey: &str) -> PathBuf {
        self.root.join("prefixes").join(pkey)
    }

    pub fn partial_dir(&self, key: &str) -> PathBuf {
        self.root.join("partial").join(key)
    }

    /// A fresh, empty directory to write into before [`commit`](Self::commit).
    pub fn staging(&self) -> Result<PathBuf> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = self
            .root
            .join("tmp")
            .join(format!("{}-{}-{n}", std::process::id(), nanos()));
        fs::create_dir_all(&p).map_err(io(&p))?;
        Ok(p)
    }

    /// Writes the manifest of `staging` and renames it to `dest`. When
    /// `dest` already holds a valid directory (another runner got there
    /// first), the staging directory is dropped. Returns whether ours landed.
    pub fn commit(
        &self,
        staging: &Path,
        dest: &Path,
        what: &str,
        key: &str,
        stage: &str,
        info: BTreeMap<String, String>,
    ) -> Result<bool> {
        let mut files = BTreeMap::new();
        for e in fs::read_dir(staging).map_err(io(staging))? {
            let e = e.map_err(io(staging))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == MANIFEST {
                continue;
            }
            files.insert(name, file_sha256(&e.path())?);
        }
        let manifest = Manifest {
            what: what.into(),
            key: key.into(),
            stage: stage.into(),
            files,
            info,
        };
        let mpath = staging.join(MANIFEST);
        write_file(
            &mpath,
            serde_json::to_string_pretty(&manifest)
                .expect("manifest serialises")
                .as_bytes(),
        )?;
        sync_dir(staging);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if let Lookup::Damaged(p, _) = self.check(dest) {
            self.discard(&p)?;
        }
        match fs::rename(staging, dest) {
            Ok(()) => {
                if let Some(parent) = dest.parent() {
                    sync_dir(parent);
                }
                Ok(true)
            }
            Err(_) if dest.join(MANIFEST).exists() => {
                fs::remove_dir_all(staging).map_err(io(staging))?;
                Ok(false)
            }
            Err(e) => Err(io(dest)(e)),
        }
    }

    /// Checks a directory against its manifest.
    pub fn check(&self, dir: &Path) -> Lookup {
        if !dir.exists() {
            return Lookup::Missing;
        }
        let damaged = |why: String| Lookup::Damaged(dir.to_path_buf(), why);
        let text = match fs::read_to_string(dir.join(MANIFEST)) {
            Ok(t) => t,
            Err(e) => return damaged(format!("{MANIFEST} cannot be read: {e}")),
        };
        let manifest: Manifest = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => return damaged(format!("{MANIFEST} is not valid: {e}")),
        };
        for (name, want) in &manifest.files {
            match file_sha256(&dir.join(name)) {
                Ok(got) if &got == want => {}
                Ok(got) => {
                    return damaged(format!("{name} has sha256 {got}, the manifest says {want}"));
                }
                Err(e) => return damaged(format!("{name}: {e}")),
            }
        }
        Lookup::Valid(dir.to_path_buf(), manifest)
    }

    /// Moves a directory out of the way and deletes it.
    pub fn discard(&self, dir: &Path) -> Result<()> {
        let trash = self.staging()?;
        let target = trash.join("discarded");
        match fs::rename(dir, &target) {
            Ok(()) => fs::remove_dir_all(&trash).map_err(io(&trash)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = fs::remove_dir_all(&trash);
                Ok(())
            }
            Err(e) => Err(io(dir)(e)),
        }
    }

    /// Takes the lock of `key`, calling `waiting` first when another
    /// process holds it. The lock is released when the guard drops (or the
    /// process dies).
    pub fn lock(&self, key: &str, waiting: impl FnOnce()) -> Result<File> {
        let p = self.root.join("locks").join(format!("{key}.lock"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(&p))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                waiting();
                f.lock().map_err(io(&p))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&p)(e)),
        }
        Ok(f)
    }

    /// Complete rolling checkpoints of `key`, oldest first, as (epoch, dir).
    pub fn partials(&self, key: &str) -> Vec<(u64, PathBuf)> {
        let dir = self.partial_dir(key);
        let mut out: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let epoch = name.strip_prefix("epoch-")?.parse().ok()?;
                Some((epoch, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// Size in bytes of everything under `dir`.
    pub fn size_of(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => Cache::size_of(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
}

/// The areas of the cache that hold stage results and checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// `entries/`: finished stages.
    Entries,
    /// `prefixes/`: shared-prefix checkpoints.
    Prefixes,
    /// `partial/`: rolling checkpoints of runs in progress.
    Partial,
}

impl Area {
    pub const ALL: [Area; 3] = [Area::Entries, Area::Prefixes, Area::Partial];

    pub fn as_str(self) -> &'static str {
        match self {
            Area::Entries => "entries",
            Area::Prefixes => "prefixes",
            Area::Partial => "partial",
        }
    }
}

/// The summary file of an entry.
#[derive(Debug, Serialize, Deserialize)]
pub struct SummaryFile {
    pub kind: String,
    pub metrics: BTreeMap<String, f64>,
}

/// Reads an entry's summary.
pub fn read_summary(dir: &Path) -> Result<BTreeMap<String, f64>> {
    let p = dir.join("summary.json");
    let text = fs::read_to_string(&p).map_err(io(&p))?;
    let s: SummaryFile =
        serde_json::from_str(&text).map_err(|e| cache_err(&p, format!("not a summary: {e}")))?;
    Ok(s.metrics)
}

/// A valid entry, as `runner status` lists it.
#[derive(Clone, Debug)]
pub struct EntryInfo {
    pub key: String,
    pub kind: String,
    /// The stage that computed it (its display name then).
    pub stage: String,
    pub bytes: u64,
}

/// What the cache holds.
#[derive(Clone, Debug, Default)]
pub struct CacheStatus {
    pub entries: Vec<EntryInfo>,
    /// Entries that fail their manifest check, with the reason.
    pub damaged: Vec<(PathBuf, String)>,
    /// (directories, bytes) of shared prefixes and of rolling checkpoints.
    pub prefixes: (usize, u64),
    pub partial: (usize, u64),
}

/// A directory that no study of a `gc` reaches.
#[derive(Clone, Debug, PartialEq)]
pub struct Unreachable {
    pub area: Area,
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
}

impl Cache {
    /// The directories of `area`, sorted by name.
    pub fn dirs(&self, area: Area) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.root.join(area.as_str()))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    /// The manifest of `dir` as written, not checked against the files (for
    /// facts such as the device, after a check has already been made).
    pub fn manifest(&self, dir: &Path) -> Option<Manifest> {
        let text = fs::read_to_string(dir.join(MANIFEST)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Every entry checked against its manifest, and the sizes of the
    /// checkpoint areas.
    pub fn status(&self) -> CacheStatus {
        let mut st = CacheStatus::default();
        for dir in self.dirs(Area::Entries) {
            match self.check(&dir) {
                Lookup::Valid(_, m) => {
                    let kind = m.info.get("kind").cloned().unwrap_or_else(|| {
                        fs::read_to_string(dir.join("summary.json"))
                            .ok()
                            .and_then(|t| serde_json::from_str::<SummaryFile>(&t).ok())
                            .map(|s| s.kind)
                            .unwrap_or_default()
                    });
                    st.entries.push(EntryInfo {
                        key: m.key,
                        kind,
                        stage: m.stage,
                        bytes: Cache::size_of(&dir),
                    });
                }
                Lookup::Damaged(p, why) => st.damaged.push((p, why)),
                Lookup::Missing => {}
            }
        }
        let sizes = |area| {
            let dirs = self.dirs(area);
            (dirs.len(), dirs.iter().map(|d| Cache::size_of(d)).sum())
        };
        st.prefixes = sizes(Area::Prefixes);
        st.partial = sizes(Area::Partial);
        st
    }

    /// The key documents (`spec.json`) of the entries that have one, by
    /// key. Not checked against the manifests: for explaining, not for use.
    pub fn documents(&self) -> Vec<(String, serde_json::Value)> {
        self.dirs(Area::Entries)
            .into_iter()
            .filter(|d| d.join(MANIFEST).is_file())
            .filter_map(|d| {
                let key = d.file_name()?.to_string_lossy().into_owned();
                let text = fs::read_to_string(d.join("spec.json")).ok()?;
                Some((key, serde_json::from_str(&text).ok()?))
            })
            .collect()
    }

    /// The directories of every area whose name (a stage or prefix key) is
    /// not in `keep`, in area and name order.
    pub fn unreachable(&self, keep: &HashSet<String>) -> Vec<Unreachable> {
        let mut out = Vec::new();
        for area in Area::ALL {
            for path in self.dirs(area) {
                let name = path
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !keep.contains(&name) {
                    let bytes = Cache::size_of(&path);
                    out.push(Unreachable {
                        area,
                        name,
                        path,
                        bytes,
                    });
                }
            }
        }
        out
    }
}

/// Where a training run of stage `key` can start: the latest epoch
/// (below `epochs`) of its newest valid rolling checkpoint or, later
/// still, of a shared prefix in `prefix` that is valid in `cache` or that
/// `coming` says an earlier stage of the same run will have written.
/// The one rule that `runner plan` and the Train stage share; damaged
/// directories are returned for the caller to report (the plan only
/// reads, the run removes them).
pub fn resume_point(
    cache: Option<&Cache>,
    key: &str,
    prefix: Option<&PrefixPlan>,
    epochs: u64,
    coming: &dyn Fn(&str) -> bool,
) -> ResumeSearch {
    let mut found = ResumeSearch::default();
    // Valid here; a damaged directory is noted.
    let mut valid = |dir: &Path| match cache.map(|c| c.check(dir)) {
        Some(Lookup::Valid(..)) => true,
        Some(Lookup::Damaged(p, why)) => {
            found.damaged.push((p, why));
            false
        }
        _ => false,
    };
    let partials = cache.map(|c| c.partials(key)).unwrap_or_default();
    let mut point = partials
        .into_iter()
        .rev()
        .filter(|(epoch, _)| *epoch < epochs)
        .find(|(_, dir)| valid(dir))
        .map(|(epoch, dir)| ResumePoint {
            epoch,
            dir,
            from: ResumeFrom::Partial,
        });
    if let Some(plan) = prefix {
        let after = point.as_ref().map_or(0, |p| p.epoch);
        for k in (after + 1..epochs).rev() {
            let pk = &plan.keys[k as usize];
            let dir =
                cache.map_or_else(|| PathBuf::from("prefixes").join(pk), |c| c.prefix_dir(pk));
            if coming(pk) || valid(&dir) {
                point = Some(ResumePoint {
                    epoch: k,
                    dir,
                    from: ResumeFrom::Prefix,
                });
                break;
            }
        }
    }
    found.point = point;
    found
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, for manifests.
pub fn unix_time() -> String {
    (nanos() / 1_000_000_000).to_string()
}

pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(hex(&h.finalize()))
}

/// Writes and flushes a file to disk.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Summaries are read back from the cache's JSON files: a cached run
    /// must report the same numbers as the run that computed them, which
    /// needs serde_json's `float_roundtrip` (its default parser is off by an
    /// ulp for some values, e.g. this loss of a real run).
    #[test]
    fn floats_survive_json_exactly() {
        for v in [2.2475087642669678f64, 0.1 + 0.2, 1e-300, 123456.789e10] {
            let back: f64 = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v}");
        }
    }

    #[test]
    fn status_documents_and_unreachable_walk_every_area() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let put = |dest: PathBuf, what: &str, key: &str, spec: Option<&str>| {
            let s = cache.staging().unwrap();
            write_file(&s.join("a.txt"), key.as_bytes()).unwrap();
            if let Some(spec) = spec {
                write_file(&s.join("spec.json"), spec.as_bytes()).unwrap();
                let sf = r#"{"kind": "train", "metrics": {"x": 1.0}}"#;
                write_file(&s.join("summary.json"), sf.as_bytes()).unwrap();
            }
            cache
                .commit(&s, &dest, what, key, "st", BTreeMap::new())
                .unwrap();
        };
        put(
            cache.entry_dir("k1"),
            "entry",
            "k1",
            Some(r#"{"kind":"train"}"#),
        );
        put(
            cache.entry_dir("k2"),
            "entry",
            "k2",
            Some(r#"{"kind":"escape"}"#),
        );
        put(cache.prefix_dir("p1"), "prefix", "p1", None);
        put(
            cache.partial_dir("k3").join("epoch-000001"),
            "partial",
            "k3",
            None,
        );
        fs::write(cache.entry_dir("k2").join("a.txt"), b"changed").unwrap();

        let st = cache.status();
        assert_eq!(st.entries.len(), 1);
        assert_eq!(
            (st.entries[0].key.as_str(), st.entries[0].kind.as_str()),
            ("k1", "train")
        );
        assert_eq!(st.damaged.len(), 1);
        assert!(st.damaged[0].1.contains("a.txt"), "{:?}", st.damaged);
        assert_eq!(st.prefixes.0, 1);
        assert_eq!(st.partial.0, 1);
        assert!(st.prefixes.1 > 0 && st.partial.1 > 0);

        let docs = cache.documents();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].0, "k1");
        assert_eq!(docs[1].1["kind"], "escape");

        let keep: HashSet<String> = ["k1".to_string(), "p1".to_string()].into();
        let gone: Vec<(Area, String)> = cache
            .unreachable(&keep)
            .into_iter()
            .map(|u| (u.area, u.name))
            .collect();
        assert_eq!(
            gone,
            vec![(Area::Entries, "k2".into()), (Area::Partial, "k3".into())]
        );
    }

    #[test]
    fn commit_check_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let s = cache.staging().unwrap();
        write_file(&s.join("a.txt"), b"hello").unwrap();
        let dest = cache.entry_dir("k");
        assert!(matches!(cache.check(&dest), Lookup::Missing));
        assert!(
            cache
                .commit(&s, &dest, "entry", "k", "st", BTreeMap::new())
                .unwrap()
        );
        let Lookup::Valid(_, m) = cache.check(&dest) else {
            panic!("should be valid")
        };
        assert_eq!(m.files.len(), 1);
        // A second writer with the same key finds it there and drops its copy.
        let s2 = cache.staging().unwrap();
        write_file(&s2.join("a.txt"), b"hello").unwrap();
        assert!(
            !cache
                .commit(&s2, &dest, "entry", "k", "st", BTreeMap::new())
                .unwrap()
        );
        assert!(!s2.exists());
        fs::write(dest.join("a.txt"), b"hellO").unwrap();
        match cache.check(&dest) {
            Lookup::Damaged(_, why) => assert!(why.contains("a.txt"), "{why}"),
            other => panic!("{other:?}"),
        }
        cache.discard(&dest).unwrap();
        assert!(matches!(cache.check(&dest), Lookup::Missing));
    }
}
