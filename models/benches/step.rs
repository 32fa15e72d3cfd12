//! Training-step benchmark: `cargo bench -p samlab-models --bench step`.
//!
//! For ResNet-8, ResNet-20, WRN-16-2 and ResNet-18 at batch 128 on the CPU:
//! a training step (forward in training mode + cross-entropy + backward + an
//! SGD update of every parameter) and an evaluation forward (`Model::infer`,
//! as the runner evaluates), in images per
//! second; the process's peak RSS after each net; and the same numbers from
//! PyTorch (`bench/torch_cpu_step.py`: the better of NCHW and channels_last,
//! oneDNN's convolutions) and from JAX (`bench/jax_step.py`, ResNet-8 and
//! ResNet-18), run in the same command, with the ratios samlab / PyTorch and
//! samlab / JAX; a baseline that cannot run (no torch, no jax) says `n/a`.
//! samlab and PyTorch alternate over `SAMLAB_BENCH_ROUNDS` rounds (default
//! 3) per net; the table gives medians, and for PyTorch the median
//! per-round ratio with the lowest and highest: on a shared machine whose
//! speed drifts within minutes, one round's ratio was seen off by a third
//! (docs/cpu-profile.md). Every side times the same steps after the same number of untimed warm-up
//! steps (samlab's first steps grow per-thread buffers and the allocator's
//! pages; JAX's first compiles). Set `SAMLAB_BENCH_STEPS` and
//! `SAMLAB_BENCH_WARMUP` to change them (defaults: 5 and 3 for the small
//! nets, 2 and 2 for ResNet-18), `SAMLAB_BENCH_PYTHON` for the Python
//! that has torch and jax (default `python3`), and `SAMLAB_BENCH_NETS`
//! (comma-separated, e.g. `resnet8,resnet18`) to run only some nets.
//!
//! A second table gives the distance to the machine's limit: each side's
//! achieved GFLOP/s and its fraction of the f32 FMA peak measured in the
//! same process (`common/fma.rs`, the `peak` bench's loop), before and
//! after the networks, the better reading taken. FLOPs per image are the
//! convolutions' and the linear layer's multiply-adds, 2 FLOPs each
//! (`Model::forward_flops_per_image`); a training step counts three times
//! the forward pass (the forward products, then the same number for the
//! input gradient and for the weight gradient), evaluation once.

use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use samlab_models::{Arch, Model, fixtures};

#[path = "common/fma.rs"]
mod fma;

// The allocator the runner uses: it keeps freed pages, where the system
// allocator returns large buffers to the kernel and faults them in again
// (about 18% of a CPU step; docs/cpu-profile.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One net's medians, for the table of the distance to the peak.
struct Rates {
    name: &'static str,
    /// Forward FLOPs per image.
    flops: usize,
    /// samlab's img/s.
    train: f64,
    eval: f64,
    /// PyTorch's img/s.
    torch_train: Option<f64>,
    torch_eval: Option<f64>,
}

fn train_step(m: &Model, x: &Tensor, y: &Tensor) {
    fixtures::plain_sgd_step(m, x, y, 0.01).unwrap();
}

/// (train img/s, eval img/s) of a baseline script in `bench/`.
fn baseline(
    what: &str,
    script: &str,
    model: &str,
    batch: usize,
    steps: usize,
    warmup: usize,
) -> Option<(f64, f64)> {
    let script = format!("{}/../bench/{script}", env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("SAMLAB_BENCH_PYTHON").unwrap_or("python3".into());
    let out = Command::new(python)
        .args([
            &script,
            model,
            &batch.to_string(),
            &steps.to_string(),
            &warmup.to_string(),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "{what} baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()?
        .to_string();
    let field = |k: &str| -> Option<f64> {
        let at = line.find(&format!("\"{k}\": "))? + k.len() + 4;
        line[at..].split([',', '}']).next()?.trim().parse().ok()
    };
    Some((field("train_img_s")?, field("eval_img_s")?))
}

fn main() {
    samlab_models::keep_freed_pages();
    // SAFETY: first thing in main, no other thread yet.
    unsafe { samlab_models::shorten_candle_spin() };
    let bs = 128;
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<usize>().ok());
    let (steps_env, warmup_env) = (env("SAMLAB_BENCH_STEPS"), env("SAMLAB_BENCH_WARMUP"));
    let rounds = env("SAMLAB_BENCH_ROUNDS").unwrap_or(3).max(1);
    let nets: Option<Vec<String>> = std::env::var("SAMLAB_BENCH_NETS")
        .ok()
        .map(|v| v.split(',').map(|n| n.trim().to_string()).collect());
    let peak_before = fma::measure(0.2, 3);
    let mut rates: Vec<Rates> = Vec::new();
    println!(
        "training step, batch {bs}, CPU ({} threads), f32",
        rayon_threads()
    );
    println!(
        "{:<9} {:>11} {:>11} {:>9} | {:>11} {:>11} {:>19} {:>19} | {:>11} {:>11} {:>8} {:>8}",
        "model",
        "train img/s",
        "eval img/s",
        "peak MiB",
        "torch train",
        "torch eval",
        "train x",
        "eval x",
        "JAX train",
        "JAX eval",
        "train x",
        "eval x"
    );
    let cell = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}"));
    let ratio = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    for (name, default_steps, default_warmup) in [
        ("resnet8", 5, 3),
        ("resnet20", 5, 3),
        ("wrn16-2", 5, 3),
        ("resnet18", 2, 2),
    ]
    .into_iter()
    .filter(|(name, _, _)| nets.as_ref().is_none_or(|n| n.iter().any(|m| m == name)))
    {
        let steps = steps_env.unwrap_or(default_steps).max(1);
        let warmup = warmup_env.unwrap_or(default_warmup).max(1);
        let m = Model::new(&name.parse::<Arch>().unwrap(), 10, 0, &Device::Cpu).unwrap();
        let x = fixtures::images(bs, 7, &Device::Cpu).unwrap();
        let y = fixtures::labels(bs, &Device::Cpu).unwrap();
        // samlab and PyTorch alternate, round after round, so that a slow
        // phase of a shared machine hits both sides.
        let (mut ours, mut torch) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ours.push(samlab_rates(&m, &x, &y, bs, steps, warmup));
            torch.push(baseline(
                "PyTorch",
                "torch_cpu_step.py",
                name,
                bs,
                steps,
                warmup,
            ));
        }
        let flops = m.forward_flops_per_image(32, 32).unwrap();
        let rss = fixtures::peak_rss_mib();
        let train = median(ours.iter().map(|r| r.0).collect());
        let eval = median(ours.iter().map(|r| r.1).collect());
        let torch: Option<Vec<(f64, f64)>> = torch.into_iter().collect();
        let (torch_train, torch_eval, train_x, eval_x) = match &torch {
            Some(t) => (
                Some(median(t.iter().map(|r| r.0).collect())),
                Some(median(t.iter().map(|r| r.1).collect())),
                Some(spread(ours.iter().zip(t).map(|(o, t)| o.0 / t.0).collect())),
                Some(spread(ours.iter().zip(t).map(|(o, t)| o.1 / t.1).collect())),
            ),
            None => (None, None, None, None),
        };
        rates.push(Rates {
            name,
            flops,
            train,
            eval,
            torch_train,
            torch_eval,
        });
        let jax = match name {
            "resnet8" | "resnet18" => baseline("JAX", "jax_step.py", name, bs, steps, warmup),
            _ => None,
        };
        println!(
            "{name:<9} {train:>11.1} {eval:>11.1} {rss:>9.0} | {:>11} {:>11} {:>19} {:>19} | {:>11} {:>11} {:>8} {:>8}",
            cell(torch_train),
            cell(torch_eval),
            train_x.unwrap_or("n/a".into()),
            eval_x.unwrap_or("n/a".into()),
            cell(jax.map(|t| t.0)),
            cell(jax.map(|t| t.1)),
            ratio(jax.map(|t| train / t.0)),
            ratio(jax.map(|t| eval / t.1)),
        );
    }
    println!(
        "(img/s: medians over {rounds} rounds; x = samlab / baseline: for PyTorch the median of the \
         per-round ratios [lowest, highest]; PyTorch: the better of NCHW and channels_last; \
         JAX (one run, against samlab's median) only for ResNet-8 and ResNet-18; \
         peak MiB is the process high-water mark after that net)"
    );
    let peak_after = fma::measure(0.2, 3);
    let peak = peak_before.all.max(peak_after.all);
    println!();
    println!(
        "distance to the peak: f32 FMA peak ({}, {} threads) {peak:.1} GFLOP/s, the better of \
         {:.1} before and {:.1} after the nets (1 thread: {:.1}, {:.1})",
        peak_before.isa,
        peak_before.threads,
        peak_before.all,
        peak_after.all,
        peak_before.one,
        peak_after.one
    );
    println!(
        "{:<9} {:>10} | {:>13} {:>7} {:>13} {:>7} | {:>13} {:>7} {:>13} {:>7}",
        "model",
        "MFLOP/img",
        "train GFLOP/s",
        "of peak",
        "torch train",
        "of peak",
        "eval GFLOP/s",
        "of peak",
        "torch eval",
        "of peak"
    );
    let gflops = |img_s: f64, per_img: f64| img_s * per_img / 1e9;
    let cells = |v: Option<f64>| match v {
        Some(g) => (format!("{g:.1}"), format!("{:.1}%", 100.0 * g / peak)),
        None => ("n/a".to_string(), "n/a".to_string()),
    };
    for Rates {
        name,
        flops,
        train,
        eval,
        torch_train,
        torch_eval,
    } in rates
    {
        let (fwd, step) = (flops as f64, 3.0 * flops as f64);
        let (st, stp) = cells(Some(gflops(train, step)));
        let (tt, ttp) = cells(torch_train.map(|r| gflops(r, step)));
        let (se, sep) = cells(Some(gflops(eval, fwd)));
        let (te, tep) = cells(torch_eval.map(|r| gflops(r, fwd)));
        println!(
            "{name:<9} {:>10.2} | {st:>13} {stp:>7} {tt:>13} {ttp:>7} | {se:>13} {sep:>7} {te:>13} {tep:>7}",
            fwd / 1e6
        );
    }
    println!(
        "(GFLOP/s from the medians above; MFLOP/img: one forward pass, the convolutions' and \
         linear layer's multiply-adds x 2; a training step counts 3x that)"
    );
}

/// (train img/s, eval img/s) of samlab: `steps` timed steps after
/// `warmup` untimed ones, each.
fn samlab_rates(
    m: &Model,
    x: &Tensor,
    y: &Tensor,
    bs: usize,
    steps: usize,
    warmup: usize,
) -> (f64, f64) {
    for _ in 0..warmup {
        train_step(m, x, y);
    }
    let t = Instant::now();
    for _ in 0..steps {
        train_step(m, x, y);
    }
    let train = (bs * steps) as f64 / t.elapsed().as_secs_f64();
    // Evaluation as the runner evaluates (`Model::infer`, inference mode),
    // as PyTorch's side runs under `torch.inference_mode()`.
    for _ in 0..warmup {
        m.infer(x).unwrap();
    }
    let t = Instant::now();
    for _ in 0..steps {
        std::hint::black_box(m.infer(x).unwrap());
    }
    (train, (bs * steps) as f64 / t.elapsed().as_secs_f64())
}

/// The median (of an even count, the mean of the middle two).
fn median(v: Vec<f64>) -> f64 {
    use statrs::statistics::{Data, Median};
    Data::new(v).median()
}

/// `median [lowest, highest]` of per-round ratios.
fn spread(v: Vec<f64>) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    format!("{:.3} [{lo:.2}, {hi:.2}]", median(v))
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
