//! `runner`: the samlab command line. The command-line definitions and
//! dispatch only; what each command does is `samlab_runner::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use samlab_data::{Cifar100Labels, DatasetName};
use samlab_models::Precision;
use samlab_runner::check::{ParityConfig, SpeedConfig};
use samlab_runner::commands::{self, GcMode, PlanView};
use samlab_runner::interrupt;
use samlab_runner::options::{DataArgs, RunArgs};

// The allocator the runner uses: it keeps freed pages, where the system
// allocator returns large buffers to the kernel and faults them in again
// (docs/cpu-profile.md has the measurement).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// `f32`, or `bf16`: autocast on the device, compared with the
        /// CPU's bf16 and (against the tolerance) with its f32.
        #[arg(long, default_value = "f32")]
        precision: Precision,
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
        /// `f32` or `bf16` (autocast).
        #[arg(long, default_value = "f32")]
        precision: Precision,
    },
    /// Show each stage of a study with its cache state and the work left.
    Plan {
        study: PathBuf,
        /// For every stage to run: the nearest cached entry of its kind and
        /// the fields whose values differ.
        #[arg(long)]
        why: bool,
        /// Measured rates for GPU-hours [default: results/gpu/rates.csv of
        /// the repository the study is in].
        #[arg(long)]
        rates: Option<PathBuf>,
    },
    /// Rebuild a study's results folder (tables, plots, page) from the cache
    /// alone; fails when a stage is not cached.
    Report {
        study: PathBuf,
        /// Where the results go [default: results/<path of the study below studies/>].
        #[arg(long)]
        results_dir: Option<PathBuf>,
    },
    /// Write the network a Train or Import stage left in the cache to a
    /// safetensors file (PyTorch-style names; `load_state_dict` reads it).
    Export {
        study: PathBuf,
        /// The run, as `runner plan` shows it: `sgd`, `sgd[seed=1]`.
        stage: String,
        /// The file to write (a new one).
        file: PathBuf,
    },
    /// Summarise the cache: entries, shared prefixes, rolling checkpoints;
    /// with a study, each stage's cache state and Slurm job.
    Status { study: Option<PathBuf> },
    /// Re-hash every cache directory (or those a study uses) against its
    /// manifest; name each damaged file with both digests; fail if any.
    Verify { study: Option<PathBuf> },
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

fn main() -> ExitCode {
    samlab_models::keep_freed_pages();
    // SAFETY: first thing in main, no other thread yet.
    unsafe { samlab_models::shorten_candle_spin() };
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<samlab_runner::Error>() {
                Some(e) if e.is_interrupted() => ExitCode::from(interrupt::EXIT_INTERRUPTED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let data = &cli.data;
    let text = match (cli.command, cli.study) {
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
            commands::describe_dataset(data, dataset, labels)?
        }
        (Some(Command::Models), _) => commands::list_models()?,
        (Some(Command::Device { device }), _) => commands::check_device(&device)?,
        (
            Some(Command::CheckParity {
                device,
                model,
                batch,
                precision,
                tolerance,
            }),
            _,
        ) => {
            let dev = samlab_runner::device::open(&device)?;
            let c = ParityConfig {
                model: model.clone(),
                batch,
                dtype: candle_core::DType::F32,
                precision,
                reference: precision,
            };
            let all = samlab_runner::check::parities(&dev, &c)?;
            for (of, p) in &all {
                emit(&format!(
                    "{model} {precision} on {device} vs cpu {of}, batch {batch}: logits {:.2e}, worst gradient {} {:.2e} (of {} parameters)\n",
                    p.logits, p.worst_grad.0, p.worst_grad.1, p.params
                ))?;
            }
            let p = &all.last().expect("at least one comparison").1;
            if p.logits > tolerance || p.worst_grad.1 > tolerance {
                eprintln!("parity: above the tolerance {tolerance}");
                return Ok(ExitCode::FAILURE);
            }
            return Ok(ExitCode::SUCCESS);
        }
        (
            Some(Command::BenchStep {
                device,
                model,
                batch,
                warmup,
                steps,
                precision,
            }),
            _,
        ) => {
            let dev = samlab_runner::device::open(&device)?;
            let c = SpeedConfig {
                model: model.clone(),
                batch,
                warmup,
                steps,
                precision,
            };
            let s = samlab_runner::check::speed(&dev, &c)?;
            format!(
                "{{\"model\": \"{model}\", \"device\": \"{device}\", \"precision\": \"{precision}\", \"batch\": {batch}, \"sgd_img_s\": {:.2}, \"sam_img_s\": {:.2}, \"sam_over_sgd_time\": {:.4}}}\n",
                s.sgd_img_s,
                s.sam_img_s,
                s.sgd_img_s / s.sam_img_s
            )
        }
        (Some(Command::Plan { study, why, rates }), _) => {
            commands::show_plan(data, &study, &PlanView { why, rates })?
        }
        (Some(Command::Report { study, results_dir }), _) => {
            commands::report(data, &study, results_dir, &argv())?
        }
        (Some(Command::Export { study, stage, file }), _) => {
            commands::export(data, &study, &stage, &file)?
        }
        (Some(Command::Status { study: None }), _) => commands::cache_status(data)?,
        (Some(Command::Status { study: Some(study) }), _) => commands::study_status(data, &study)?,
        (Some(Command::Verify { study }), _) => {
            let v = commands::verify(data, study.as_deref())?;
            emit(&v.text)?;
            return Ok(if v.intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        (Some(Command::Gc { studies, delete }), _) => {
            let mode = if delete {
                GcMode::Delete
            } else {
                GcMode::DryRun
            };
            commands::gc(data, &studies, mode)?
        }
        (None, Some(study)) => {
            // SIGTERM and Ctrl-C stop the run at the next step, saved.
            interrupt::install()?;
            let argv = argv();
            let mut early = |t: &str| {
                let _ = emit(t);
            };
            let r = commands::run_study(data, &cli.run, &study, &argv, &mut early)?;
            emit(&r.text)?;
            return Ok(if r.complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        (None, None) => {
            eprintln!("runner: give a study file to run, or a command; see `runner --help`");
            return Ok(ExitCode::from(2));
        }
    };
    emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The command line as run; argv[0] varies with how the binary was
/// started, the name does not.
fn argv() -> Vec<String> {
    std::iter::once("runner".to_string())
        .chain(std::env::args().skip(1))
        .collect()
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
