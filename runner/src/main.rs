//! `runner`: the samlab command line. Thin glue over the library crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use samlab_data::{Cifar100Labels, DataConfig, DatasetName, LoadOptions};

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
    data: DataArgs,
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
}

fn main() -> ExitCode {
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
        (None, Some(study)) => {
            eprintln!(
                "runner: cannot run {} yet: the study runner (RON studies, stage graph, \
                 checkpoint cache) is not built yet. What works today: `runner data cifar10` \
                 locates, decodes, caches and fingerprints a dataset.",
                study.display()
            );
            Ok(ExitCode::from(2))
        }
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
    let device = match spec {
        "cpu" => candle_core::Device::Cpu,
        _ => {
            let ordinal = match spec.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!("bad device `{spec}`; valid choices: cpu, cuda, cuda:N")
                    })?,
                None => anyhow::bail!("unknown device `{spec}`; valid choices: cpu, cuda, cuda:N"),
            };
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!(
                    "this runner was built without CUDA: build it with scripts/build-cuda.sh (cargo feature `cuda`)"
                );
            }
            candle_core::Device::new_cuda(ordinal).map_err(|e| {
                anyhow::anyhow!(
                    "no CUDA device: device {ordinal} could not be opened: {}",
                    without_backtrace(e)
                )
            })?
        }
    };
    let a = candle_core::Tensor::ones((64, 64), candle_core::DType::F32, &device)?;
    let sum = a.matmul(&a)?.sum_all()?.to_scalar::<f32>()?;
    anyhow::ensure!(
        sum == 64.0 * 64.0 * 64.0,
        "a 64x64 product on {spec} gave {sum}"
    );
    emit(&format!("{spec}: ok ({device:?})\n"))
}

/// A candle error's message without the backtrace candle attaches when
/// `RUST_BACKTRACE` is set.
fn without_backtrace(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other.to_string(),
    }
}
