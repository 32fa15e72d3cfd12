//! What each `runner` command does, as functions that return the text to
//! print. The binary only parses the command line and calls these.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use samlab_data::{Cifar100Labels, DatasetName, LoadOptions};

use crate::cache::{Cache, Lookup, Verify};
use crate::error::{ErrorKind, Result};
use crate::exec::{self, State, Tally};
use crate::options::{DataArgs, Executor, RunArgs, job_args};
use crate::plan::{self, DataInfo};
use crate::{results, slurm, study};

/// `runner data`: where a dataset comes from, its fingerprint, classes and counts.
pub fn describe_dataset(
    args: &DataArgs,
    name: DatasetName,
    labels: Cifar100Labels,
) -> Result<String> {
    let start = Instant::now();
    let mut o = String::new();
    let cfg = args.config(name);
    let source = samlab_data::locate(name, &cfg)?;
    let opts = LoadOptions {
        data_dir: cfg.data_dir.clone(),
        cifar100_labels: labels,
    };
    let (ds, report) = samlab_data::load(name, &source, &opts)?;
    let cache = if report.from_cache { "hit" } else { "written" };
    let _ = writeln!(o, "{name} from {}", source.describe());
    let _ = writeln!(o, "  source digest  {}", report.source_digest);
    let _ = writeln!(o, "  fingerprint    {}", ds.fingerprint);
    let _ = writeln!(
        o,
        "  decoded cache  {} ({cache})",
        report.cache_file.display()
    );
    if let Some(why) = &report.repaired {
        let _ = writeln!(
            o,
            "  repaired       the cache was damaged ({why}) and was rebuilt"
        );
    }
    let _ = writeln!(
        o,
        "  classes ({})   {}",
        ds.num_classes(),
        ds.classes.join(", ")
    );
    for (split, data) in [("train", &ds.train), ("test", &ds.test)] {
        let counts = data.class_counts(ds.num_classes());
        let _ = writeln!(
            o,
            "  {split:<5}          {} images of {}, {}..{} per class",
            data.len(),
            data.shape,
            counts.iter().min().unwrap_or(&0),
            counts.iter().max().unwrap_or(&0)
        );
    }
    let _ = writeln!(o, "  loaded in      {:.2} s", start.elapsed().as_secs_f64());
    Ok(o)
}

/// `runner models`: the catalogue with parameter counts.
pub fn list_models() -> Result<String> {
    let mut o = format!(
        "{:<18} {:>14} {:>14}  description\n",
        "model", "params (10)", "params (100)"
    );
    for (arch, about) in samlab_models::Arch::catalogue() {
        let count = |classes| -> Result<usize> {
            let m = samlab_models::Model::new(&arch, classes, 0, &candle_core::Device::Cpu)?;
            Ok(m.params.num_trainable())
        };
        let _ = writeln!(
            o,
            "{:<18} {:>14} {:>14}  {about}",
            arch.name(),
            count(10)?,
            count(100)?
        );
    }
    o.push_str("\nOther depths and widths: resnetN (6n+2), preactresnetN (9n+2), wrnD-K (6n+4), pyramidnetN[-aALPHA] (6n+2).\n");
    Ok(o)
}

/// `runner device`: opens a device and runs a small product on it.
pub fn check_device(spec: &str) -> Result<String> {
    let device = crate::device::open(spec)?;
    let a = candle_core::Tensor::ones((64, 64), candle_core::DType::F32, &device)?;
    let sum = a.matmul(&a)?.sum_all()?.to_scalar::<f32>()?;
    if sum != 64.0 * 64.0 * 64.0 {
        return Err(ErrorKind::Device(format!("a 64x64 product on {spec} gave {sum}")).into());
    }
    Ok(format!("{spec}: ok ({device:?})\n"))
}

/// How `runner plan` reports.
#[derive(Clone, Debug, Default)]
pub struct PlanView {
    /// For every stage to run, the nearest cached entry and what differs.
    pub why: bool,
    /// The rates file for GPU-hours (default: `results/gpu/rates.csv` of
    /// the repository the study is in).
    pub rates: Option<std::path::PathBuf>,
}

/// `results/gpu/rates.csv` beside the `studies` folder a study is in (the
/// current directory's otherwise).
pub fn default_rates(study: &Path) -> std::path::PathBuf {
    let abs = std::fs::canonicalize(study).unwrap_or_else(|_| study.to_path_buf());
    let root = abs
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "studies"))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    root.join("results/gpu/rates.csv")
}

/// `runner plan`: every stage with its cache state and cost, and the total.
pub fn show_plan(data: &DataArgs, path: &Path, view: &PlanView) -> Result<String> {
    let study = study::load(path)?;
    let mut o = String::new();
    let ds = match data.dataset(study.dataset, false) {
        Ok(ds) => Some(ds),
        Err(e) => {
            let _ = writeln!(
                o,
                "note: {} is not available here ({e}); showing the work without cache states",
                study.dataset
            );
            None
        }
    };
    let info = ds.as_ref().map(DataInfo::of);
    let cache = Cache::existing(&data.cache_dir());
    let planned = plan::plan(&study, info.as_ref(), cache.as_ref())?;
    let _ = writeln!(
        o,
        "{} ({} on {}): {} stages",
        path.display(),
        study.dataset,
        study.device,
        study.stages.len()
    );
    let _ = writeln!(
        o,
        "{:<36} {:<11} {:<16} {:>7} {:>10}  {:<12} state",
        "stage", "kind", "model", "epochs", "to run", "key"
    );
    for (s, p) in study.stages.iter().zip(&planned) {
        let key = p.key.as_deref().map(|k| &k[..12]).unwrap_or("-");
        let _ = writeln!(
            o,
            "{:<36} {:<11} {:<16} {:>7} {:>10}  {:<12} {}",
            s.display(),
            s.spec.kind(),
            s.spec.model().name(),
            s.spec.length(),
            show_cost(p.cost),
            key,
            p.status.describe()
        );
    }
    let total: f64 = planned.iter().map(|p| p.cost).sum();
    let _ = writeln!(o, "total to run: {} SGD-step equivalents", show_cost(total));
    if study.device != "cpu" {
        let file = view.rates.clone().unwrap_or_else(|| default_rates(path));
        match crate::rates::Rates::load(&file)? {
            None => {
                let _ = writeln!(
                    o,
                    "GPU-hours: no measured rates yet ({}; scripts/gpu-check.sh on a GPU writes them)",
                    file.display()
                );
            }
            Some(rates) => {
                let e = crate::rates::estimate(&study, &planned, &rates, &study.device);
                let _ = write!(
                    o,
                    "about {:.2} GPU-hours on {} at the rates measured in {}",
                    e.hours,
                    study.device,
                    file.display()
                );
                if !e.unmeasured.is_empty() {
                    let _ = write!(o, "; no rate for {}", e.unmeasured.join(", "));
                }
                if e.left_out > 0.0 {
                    let _ = write!(
                        o,
                        "; {} SGD-step equivalents of evaluation and measurement not counted",
                        show_cost(e.left_out)
                    );
                }
                o.push('\n');
            }
        }
    }
    if view.why {
        o.push_str(&explain(&study, &planned, cache.as_ref(), info.is_some()));
    }
    Ok(o)
}

/// A cost in SGD-step equivalents: whole numbers as such.
fn show_cost(c: f64) -> String {
    if c.fract() == 0.0 {
        format!("{c}")
    } else {
        format!("{c:.1}")
    }
}

/// The `--why` part of `runner plan`.
fn explain(
    study: &study::Study,
    planned: &[plan::Planned],
    cache: Option<&Cache>,
    keyed: bool,
) -> String {
    let mut o = String::from("\nwhy each stage to run is not cached:\n");
    let Some(cache) = cache.filter(|_| keyed) else {
        o.push_str("  (no cache here, or the dataset is unavailable: nothing to compare with)\n");
        return o;
    };
    let whys = plan::why(planned, cache);
    if whys.is_empty() {
        o.push_str("  every stage is cached\n");
    }
    // Which stage each key belongs to, to name changed dependencies.
    let by_key = |k: &str| {
        study
            .stages
            .iter()
            .zip(planned)
            .find(|(_, p)| p.key.as_deref() == Some(k))
            .map(|(s, _)| s.display())
    };
    for w in whys {
        let stage = &study.stages[w.index];
        match &w.nearest {
            None => {
                let _ = writeln!(
                    o,
                    "  {}: no cached {} stage to compare with",
                    stage.display(),
                    stage.spec.kind()
                );
            }
            Some((key, changes)) => {
                let _ = writeln!(
                    o,
                    "  {}: nearest cached entry {} differs in {} field{}:",
                    stage.display(),
                    &key[..12.min(key.len())],
                    changes.len(),
                    if changes.len() == 1 { "" } else { "s" }
                );
                for c in changes {
                    let show = |v: &Option<serde_json::Value>| {
                        v.as_ref().map_or("(absent)".into(), |v| v.to_string())
                    };
                    let path = c.path.strip_prefix("spec.").unwrap_or(&c.path);
                    let mut line = format!("    {path}: {} -> {}", show(&c.old), show(&c.new));
                    if let (Some(role), Some(serde_json::Value::String(k))) =
                        (c.path.strip_prefix("deps."), &c.new)
                        && let Some(d) = by_key(k)
                    {
                        line += &format!(" (its `{role}` stage {d} changed)");
                    }
                    let _ = writeln!(o, "{line}");
                }
            }
        }
    }
    o
}

/// `runner status STUDY`: each stage's cache state and Slurm job.
pub fn study_status(data: &DataArgs, path: &Path) -> Result<String> {
    let study = study::load(path)?;
    let ds = data.dataset(study.dataset, true)?;
    let cache = Cache::open(&data.cache_dir())?;
    let planned = plan::plan(&study, Some(&DataInfo::of(&ds)), Some(&cache))?;
    let queue = slurm::queue().unwrap_or_default();
    let mut o = format!("{:<40} {:<12} {:<10} job state\n", "stage", "cache", "job");
    for (s, p) in study.stages.iter().zip(&planned) {
        let key = p.key.clone().unwrap_or_default();
        let cache_state = match p.status {
            plan::Status::Cached => "cached",
            _ => "missing",
        };
        let job = slurm::recorded_job(&cache, &key);
        let state = match &job {
            None => "-".to_string(),
            Some(id) => queue
                .values()
                .find(|(j, _)| j == id)
                .map(|(_, st)| st.clone())
                .or_else(|| slurm::job_state(id))
                .unwrap_or_else(|| "ended".into()),
        };
        let _ = writeln!(
            o,
            "{:<40} {:<12} {:<10} {state}",
            s.display(),
            cache_state,
            job.as_deref().unwrap_or("-")
        );
    }
    Ok(o)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `runner status`: what the cache holds.
pub fn cache_status(data: &DataArgs) -> Result<String> {
    let root = data.cache_dir();
    let Some(cache) = Cache::existing(&root) else {
        return Ok(format!("no cache at {}\n", root.display()));
    };
    let st = cache.status();
    let mut o = format!("cache {}\n", root.display());
    for (p, why) in &st.damaged {
        let _ = writeln!(o, "  damaged  {}: {why}", p.display());
    }
    let _ = writeln!(o, "{:<14} {:<9} {:>10}  stage", "key", "kind", "size");
    for e in &st.entries {
        let _ = writeln!(
            o,
            "{:<14} {:<9} {:>10}  {}",
            &e.key[..12.min(e.key.len())],
            e.kind,
            mib(e.bytes),
            e.stage
        );
    }
    let _ = writeln!(
        o,
        "{} entries ({}), {} damaged; {} shared-prefix checkpoints ({}); {} stages with rolling checkpoints ({})",
        st.entries.len(),
        mib(st.entries.iter().map(|e| e.bytes).sum()),
        st.damaged.len(),
        st.prefixes.0,
        mib(st.prefixes.1),
        st.partial.0,
        mib(st.partial.1),
    );
    Ok(o)
}

/// The stages of the study at `path` with their keys, planned without a
/// cache (for `command`, which names the cache directories a study uses).
fn keyed(data: &DataArgs, path: &Path, command: &str) -> Result<Vec<plan::Planned>> {
    planned_keys(data, &study::load(path)?, path, command)
}

/// [`keyed`] for a study already loaded.
fn planned_keys(
    data: &DataArgs,
    study: &study::Study,
    path: &Path,
    command: &str,
) -> Result<Vec<plan::Planned>> {
    let ds = data.dataset(study.dataset, false).map_err(|e| {
        ErrorKind::Usage(format!(
            "{}: {command} needs the dataset to compute keys: {e}",
            path.display()
        ))
    })?;
    plan::plan(study, Some(&DataInfo::of(&ds)), None)
}

/// What `runner verify` found.
pub struct Verified {
    pub text: String,
    /// Whether every directory checked matches its manifest.
    pub intact: bool,
}

/// `runner verify [STUDY]`: re-hashes every file of every cache directory
/// (entries, shared prefixes, rolling checkpoints), or of those a study
/// uses, against its manifest; names each damaged file with both digests.
/// Removes nothing: a run recomputes what is damaged, `gc` removes what no
/// study reaches.
pub fn verify(data: &DataArgs, study: Option<&Path>) -> Result<Verified> {
    let start = Instant::now();
    let root = data.cache_dir();
    let Some(cache) = Cache::existing(&root) else {
        return Err(ErrorKind::Usage(format!("no cache at {}", root.display())).into());
    };
    let dirs: Vec<PathBuf> = match study {
        None => cache.checkpoint_dirs(),
        Some(path) => {
            let mut dirs = Vec::new();
            for p in keyed(data, path, "verify")? {
                let Some(key) = p.key else { continue };
                dirs.push(cache.entry_dir(&key));
                dirs.extend(cache.partials(&key).into_iter().map(|(_, _, d)| d));
                if let Some(pp) = p.prefix {
                    dirs.extend(
                        pp.keys
                            .iter()
                            .filter(|k| !k.is_empty())
                            .map(|k| cache.prefix_dir(k)),
                    );
                }
            }
            dirs.sort();
            dirs.dedup();
            dirs.retain(|d| d.is_dir());
            dirs
        }
    };
    let mut o = String::new();
    let (mut damaged, mut bytes) = (0usize, 0u64);
    for dir in &dirs {
        bytes += Cache::size_of(dir);
        if let Err(problems) = cache.inspect(dir, crate::cache::Verify::Full) {
            damaged += 1;
            let _ = writeln!(o, "damaged  {}", dir.display());
            for p in problems {
                let _ = writeln!(o, "  {p}");
            }
        }
    }
    let _ = writeln!(
        o,
        "{} cache directories checked ({}) in {:.2} s: {} intact, {damaged} damaged{}",
        dirs.len(),
        mib(bytes),
        start.elapsed().as_secs_f64(),
        dirs.len() - damaged,
        if damaged > 0 {
            " (a run recomputes them; nothing was removed)"
        } else {
            ""
        }
    );
    Ok(Verified {
        text: o,
        intact: damaged == 0,
    })
}

/// What `runner gc` does with what no study reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcMode {
    /// List only.
    DryRun,
    Delete,
}

/// `runner gc`: the cache directories none of `studies` reaches.
pub fn gc(data: &DataArgs, studies: &[PathBuf], mode: GcMode) -> Result<String> {
    let root = data.cache_dir();
    let Some(cache) = Cache::existing(&root) else {
        return Ok(format!("no cache at {}\n", root.display()));
    };
    let mut keep: HashSet<String> = HashSet::new();
    for path in studies {
        for p in keyed(data, path, "gc")? {
            keep.extend(p.key);
            if let Some(pp) = p.prefix {
                keep.extend(pp.keys.into_iter().filter(|k| !k.is_empty()));
            }
        }
    }
    let delete = mode == GcMode::Delete;
    let gone = cache.unreachable(&keep);
    let mut o = String::new();
    for u in &gone {
        let _ = writeln!(
            o,
            "{} {}/{} ({})",
            if delete { "removed" } else { "would remove" },
            u.area.as_str(),
            u.name,
            mib(u.bytes)
        );
        if delete {
            cache.discard(&u.path)?;
        }
    }
    let _ = writeln!(
        o,
        "{} unreachable cache directories, {}{}",
        gone.len(),
        mib(gone.iter().map(|u| u.bytes).sum()),
        if delete || gone.is_empty() {
            ""
        } else {
            "; run again with --delete to remove them"
        }
    );
    Ok(o)
}

/// What a study run did: the text to print and whether every stage is done.
pub struct RunResult {
    pub text: String,
    pub complete: bool,
}

/// `runner STUDY`: runs a study here or submits it to Slurm, then writes
/// its results folder. `argv` is recorded in the provenance; `emit` prints
/// what comes before the end (the Slurm submissions).
pub fn run_study(
    data: &DataArgs,
    args: &RunArgs,
    path: &Path,
    argv: &[String],
    emit: &mut dyn FnMut(&str),
) -> Result<RunResult> {
    let study = study::load(path)?;
    let device_name = args.device.clone().unwrap_or_else(|| study.device.clone());
    let device = crate::device::open(&device_name)?;
    for f in &args.force {
        if !study
            .stages
            .iter()
            .any(|s| s.name == *f || s.display() == *f)
        {
            let mut names: Vec<String> = study.stages.iter().map(|s| s.name.clone()).collect();
            names.dedup();
            return Err(ErrorKind::Usage(format!(
                "--force {f}: no such stage in {}; valid choices: {}",
                path.display(),
                names.join(", ")
            ))
            .into());
        }
    }
    if let Some(only) = &args.only
        && !study.stages.iter().any(|s| s.display() == *only)
    {
        return Err(ErrorKind::Usage(format!(
            "--only {only}: no such stage in {}",
            path.display()
        ))
        .into());
    }
    let ds = data.dataset(study.dataset, true)?;
    let cache = Cache::open(&data.cache_dir())?;
    let info = DataInfo::of(&ds);
    let planned = plan::plan(&study, Some(&info), Some(&cache))?;
    let start = Instant::now();
    let mut opts = exec::RunOptions {
        force: args.force.clone(),
        keep_going: args.keep_going,
        device_name: device_name.clone(),
        quiet: args.quiet,
        only: args.only.clone(),
        cache_only: None,
        checkpoint_every: args.checkpoint_every,
    };
    if args.executor == Executor::Slurm {
        let job = slurm::JobCommand {
            program: std::env::current_exe().map_err(crate::error::io(Path::new("runner")))?,
            args: job_args(path, data, args),
        };
        let submitted = slurm::submit(&study, &planned, &cache, &args.slurm_options(), &job)?;
        let mut o = String::new();
        for s in &submitted {
            let _ = writeln!(
                o,
                "{:<40} {:<10} {}",
                s.display,
                s.action,
                s.job.as_deref().unwrap_or("-")
            );
        }
        let n = submitted.iter().filter(|s| s.action == "submitted").count();
        let _ = writeln!(o, "{n} jobs submitted");
        if !args.wait {
            return Ok(RunResult {
                text: o,
                complete: true,
            });
        }
        emit(&o);
        let jobs: Vec<String> = submitted.iter().filter_map(|s| s.job.clone()).collect();
        slurm::wait(&jobs, std::time::Duration::from_secs(2))?;
        opts.cache_only = Some("its Slurm job did not produce it (see the job logs)".into());
    }
    let reports = exec::run_study(&study, &planned, &ds, &device, &cache, &opts)?;
    // An interrupted run writes no results: running it again resumes it.
    let interrupted: Option<crate::Error> = reports
        .iter()
        .find_map(|r| match &r.state {
            State::Failed(e) if e.is_interrupted() => Some(ErrorKind::Failed(e.clone()).into()),
            _ => None,
        })
        .or_else(|| {
            let signal = crate::interrupt::requested()?;
            let r = reports
                .iter()
                .find(|r| matches!(r.state, State::NotRun(_)))?;
            Some(
                ErrorKind::Interrupted {
                    stage: r.display.clone(),
                    signal,
                    at: "before it started".into(),
                }
                .into(),
            )
        });
    if let Some(e) = interrupted {
        if args.requeue_on_interrupt {
            // A Slurm job: to the queue again, to resume. Preemption may
            // have requeued it already; then this fails, and is only noted.
            match slurm::requeue_self() {
                Ok(id) => eprintln!("requeued Slurm job {id}"),
                Err(r) => eprintln!("note: {r}"),
            }
        }
        return Err(e);
    }
    if let Some(only) = &args.only {
        let r = reports
            .iter()
            .find(|r| r.display == *only)
            .expect("checked above");
        return match &r.state {
            State::Ran | State::Cached => Ok(RunResult {
                text: format!("{only}: done\n"),
                complete: true,
            }),
            State::Failed(e) => Err(ErrorKind::Failed(e.clone()).into()),
            State::NotRun(why) => Err(ErrorKind::Usage(format!("{only}: not run: {why}")).into()),
        };
    }
    let dir = args
        .results_dir
        .clone()
        .unwrap_or_else(|| results::default_dir(path));
    let prov = results::Provenance {
        command: argv.join(" "),
        commit: results::git_commit(),
        dataset: study.dataset.to_string(),
        fingerprint: info.fingerprint.clone(),
        device: device_name,
        runner_version: env!("CARGO_PKG_VERSION").into(),
    };
    results::write(&dir, &study, &reports, &cache, &prov)?;
    let tally = Tally::of(&reports);
    Ok(RunResult {
        text: format!(
            "{}, in {:.2} s; results in {}\n",
            tally.report(&reports),
            start.elapsed().as_secs_f64(),
            dir.display()
        ),
        complete: tally.complete(),
    })
}

/// `runner export STUDY STAGE FILE`: copies the network a stage left in
/// the cache (a Train stage's final weights, an Import stage's checkpoint)
/// to `file`, as safetensors with samlab's names (PyTorch's, without
/// `num_batches_tracked`, which `load_state_dict` fills in). `stage` is a
/// run as `runner plan` shows it (`sgd[seed=1]`).
pub fn export(data: &DataArgs, path: &Path, stage: &str, file: &Path) -> Result<String> {
    let study = study::load(path)?;
    let i = study
        .find(stage)
        .map_err(|m| ErrorKind::Usage(format!("{}: {m}", path.display())))?;
    let s = &study.stages[i];
    if s.spec.weights().is_none() {
        return Err(ErrorKind::Usage(format!(
            "{}: `{}` is a {} stage, which leaves no network; export a Train or Import stage",
            path.display(),
            s.display(),
            s.spec.kind()
        ))
        .into());
    }
    let planned = planned_keys(data, &study, path, "export")?;
    let key = planned[i]
        .key
        .clone()
        .expect("keys are known with the dataset");
    let root = data.cache_dir();
    let not_cached = || -> crate::Error {
        ErrorKind::Usage(format!(
            "`{}` (key {}) is not in the cache {}: run `runner {}` first",
            s.display(),
            &key[..12],
            root.display(),
            path.display()
        ))
        .into()
    };
    let cache = Cache::existing(&root).ok_or_else(not_cached)?;
    // Every file re-hashed: a damaged checkpoint is never copied out.
    let source = match cache.check_with(&cache.entry_dir(&key), Verify::Full) {
        Lookup::Valid(dir, _) => dir.join("model.safetensors"),
        Lookup::Missing => return Err(not_cached()),
        Lookup::Damaged(_, why) => {
            return Err(ErrorKind::Usage(format!(
                "`{}` is damaged in the cache ({why}): run `runner {}` to recompute it",
                s.display(),
                path.display()
            ))
            .into());
        }
    };
    if file.exists() {
        return Err(ErrorKind::Usage(format!(
            "{} exists; export writes a new file only (remove it or name another)",
            file.display()
        ))
        .into());
    }
    std::fs::copy(&source, file).map_err(|e| ErrorKind::Io {
        path: file.to_path_buf(),
        source: e,
    })?;
    Ok(format!(
        "{}: {} ({}, key {}) -> {}\n",
        path.display(),
        s.display(),
        s.spec.model(),
        &key[..12],
        file.display()
    ))
}

/// `runner report STUDY`: rebuilds the study's results folder from the
/// cache alone, training nothing; fails, naming them, when stages are not
/// in the cache.
pub fn report(
    data: &DataArgs,
    path: &Path,
    results_dir: Option<PathBuf>,
    argv: &[String],
) -> Result<String> {
    let start = Instant::now();
    let study = study::load(path)?;
    let root = data.cache_dir();
    let cache = Cache::existing(&root).ok_or_else(|| {
        ErrorKind::Usage(format!(
            "no cache at {}: run `runner {}` first",
            root.display(),
            path.display()
        ))
    })?;
    let ds = data.dataset(study.dataset, false)?;
    let info = DataInfo::of(&ds);
    let planned = plan::plan(&study, Some(&info), Some(&cache))?;
    let missing: Vec<String> = study
        .stages
        .iter()
        .zip(&planned)
        .filter(|(_, p)| p.status.to_compute())
        .map(|(s, _)| s.display())
        .collect();
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        return Err(ErrorKind::Usage(format!(
            "{} of {} stages are not in the cache {} ({}{}): run `runner {}` to compute them",
            missing.len(),
            study.stages.len(),
            root.display(),
            shown.join(", "),
            if missing.len() > 5 { ", ..." } else { "" },
            path.display()
        ))
        .into());
    }
    let mut devices: Vec<String> = Vec::new();
    let mut reports = Vec::new();
    for (i, (stage, p)) in study.stages.iter().zip(&planned).enumerate() {
        let key = p.key.clone().expect("keys are known with the dataset");
        let dir = cache.entry_dir(&key);
        // The plan checked every entry against its manifest.
        if let Some(m) = cache.manifest(&dir)
            && let Some(d) = m.info.get("device")
            && !devices.contains(d)
        {
            devices.push(d.clone());
        }
        reports.push(exec::StageReport {
            index: i,
            display: stage.display(),
            key,
            state: State::Cached,
            outcome: Default::default(),
            summary: Some(crate::cache::read_summary(&dir)?),
        });
    }
    let dir = results_dir.unwrap_or_else(|| results::default_dir(path));
    let prov = results::Provenance {
        command: argv.join(" "),
        commit: results::git_commit(),
        dataset: study.dataset.to_string(),
        fingerprint: info.fingerprint,
        device: if devices.is_empty() {
            "unknown".into()
        } else {
            devices.join("+")
        },
        runner_version: env!("CARGO_PKG_VERSION").into(),
    };
    results::write(&dir, &study, &reports, &cache, &prov)?;
    Ok(format!(
        "{} stages from the cache, in {:.2} s; results in {}\n",
        reports.len(),
        start.elapsed().as_secs_f64(),
        dir.display()
    ))
}
