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

/// How much of a directory a lookup re-hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Every file: before weights are loaded for training, and `runner verify`.
    Full,
    /// Files whose size, modification and change times and inode are those
    /// an earlier full check recorded in the directory's memo are trusted;
    /// the others are re-hashed. For planning, and for entries whose
    /// summary alone is read.
    Memo,
}

/// The memo of a directory's last successful check, beside its manifest:
/// for each file its stat (size, times, inode) and digest then. Not listed in the
/// manifest and never read as data: a missing or unreadable memo only
/// means the files are hashed again.
pub const MEMO: &str = "verified.json";

/// What a memo records of a file: enough that a rewrite shows (a new
/// modification or change time, size or inode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct FileStat {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

/// A file changed less than this before a check is not memoised (git's
/// "racily clean" rule): a rewrite within the file system's timestamp
/// granularity would leave its times as they were.
const RACY_NS: i128 = 2_000_000_000;

impl FileStat {
    fn of(path: &Path) -> Option<FileStat> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        Some(FileStat {
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
        })
    }
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Memo {
    /// File name -> (its stat, its digest) when last found intact.
    files: BTreeMap<String, (FileStat, String)>,
}

impl Memo {
    fn read(dir: &Path) -> Memo {
        fs::read_to_string(dir.join(MEMO))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Leaves out the files changed too recently to tell a rewrite
    /// ([`RACY_NS`]).
    fn settle(&mut self) {
        let now = nanos() as i128;
        self.files
            .retain(|_, (st, _)| now - st.mtime_ns.max(st.ctime_ns) > RACY_NS);
    }

    /// Best effort (a cache shared read-only still works, unmemoised):
    /// written to a temporary file and renamed.
    fn write(&self, dir: &Path) {
        let tmp = dir.join(format!(".{MEMO}.{}-{}", std::process::id(), nanos()));
        let text = serde_json::to_string(&self).expect("memos serialise");
        if fs::write(&tmp, text).is_ok() && fs::rename(&tmp, dir.join(MEMO)).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
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

/// A checkpoint a training run can start from: after `epoch` epochs and
/// `step` steps of the next (a rolling checkpoint written mid-epoch).
#[derive(Clone, Debug, PartialEq)]
pub struct ResumePoint {
    pub epoch: u64,
    pub step: u64,
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
        if let Lookup::Damaged(p, _) = self.check_with(dest, Verify::Memo) {
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

    /// Checks a directory against its manifest, re-hashing every file.
    pub fn check(&self, dir: &Path) -> Lookup {
        self.check_with(dir, Verify::Full)
    }

    /// Checks a directory against its manifest; `verify` says whether files
    /// unchanged since an earlier full check are trusted ([`Verify::Memo`]).
    pub fn check_with(&self, dir: &Path, verify: Verify) -> Lookup {
        if !dir.exists() {
            return Lookup::Missing;
        }
        match self.inspect(dir, verify) {
            Ok(m) => Lookup::Valid(dir.to_path_buf(), m),
            Err(problems) => Lookup::Damaged(dir.to_path_buf(), problems.join("; ")),
        }
    }

    /// Every problem of a directory against its manifest (each file that is
    /// missing, unreadable or has another digest, with both digests), or
    /// its manifest when there is none. A full check that finds none
    /// writes the directory's memo ([`MEMO`]).
    pub fn inspect(
        &self,
        dir: &Path,
        verify: Verify,
    ) -> std::result::Result<Manifest, Vec<String>> {
        let text = fs::read_to_string(dir.join(MANIFEST))
            .map_err(|e| vec![format!("{MANIFEST} cannot be read: {e}")])?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| vec![format!("{MANIFEST} is not valid: {e}")])?;
        let memo = Memo::read(dir);
        let trusted = |name: &str, st: &FileStat, want: &str| {
            verify == Verify::Memo
                && memo
                    .files
                    .get(name)
                    .is_some_and(|(s, d)| s == st && d == want)
        };
        let mut seen = Memo::default();
        let mut problems = Vec::new();
        for (name, want) in &manifest.files {
            let path = dir.join(name);
            let stat = FileStat::of(&path);
            if let Some(st) = &stat
                && trusted(name, st, want)
            {
                seen.files.insert(name.clone(), (st.clone(), want.clone()));
                continue;
            }
            match file_sha256(&path) {
                Ok(got) if &got == want => {
                    if let Some(st) = stat {
                        seen.files.insert(name.clone(), (st, got));
                    }
                }
                Ok(got) => {
                    problems.push(format!("{name} has sha256 {got}, the manifest says {want}"))
                }
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        seen.settle();
        if seen != memo {
            seen.write(dir);
        }
        Ok(manifest)
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

    /// Rolling checkpoints of `key`, oldest first, as (epoch, step, dir):
    /// after `epoch` epochs and `step` steps of the next one (0 at an
    /// epoch's end). Named `epoch-NNNNNN` and, written mid-epoch on an
    /// interruption or a `--checkpoint-every`, `epoch-NNNNNN-step-NNNNNNNNN`.
    pub fn partials(&self, key: &str) -> Vec<(u64, u64, PathBuf)> {
        let dir = self.partial_dir(key);
        let mut out: Vec<(u64, u64, PathBuf)> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (epoch, step) = parse_partial(&name)?;
                Some((epoch, step, e.path()))
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

    /// Every directory that has a manifest: entries, shared prefixes and
    /// each rolling checkpoint ([`Cache::partials`]), sorted.
    pub fn checkpoint_dirs(&self) -> Vec<PathBuf> {
        let mut out = self.dirs(Area::Entries);
        out.extend(self.dirs(Area::Prefixes));
        for run in self.dirs(Area::Partial) {
            if let Some(key) = run.file_name().and_then(|k| k.to_str()) {
                out.extend(self.partials(key).into_iter().map(|(_, _, d)| d));
            }
        }
        out
    }

    /// The manifest of `dir` as written, not checked against the files (for
    /// facts such as the device, after a check has already been made).
    pub fn manifest(&self, dir: &Path) -> Option<Manifest> {
        let text = fs::read_to_string(dir.join(MANIFEST)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Every entry checked against its manifest (trusting its memo:
    /// `runner verify` re-hashes), and the sizes of the checkpoint areas.
    pub fn status(&self) -> CacheStatus {
        let mut st = CacheStatus::default();
        for dir in self.dirs(Area::Entries) {
            match self.check_with(&dir, Verify::Memo) {
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
/// `coming` says an earlier stage of the same run will have written;
/// `verify` says how much of each directory is re-hashed ([`Verify::Full`]
/// where its weights are about to be loaded).
/// The one rule that `runner plan` and the Train stage share; damaged
/// directories are returned for the caller to report (the plan only
/// reads, the run removes them).
pub fn resume_point(
    cache: Option<&Cache>,
    key: &str,
    prefix: Option<&PrefixPlan>,
    epochs: u64,
    verify: Verify,
    coming: &dyn Fn(&str) -> bool,
) -> ResumeSearch {
    let mut found = ResumeSearch::default();
    // Valid here; a damaged directory is noted.
    let mut valid = |dir: &Path| match cache.map(|c| c.check_with(dir, verify)) {
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
        .filter(|(epoch, _, _)| *epoch < epochs)
        .find(|(_, _, dir)| valid(dir))
        .map(|(epoch, step, dir)| ResumePoint {
            epoch,
            step,
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
                    step: 0,
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

/// The directory name of a rolling checkpoint after `epoch` epochs and
/// `step` steps of the next.
pub fn partial_name(epoch: u64, step: u64) -> String {
    if step == 0 {
        format!("epoch-{epoch:06}")
    } else {
        format!("epoch-{epoch:06}-step-{step:09}")
    }
}

fn parse_partial(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("epoch-")?;
    match rest.split_once("-step-") {
        None => Some((rest.parse().ok()?, 0)),
        Some((e, s)) => Some((e.parse().ok()?, s.parse().ok()?)),
    }
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

thread_local! {
    static HASHED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Bytes this thread has hashed to check or commit cache files (for the
/// planning benchmark and the memo's tests).
pub fn hashed_bytes() -> u64 {
    HASHED.with(|h| h.get())
}

pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(io(path))?;
    HASHED.with(|h| h.set(h.get() + n));
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

    /// A full check memoises what it found intact; a memo check then hashes
    /// nothing, and any rewrite of a file (even one that restores its size
    /// and modification time) is hashed again and found. Files changed in
    /// the last two seconds are not memoised (racily clean).
    #[test]
    fn the_memo_trusts_only_files_unchanged_since_a_full_check() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let s = cache.staging().unwrap();
        write_file(&s.join("a.bin"), &vec![7u8; 1 << 16]).unwrap();
        write_file(&s.join("b.txt"), b"hello").unwrap();
        let dest = cache.entry_dir("k");
        cache
            .commit(&s, &dest, "entry", "k", "st", BTreeMap::new())
            .unwrap();
        let hashed = |f: &dyn Fn()| {
            let before = hashed_bytes();
            f();
            hashed_bytes() - before
        };
        let valid = |v| matches!(cache.check_with(&dest, v), Lookup::Valid(..));
        // Fresh files: racy, so neither check memoises them.
        assert_eq!(hashed(&|| assert!(valid(Verify::Full))), (1 << 16) + 5);
        assert_eq!(hashed(&|| assert!(valid(Verify::Memo))), (1 << 16) + 5);
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(hashed(&|| assert!(valid(Verify::Full))), (1 << 16) + 5);
        assert!(dest.join(MEMO).is_file());
        assert_eq!(hashed(&|| assert!(valid(Verify::Memo))), 0);
        // Full still hashes everything.
        assert_eq!(hashed(&|| assert!(valid(Verify::Full))), (1 << 16) + 5);
        // One byte changed, size and modification time put back: the change
        // time tells, and only that file is hashed again.
        let f = dest.join("b.txt");
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        fs::write(&f, b"hellO").unwrap();
        File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(
            hashed(&|| match cache.check_with(&dest, Verify::Memo) {
                Lookup::Damaged(_, w) => assert!(w.contains("b.txt has sha256"), "{w}"),
                other => panic!("{other:?}"),
            }),
            5
        );
        // Every damaged file is named, with both digests.
        fs::write(dest.join("a.bin"), b"short").unwrap();
        let why = match cache.inspect(&dest, Verify::Full) {
            Err(problems) => {
                assert_eq!(problems.len(), 2, "{problems:?}");
                problems.join("\n")
            }
            Ok(_) => panic!("damage not found"),
        };
        assert!(
            why.contains("a.bin has sha256") && why.contains("the manifest says"),
            "{why}"
        );
    }

    #[test]
    fn partial_names_order_mid_epoch_checkpoints_between_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        for (e, st) in [(2, 0), (1, 0), (1, 30), (2, 7)] {
            fs::create_dir_all(cache.partial_dir("k").join(partial_name(e, st))).unwrap();
        }
        fs::create_dir_all(cache.partial_dir("k").join("epoch-x")).unwrap();
        let got: Vec<(u64, u64)> = cache
            .partials("k")
            .into_iter()
            .map(|(e, s, _)| (e, s))
            .collect();
        assert_eq!(got, vec![(1, 0), (1, 30), (2, 0), (2, 7)]);
        assert_eq!(parse_partial(&partial_name(3, 12)), Some((3, 12)));
    }
}
