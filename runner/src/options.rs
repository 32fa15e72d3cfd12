//! The options a study run takes, as command-line arguments (clap): where
//! data and the cache are ([`DataArgs`], global to every command) and how a
//! study runs ([`RunArgs`]). A Slurm job's command line is derived from the
//! same structs ([`job_args`]), so no flag can be dropped on the way to a
//! job: adding a field without deciding what a job gets fails to compile.

use std::path::{Path, PathBuf};

use clap::Args;
use samlab_data::{Cifar100Labels, DataConfig, Dataset, DatasetName, LoadOptions};

use crate::error::Result;
use crate::slurm::SlurmOptions;

/// Where datasets and the cache come from; shared by every command.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct DataArgs {
    /// Folder for downloads, source digests and the decoded cache
    /// [default: samlab/data under the user's cache directory].
    #[arg(long, env = "SAMLAB_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// CIFAR-10 source: the official folder or archive, or an image tree
    /// (folder, .tar or .tar.gz).
    #[arg(long, env = "SAMLAB_CIFAR10", global = true)]
    pub cifar10: Option<PathBuf>,
    /// CIFAR-100 source: the official folder or archive, or an image tree.
    #[arg(long, env = "SAMLAB_CIFAR100", global = true)]
    pub cifar100: Option<PathBuf>,
    /// Never download a missing dataset.
    #[arg(long, global = true)]
    pub no_download: bool,
    /// Base URL to download the official archives from.
    #[arg(long, env = "SAMLAB_CIFAR_MIRROR", global = true, default_value = samlab_data::OFFICIAL_BASE_URL)]
    pub mirror: String,
    /// The checkpoint cache [default: .samlab-cache in the current folder].
    #[arg(long, env = "SAMLAB_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
}

impl DataArgs {
    pub fn config(&self, name: DatasetName) -> DataConfig {
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

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".samlab-cache"))
    }

    /// Locates and loads a dataset (fine CIFAR-100 labels); `download`
    /// says whether a missing one may be fetched.
    pub fn dataset(&self, name: DatasetName, download: bool) -> Result<Dataset> {
        let mut cfg = self.config(name);
        cfg.download &= download;
        let source = samlab_data::locate(name, &cfg)?;
        let opts = LoadOptions {
            data_dir: cfg.data_dir.clone(),
            cifar100_labels: Cifar100Labels::Fine,
        };
        Ok(samlab_data::load(name, &source, &opts)?.0)
    }
}

/// Where stages run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executor {
    Local,
    Slurm,
}

/// Options of a study run.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct RunArgs {
    /// Recompute this stage even when cached: a stage name (every grid
    /// point) or one point (`name[seed=1]`). Repeatable.
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Carry on with stages that do not depend on a failed one.
    #[arg(long)]
    pub keep_going: bool,
    /// `cpu`, `cuda` or `cuda:N` [default: the study's `device`, else cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Where the study's results go [default: results/<path of the study below studies/>].
    #[arg(long)]
    pub results_dir: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Where stages run: here, or as Slurm jobs over the shared cache.
    #[arg(long, value_enum, default_value = "local")]
    pub executor: Executor,
    /// Slurm: block until the study's jobs end, then write its results.
    #[arg(long)]
    pub wait: bool,
    /// Slurm: partition (`sbatch -p`).
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm: time limit per job (`sbatch -t`, e.g. 4:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// Slurm: CPUs per job (`sbatch -c`).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Slurm: memory per job (`sbatch --mem`, e.g. 16G).
    #[arg(long)]
    pub mem: Option<String>,
    /// Slurm: generic resources per job (`sbatch --gres`, e.g. gpu:1).
    #[arg(long)]
    pub gres: Option<String>,
    /// Slurm: one more `sbatch` argument (repeatable).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub sbatch_arg: Vec<String>,
    /// Slurm: folder for job scripts and logs [default: <cache>/slurm/logs].
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Training: also write a rolling checkpoint mid-epoch once this much
    /// time has passed since the last one (`90s`, `10m`, `2h`; a bare
    /// number is seconds), for epochs longer than a preemption's warning.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub checkpoint_every: Option<std::time::Duration>,
    /// Compute only this stage (display name) and write no results: what a
    /// Slurm job runs.
    #[arg(long, value_name = "STAGE", hide = true)]
    pub only: Option<String>,
    /// A Slurm job's: when a signal interrupts the stage (preemption, the
    /// time limit's `--signal`), requeue this job after its checkpoint is
    /// saved (`scontrol requeue $SLURM_JOB_ID`), so that it resumes.
    #[arg(long, hide = true)]
    pub requeue_on_interrupt: bool,
}

impl RunArgs {
    /// What `sbatch` is given.
    pub fn slurm_options(&self) -> SlurmOptions {
        SlurmOptions {
            partition: self.partition.clone(),
            time: self.time.clone(),
            cpus: self.cpus,
            mem: self.mem.clone(),
            gres: self.gres.clone(),
            extra: self.sbatch_arg.clone(),
            log_dir: self.log_dir.as_deref().map(absolute),
        }
    }
}

/// `90`, `90s`, `10m`, `2h` (also fractional: `1.5h`) as a duration.
pub fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("`{text}`: the unit must be s, m or h (e.g. 10m)")),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(std::time::Duration::from_secs_f64(v * scale)),
        _ => Err(format!(
            "`{text}` is not a positive duration (e.g. 90s, 10m, 2h)"
        )),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The arguments a Slurm job of `study` starts with, before `--only STAGE`:
/// the study and every data and cache setting (paths made absolute, since a
/// job may start elsewhere), and the run options a single stage needs.
pub fn job_args(study: &Path, data: &DataArgs, run: &RunArgs) -> Vec<String> {
    let path = |p: &Path| absolute(p).to_string_lossy().into_owned();
    let mut a = vec![path(study), "-q".to_string()];
    // Every field named: a new one must be decided on here.
    let DataArgs {
        data_dir,
        cifar10,
        cifar100,
        no_download,
        mirror,
        cache_dir: _, // always given, defaulted, below
    } = data;
    a.extend(["--cache-dir".to_string(), path(&data.cache_dir())]);
    for (flag, v) in [
        ("--data-dir", data_dir),
        ("--cifar10", cifar10),
        ("--cifar100", cifar100),
    ] {
        if let Some(v) = v {
            a.extend([flag.to_string(), path(v)]);
        }
    }
    if *no_download {
        a.push("--no-download".into());
    }
    a.extend(["--mirror".to_string(), mirror.clone()]);
    let RunArgs {
        device,
        // A job computes one stage, quietly, here, and writes no results;
        // forcing and Slurm's own settings were applied when it was submitted.
        force: _,
        keep_going: _,
        results_dir: _,
        quiet: _,
        executor: _,
        wait: _,
        partition: _,
        time: _,
        cpus: _,
        mem: _,
        gres: _,
        sbatch_arg: _,
        log_dir: _,
        // Both given by the job script itself (slurm::submit).
        only: _,
        requeue_on_interrupt: _,
        checkpoint_every,
    } = run;
    if let Some(d) = device {
        a.extend(["--device".to_string(), d.clone()]);
    }
    if let Some(d) = checkpoint_every {
        a.extend([
            "--checkpoint-every".to_string(),
            format!("{}s", d.as_secs_f64()),
        ]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        study: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        data: DataArgs,
    }

    /// Every global flag set on the submitting command line reaches the
    /// job: parsing the job's arguments gives the same data settings
    /// (paths absolute) and device.
    #[test]
    fn a_job_gets_every_data_flag_and_the_device() {
        let given = Cli::try_parse_from([
            "runner",
            "studies/x.ron",
            "--data-dir",
            "d",
            "--cifar10",
            "c10.tar.gz",
            "--cifar100",
            "/abs/c100",
            "--no-download",
            "--mirror",
            "http://mirror.invalid/cifar",
            "--cache-dir",
            "cache",
            "--device",
            "cuda:1",
            "--executor",
            "slurm",
            "--partition",
            "gpu",
            "--force",
            "sgd",
            "--checkpoint-every",
            "10m",
        ])
        .unwrap();
        let args = job_args(&given.study, &given.data, &given.run);
        let job =
            Cli::try_parse_from(std::iter::once("runner".to_string()).chain(args.clone())).unwrap();
        let abs = |p: &str| Some(absolute(Path::new(p)));
        assert_eq!(job.study, absolute(Path::new("studies/x.ron")));
        assert_eq!(
            job.data,
            DataArgs {
                data_dir: abs("d"),
                cifar10: abs("c10.tar.gz"),
                cifar100: abs("/abs/c100"),
                no_download: true,
                mirror: "http://mirror.invalid/cifar".into(),
                cache_dir: abs("cache"),
            }
        );
        assert_eq!(job.run.device.as_deref(), Some("cuda:1"));
        assert_eq!(
            job.run.checkpoint_every,
            Some(std::time::Duration::from_secs(600))
        );
        assert!(job.run.quiet);
        assert_eq!(job.run.executor, Executor::Local, "{args:?}");
        assert!(job.run.force.is_empty() && job.run.partition.is_none());
    }

    #[test]
    fn a_job_without_settings_still_names_the_cache_and_mirror() {
        let given = Cli::try_parse_from(["runner", "s.ron"]).unwrap();
        let args = job_args(&given.study, &given.data, &given.run);
        assert!(args.contains(&"--cache-dir".to_string()), "{args:?}");
        assert!(args.contains(&"--mirror".to_string()), "{args:?}");
        assert!(!args.contains(&"--device".to_string()), "{args:?}");
    }

    #[test]
    fn durations_parse_with_units_and_bad_ones_are_named() {
        let d = |t| parse_duration(t).map(|d| d.as_secs_f64());
        assert_eq!(d("90"), Ok(90.0));
        assert_eq!(d("90s"), Ok(90.0));
        assert_eq!(d("10m"), Ok(600.0));
        assert_eq!(d("1.5h"), Ok(5400.0));
        for bad in ["", "0", "-3m", "10d", "m", "nan"] {
            let e = d(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
    }
}
