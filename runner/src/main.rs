//! `runner`: the samlab command line. Thin glue over the library crates.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use samlab_data::{Cifar100Labels, DataConfig, DatasetName, LoadOptions};
use samlab_runner::cache::{Cache, Lookup};
use samlab_runner::slurm;
use samlab_runner::{exec, plan, results, study};

// The allocator the runner uses: it keeps freed pages, where the system
// allocator returns large buffers to the kernel and faults them in again
// (about 18% of a CPU step; docs/cpu-profile.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc hands freed memory back to the kernel after a delay (1 s), and
/// later steps fault it in again as zeroed huge pages: 7,457 page faults and
/// about 7% more CPU time over 14 ResNet-8 steps (docs/cpu-profile.md).
/// Never purging keeps the pages of one step for the next.
fn keep_freed_pages() {
    // `mi_option_purge_delay` in mimalloc 3's option enum (libmimalloc-sys
    // 0.1.49 names no constant for it); -1 = never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets an allocator option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Sharpness-aware training studies: run a RON study file, reuse every
/// checkpoint already computed, write tables and plots under results/.
#[derive(Parser, Debug)]
#[command(name = "runner", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// The study file (RON) to run.
    study: Option<PathBuf>,

    #[command(flatten)]
    run: RunArgs,

    #[command(flatten)]
    data: DataArgs,
}

/// Options of a study run.
#[derive(Args, Debug)]
struct RunArgs {
    /// Recompute this stage even when cached: a stage name (every grid
    /// point) or one point (`name[seed=1]`). Repeatable.
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// Carry on with stages that do not depend on a failed one.
    #[arg(long)]
    keep_going: bool,
    /// `cpu`, `cuda` or `cuda:N` [default: the study's `device`, else cpu].
    #[arg(long)]
    device: Option<String>,
    /// Where the study's results go [default: results/<path of the study below studies/>].
    #[arg(long)]
    results_dir: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Where stages run: here, or as Slurm jobs over the shared cache.
    #[arg(long, value_enum, default_value = "local")]
    executor: Executor,
    /// Slurm: block until the study's jobs end, then write its results.
    #[arg(long)]
    wait: bool,
    /// Slurm: partition (`sbatch -p`).
    #[arg(long)]
    partition: Option<String>,
    /// Slurm: time limit per job (`sbatch -t`, e.g. 4:00:00).
    #[arg(long)]
    time: Option<String>,
    /// Slurm: CPUs per job (`sbatch -c`).
    #[arg(long)]
    cpus: Option<u32>,
    /// Slurm: memory per job (`sbatch --mem`, e.g. 16G).
    #[arg(long)]
    mem: Option<String>,
    /// Slurm: generic resources per job (`sbatch --gres`, e.g. gpu:1).
    #[arg(long)]
    gres: Option<String>,
    /// Slurm: one more `sbatch` argument (repeatable).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    sbatch_arg: Vec<String>,
    /// Slurm: folder for job scripts and logs [default: <cache>/slurm/logs].
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Compute only this stage (display name) and write no results: what a
    /// Slurm job runs.
    #[arg(long, value_name = "STAGE", hide = true)]
    only: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Executor {
    Local,
    Slurm,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Locate, load and describe a dataset (downloading it if needed and allowed).
    Data {
        /// cifar10 or cifar100.
        #[arg(default_value = "cifar10")]
        dataset: DatasetName,
        /// CIFAR-100 label set.
        #[arg(long, value_enum, default_value = "fine")]
        cifar100_labels: LabelsArg,
    },
    /// List the models with their parameter counts.
    Models,
    /// Check that a device works: `cpu`, `cuda` or `cuda:N`.
    Device {
        #[arg(default_value = "cpu")]
        device: String,
    },
    /// Compare a model's logits and gradients on a device with the CPU's
    /// (same fixed weights and batch); fails above the tolerance.
    CheckParity {
        #[arg(default_value = "cuda")]
        device: String,
        #[arg(long, default_value = "resnet8")]
        model: String,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Largest relative difference accepted.
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f64,
    },
    /// SGD and SAM training steps per second of a model on a device; prints
    /// one JSON line.
    BenchStep {
        #[arg(default_value = "cuda")]
        device: String,
        #[arg(long, default_value = "resnet18")]
        model: String,
        #[arg(long, default_value_t = 256)]
        batch: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
    },
    /// Show each stage of a study with its cache state and the work left.
    Plan { study: PathBuf },
    /// Summarise the cache: entries, shared prefixes, rolling checkpoints;
    /// with a study, each stage's cache state and Slurm job.
    Status { study: Option<PathBuf> },
    /// Remove cache entries that none of the given studies reaches (a dry
    /// run unless --delete).
    Gc {
        #[arg(required = true)]
        studies: Vec<PathBuf>,
        /// Delete instead of listing.
        #[arg(long)]
        delete: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LabelsArg {
    Fine,
    Coarse,
}

/// Where datasets come from; shared by every command.
#[derive(Args, Debug)]
struct DataArgs {
    /// Folder for downloads, source digests and the decoded cache
    /// [default: samlab/data under the user's cache directory].
    #[arg(long, env = "SAMLAB_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// CIFAR-10 source: the official folder or archive, or an image tree
    /// (folder, .tar or .tar.gz).
    #[arg(long, env = "SAMLAB_CIFAR10", global = true)]
    cifar10: Option<PathBuf>,
    /// CIFAR-100 source: the official folder or archive, or an image tree.
    #[arg(long, env = "SAMLAB_CIFAR100", global = true)]
    cifar100: Option<PathBuf>,
    /// Never download a missing dataset.
    #[arg(long, global = true)]
    no_download: bool,
    /// Base URL to download the official archives from.
    #[arg(long, env = "SAMLAB_CIFAR_MIRROR", global = true, default_value = samlab_data::OFFICIAL_BASE_URL)]
    mirror: String,
    /// The checkpoint cache [default: .samlab-cache in the current folder].
    #[arg(long, env = "SAMLAB_CACHE_DIR", global = true)]
    cache_dir: Option<PathBuf>,
}

impl DataArgs {
    fn config(&self, name: DatasetName) -> DataConfig {
        let mut cfg = DataConfig::new(
            self.data_dir
                .clone()
                .unwrap_or_else(samlab_data::default_data_dir),
        );
        cfg.source = match name {
            DatasetName::Cifar10 => self.cifar10.clone(),
            DatasetName::Cifar100 => self.cifar100.clone(),
        };
        cfg.download = !self.no_download;
        cfg.base_url = self.mirror.clone();
        cfg.progress = true;
        cfg
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".samlab-cache"))
    }

    /// Locates and loads a study's dataset; `download` may fetch it.
    fn dataset(&self, name: DatasetName, download: bool) -> Result<samlab_data::Dataset> {
        let mut cfg = self.config(name);
        cfg.download &= download;
        let source = samlab_data::locate(name, &cfg)?;
        let opts = LoadOptions {
            data_dir: cfg.data_dir.clone(),
            cifar100_labels: Cifar100Labels::Fine,
        };
        let (ds, _) =
            samlab_data::load(name, &source, &opts).with_context(|| format!("loading {name}"))?;
        Ok(ds)
    }
}

fn main() -> ExitCode {
    keep_freed_pages();
    // SAFETY: first thing in main, no other thread yet.
    unsafe { samlab_models::shorten_candle_spin() };
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match (cli.command, cli.study) {
        (
            Some(Command::Data {
                dataset,
                cifar100_labels,
            }),
            _,
        ) => {
            let labels = match cifar100_labels {
                LabelsArg::Fine => Cifar100Labels::Fine,
                LabelsArg::Coarse => Cifar100Labels::Coarse,
            };
            describe_dataset(&cli.data, dataset, labels)?;
            Ok(ExitCode::SUCCESS)
        }
        (Some(Command::Models), _) => {
            list_models()?;
            Ok(ExitCode::SUCCESS)
        }
        (Some(Command::Device { device }), _) => {
            check_device(&device)?;
            Ok(ExitCode::SUCCESS)
        }
        (
            Some(Command::CheckParity {
                device,
                model,
                batch,
                tolerance,
            }),
            _,
        ) => {
            let dev = samlab_runner::device::open(&device)?;
            let p = samlab_runner::check::parity(&model, &dev, candle_core::DType::F32, batch)?;
            println!(
                "{model} on {device} vs cpu, batch {batch}: logits {:.2e}, worst gradient {} {:.2e} (of {} parameters)",
                p.logits, p.worst_grad.0, p.worst_grad.1, p.params
            );
            if p.logits > tolerance || p.worst_grad.1 > tolerance {
                eprintln!("parity: above the tolerance {tolerance}");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        (
            Some(Command::BenchStep {
                device,
                model,
                batch,
                warmup,
                steps,
            }),
            _,
        ) => {
            let dev = samlab_runner::device::open(&device)?;
            let s = samlab_runner::check::speed(&model, &dev, batch, warmup, steps)?;
            println!(
                "{{\"model\": \"{model}\", \"device\": \"{device}\", \"batch\": {batch}, \"sgd_img_s\": {:.2}, \"sam_img_s\": {:.2}, \"sam_over_sgd_time\": {:.4}}}",
                s.sgd_img_s,
                s.sam_img_s,
                s.sgd_img_s / s.sam_img_s
            );
            Ok(ExitCode::SUCCESS)
        }
        (Some(Command::Plan { study }), _) => {
            show_plan(&cli.data, &study)?;
            Ok(ExitCode::SUCCESS)
        }
        (Some(Command::Status { study: None }), _) => {
            cache_status(&cli.data)?;
            Ok(ExitCode::SUCCESS)
        }
        (Some(Command::Status { study: Some(study) }), _) => {
            study_status(&cli.data, &study)?;
            Ok(ExitCode::SUCCESS)
        }
        (Some(Command::Gc { studies, delete }), _) => {
            gc(&cli.data, &studies, delete)?;
            Ok(ExitCode::SUCCESS)
        }
        (None, Some(study)) => run_study(&cli.data, &cli.run, &study),
        (None, None) => {
            eprintln!("runner: give a study file to run, or a command; see `runner --help`");
            Ok(ExitCode::from(2))
        }
    }
}

/// Writes to stdout; a reader that went away (`runner models | head`) ends
/// the output quietly instead of failing.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn describe_dataset(args: &DataArgs, name: DatasetName, labels: Cifar100Labels) -> Result<()> {
    let start = Instant::now();
    let mut o = String::new();
    let cfg = args.config(name);
    let source = samlab_data::locate(name, &cfg)?;
    let opts = LoadOptions {
        data_dir: cfg.data_dir.clone(),
        cifar100_labels: labels,
    };
    let (ds, report) =
        samlab_data::load(name, &source, &opts).with_context(|| format!("loading {name}"))?;
    let cache = if report.from_cache { "hit" } else { "written" };
    o += &format!("{name} from {}\n", source.describe());
    o += &format!("  source digest  {}\n", report.source_digest);
    o += &format!("  fingerprint    {}\n", ds.fingerprint);
    o += &format!(
        "  decoded cache  {} ({cache})\n",
        report.cache_file.display()
    );
    if let Some(why) = &report.repaired {
        o += &format!("  repaired       the cache was damaged ({why}) and was rebuilt\n");
    }
    o += &format!(
        "  classes ({})   {}\n",
        ds.num_classes(),
        ds.classes.join(", ")
    );
    for (split, data) in [("train", &ds.train), ("test", &ds.test)] {
        let counts = data.class_counts(ds.num_classes());
        o += &format!(
            "  {split:<5}          {} images of {}, {}..{} per class\n",
            data.len(),
            data.shape,
            counts.iter().min().unwrap_or(&0),
            counts.iter().max().unwrap_or(&0)
        );
    }
    o += &format!("  loaded in      {:.2} s\n", start.elapsed().as_secs_f64());
    emit(&o)
}

fn list_models() -> Result<()> {
    let mut o = String::new();
    o += &format!(
        "{:<18} {:>14} {:>14}  description\n",
        "model", "params (10)", "params (100)"
    );
    for (arch, about) in samlab_models::Arch::catalogue() {
        let count = |classes| -> Result<usize> {
            let m = samlab_models::Model::new(&arch, classes, 0, &candle_core::Device::Cpu)?;
            Ok(m.params.num_trainable())
        };
        o += &format!(
            "{:<18} {:>14} {:>14}  {about}\n",
            arch.name(),
            count(10)?,
            count(100)?
        );
    }
    o.push_str("\nOther depths and widths: resnetN (6n+2), preactresnetN (9n+2), wrnD-K (6n+4), pyramidnetN[-aALPHA] (6n+2).\n");
    emit(&o)
}

/// Opens `spec` (`cpu`, `cuda`, `cuda:N`) and runs a small product on it.
fn check_device(spec: &str) -> Result<()> {
    let device = samlab_runner::device::open(spec)?;
    let a = candle_core::Tensor::ones((64, 64), candle_core::DType::F32, &device)?;
    let sum = a.matmul(&a)?.sum_all()?.to_scalar::<f32>()?;
    anyhow::ensure!(
        sum == 64.0 * 64.0 * 64.0,
        "a 64x64 product on {spec} gave {sum}"
    );
    emit(&format!("{spec}: ok ({device:?})\n"))
}

/// Submits the study's uncached stages as Slurm jobs and prints what it did.
fn submit_slurm(
    data: &DataArgs,
    args: &RunArgs,
    path: &Path,
    study: &study::Study,
    planned: &[plan::Planned],
    cache: &Cache,
) -> Result<Vec<slurm::Submitted>> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut job_args = vec![
        abs(path).to_string_lossy().into_owned(),
        "--cache-dir".into(),
        abs(&cache.root).to_string_lossy().into_owned(),
        "-q".into(),
    ];
    for (flag, v) in [
        ("--data-dir", &data.data_dir),
        ("--cifar10", &data.cifar10),
        ("--cifar100", &data.cifar100),
    ] {
        if let Some(v) = v {
            job_args.push(flag.into());
            job_args.push(abs(v).to_string_lossy().into_owned());
        }
    }
    if data.no_download {
        job_args.push("--no-download".into());
    }
    if let Some(d) = &args.device {
        job_args.push("--device".into());
        job_args.push(d.clone());
    }
    let job = slurm::JobCommand {
        program: std::env::current_exe()?,
        args: job_args,
    };
    let opts = slurm::SlurmOptions {
        partition: args.partition.clone(),
        time: args.time.clone(),
        cpus: args.cpus,
        mem: args.mem.clone(),
        gres: args.gres.clone(),
        extra: args.sbatch_arg.clone(),
        log_dir: args.log_dir.as_deref().map(abs),
    };
    let submitted = slurm::submit(study, planned, cache, &opts, &job)?;
    let mut o = String::new();
    for s in &submitted {
        o += &format!(
            "{:<40} {:<10} {}\n",
            s.display,
            s.action,
            s.job.as_deref().unwrap_or("-")
        );
    }
    let n = submitted.iter().filter(|s| s.action == "submitted").count();
    o += &format!("{n} jobs submitted\n");
    emit(&o)?;
    Ok(submitted)
}

/// Each stage of a study: cache state, and its Slurm job where one was submitted.
fn study_status(data: &DataArgs, path: &Path) -> Result<()> {
    let study = study::load(path)?;
    let ds = data.dataset(study.dataset, true)?;
    let cache = Cache::open(&data.cache_dir())?;
    let info = exec::data_info(&ds);
    let planned = plan::plan(&study, Some(&info), Some(&cache))?;
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
        o += &format!(
            "{:<40} {:<12} {:<10} {state}\n",
            s.display(),
            cache_state,
            job.as_deref().unwrap_or("-")
        );
    }
    emit(&o)
}

fn run_study(data: &DataArgs, args: &RunArgs, path: &Path) -> Result<ExitCode> {
    let study = study::load(path)?;
    let device_name = args.device.clone().unwrap_or_else(|| study.device.clone());
    let device = samlab_runner::device::open(&device_name)?;
    for f in &args.force {
        if !study
            .stages
            .iter()
            .any(|s| s.name == *f || s.display() == *f)
        {
            let mut names: Vec<String> = study.stages.iter().map(|s| s.name.clone()).collect();
            names.dedup();
            anyhow::bail!(
                "--force {f}: no such stage in {}; valid choices: {}",
                path.display(),
                names.join(", ")
            );
        }
    }
    let ds = data.dataset(study.dataset, true)?;
    let cache = Cache::open(&data.cache_dir())?;
    let info = exec::data_info(&ds);
    let planned = plan::plan(&study, Some(&info), Some(&cache))?;
    let start = Instant::now();
    let mut opts = exec::RunOptions {
        force: args.force.clone(),
        keep_going: args.keep_going,
        device_name: device_name.clone(),
        quiet: args.quiet,
        only: args.only.clone(),
        cache_only: None,
    };
    if let Some(only) = &args.only {
        anyhow::ensure!(
            study.stages.iter().any(|s| s.display() == *only),
            "--only {only}: no such stage in {}",
            path.display()
        );
    }
    if args.executor == Executor::Slurm {
        let submitted = submit_slurm(data, args, path, &study, &planned, &cache)?;
        if !args.wait {
            return Ok(ExitCode::SUCCESS);
        }
        let jobs: Vec<String> = submitted.iter().filter_map(|s| s.job.clone()).collect();
        slurm::wait(&jobs, std::time::Duration::from_secs(2))?;
        opts.cache_only = Some("its Slurm job did not produce it (see the job logs)".into());
    }
    let reports = exec::run_study(&study, &planned, &ds, &device, &cache, &opts)?;
    if let Some(only) = &args.only {
        let r = reports
            .iter()
            .find(|r| r.display == *only)
            .expect("checked above");
        return match &r.state {
            exec::State::Ran | exec::State::Cached => {
                emit(&format!("{only}: done\n"))?;
                Ok(ExitCode::SUCCESS)
            }
            exec::State::Failed(e) => anyhow::bail!("{only}: {e}"),
            exec::State::NotRun(why) => anyhow::bail!("{only}: not run: {why}"),
        };
    }
    let dir = args
        .results_dir
        .clone()
        .unwrap_or_else(|| results::default_dir(path));
    let prov = results::Provenance {
        // argv[0] varies with how the binary was started; the name does not.
        command: std::iter::once("runner".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        commit: results::git_commit(),
        dataset: study.dataset.to_string(),
        fingerprint: info.fingerprint.clone(),
        device: device_name,
        runner_version: env!("CARGO_PKG_VERSION").into(),
    };
    results::write(&dir, &study, &reports, &cache, &prov)?;
    let mut o = String::new();
    let (mut cached, mut ran, mut failed, mut not_run) = (0, 0, 0, 0);
    for r in &reports {
        match &r.state {
            exec::State::Cached => cached += 1,
            exec::State::Ran => ran += 1,
            exec::State::Failed(e) => {
                failed += 1;
                o += &format!("FAILED   {}: {e}\n", r.display);
            }
            exec::State::NotRun(why) => {
                not_run += 1;
                o += &format!("NOT RUN  {}: {why}\n", r.display);
            }
        }
    }
    o += &format!(
        "{} stages: {ran} ran, {cached} cached, {failed} failed, {not_run} not run, in {:.2} s; results in {}\n",
        reports.len(),
        start.elapsed().as_secs_f64(),
        dir.display()
    );
    emit(&o)?;
    Ok(if failed + not_run == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn show_plan(data: &DataArgs, path: &Path) -> Result<()> {
    let study = study::load(path)?;
    let mut o = String::new();
    let ds = match data.dataset(study.dataset, false) {
        Ok(ds) => Some(ds),
        Err(e) => {
            o += &format!(
                "note: {} is not available here ({e:#}); showing the work without cache states\n",
                study.dataset
            );
            None
        }
    };
    let info = ds.as_ref().map(exec::data_info);
    let cache = Cache::existing(&data.cache_dir());
    let planned = plan::plan(&study, info.as_ref(), cache.as_ref())?;
    o += &format!(
        "{} ({} on {}): {} stages\n",
        path.display(),
        study.dataset,
        study.device,
        study.stages.len()
    );
    o += &format!(
        "{:<36} {:<9} {:<16} {:>7} {:>10}  {:<12} state\n",
        "stage", "kind", "model", "epochs", "to run", "key"
    );
    for (s, p) in study.stages.iter().zip(&planned) {
        let (model, epochs) = (s.spec.model().to_string(), s.spec.length());
        let key = p.key.as_deref().map(|k| &k[..12]).unwrap_or("-");
        o += &format!(
            "{:<36} {:<9} {:<16} {:>7} {:>10}  {:<12} {}\n",
            s.display(),
            s.spec.kind(),
            model,
            epochs,
            p.cost,
            key,
            p.status.describe()
        );
    }
    let total: u64 = planned.iter().map(|p| p.cost).sum();
    o += &format!("total to run: {total} SGD-step equivalents\n");
    emit(&o)
}

fn cache_status(data: &DataArgs) -> Result<()> {
    let root = data.cache_dir();
    let Some(cache) = Cache::existing(&root) else {
        return emit(&format!("no cache at {}\n", root.display()));
    };
    let mut o = format!("cache {}\n", root.display());
    let mut entries = Vec::new();
    let list = |sub: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    };
    let mut damaged = 0;
    for dir in list("entries") {
        match cache.check(&dir) {
            Lookup::Valid(_, m) => entries.push((m, Cache::size_of(&dir))),
            Lookup::Damaged(p, why) => {
                damaged += 1;
                o += &format!("  damaged  {}: {why}\n", p.display());
            }
            Lookup::Missing => {}
        }
    }
    o += &format!("{:<14} {:<9} {:>10}  stage\n", "key", "kind", "size");
    for (m, size) in &entries {
        let kind = m.info.get("kind").cloned().unwrap_or_else(|| {
            std::fs::read_to_string(cache.entry_dir(&m.key).join("summary.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<exec::SummaryFile>(&t).ok())
                .map(|s| s.kind)
                .unwrap_or_default()
        });
        o += &format!(
            "{:<14} {:<9} {:>10}  {}\n",
            &m.key[..12.min(m.key.len())],
            kind,
            mib(*size),
            m.stage
        );
    }
    let prefixes = list("prefixes");
    let partial = list("partial");
    let size = |v: &[PathBuf]| v.iter().map(|p| Cache::size_of(p)).sum::<u64>();
    o += &format!(
        "{} entries ({}), {damaged} damaged; {} shared-prefix checkpoints ({}); {} stages with rolling checkpoints ({})\n",
        entries.len(),
        mib(entries.iter().map(|e| e.1).sum()),
        prefixes.len(),
        mib(size(&prefixes)),
        partial.len(),
        mib(size(&partial)),
    );
    emit(&o)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn gc(data: &DataArgs, studies: &[PathBuf], delete: bool) -> Result<()> {
    let root = data.cache_dir();
    let Some(cache) = Cache::existing(&root) else {
        return emit(&format!("no cache at {}\n", root.display()));
    };
    let mut keep: HashSet<String> = HashSet::new();
    for path in studies {
        let study = study::load(path)?;
        let ds = data
            .dataset(study.dataset, false)
            .with_context(|| format!("{}: gc needs the dataset to compute keys", path.display()))?;
        let info = exec::data_info(&ds);
        for p in plan::plan(&study, Some(&info), None)? {
            keep.extend(p.key);
            if let Some(pp) = p.prefix {
                keep.extend(pp.keys.into_iter().filter(|k| !k.is_empty()));
            }
        }
    }
    let mut o = String::new();
    let (mut n, mut bytes) = (0, 0);
    for sub in ["entries", "prefixes", "partial"] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        dirs.sort();
        for dir in dirs {
            let name = dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if keep.contains(&name) {
                continue;
            }
            let size = Cache::size_of(&dir);
            n += 1;
            bytes += size;
            o += &format!(
                "{} {sub}/{name} ({})\n",
                if delete { "removed" } else { "would remove" },
                mib(size)
            );
            if delete {
                cache.discard(&dir)?;
            }
        }
    }
    o += &format!(
        "{n} unreachable cache directories, {}{}\n",
        mib(bytes),
        if delete || n == 0 {
            ""
        } else {
            "; run again with --delete to remove them"
        }
    );
    emit(&o)
}
