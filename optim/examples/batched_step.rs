//! The paper protocol's step, sequential against batched
//! (`samlab_optim::batched`), timed in one process: SGD with ghost
//! batches and SAM with m-sharpness over them, each form's steps in
//! alternating rounds (the order swapped every round), the median of the
//! per-round ratios printed.
//!
//! ```sh
//! cargo run --release -p samlab-optim --example batched_step -- \
//!     --model resnet8 --batch 128 --bn-batch 16 --chunk 16 --rounds 7 --steps 2
//! ```
//!
//! `--device cuda` (a build with `--features cuda`) runs it on the GPU;
//! `scripts/gpu-check.sh` does, at the thesis' 256 images as 8 x 32. The
//! last line is JSON: each form's median seconds per step and the median
//! ratio sequential / batched (above 1: the batched form is faster).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use samlab_models::{Arch, Model, fixtures};
use samlab_optim::{
    GhostForm, SamConfig, Sgd, SgdConfig, StepSettings, sam_step_with, sgd_step_with,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line: `--name value` pairs.
struct Args {
    device: String,
    model: String,
    batch: usize,
    bn_batch: usize,
    chunk: usize,
    rounds: usize,
    steps: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        device: "cpu".into(),
        model: "resnet8".into(),
        batch: 128,
        bn_batch: 16,
        chunk: 16,
        rounds: 7,
        steps: 2,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let (k, val) = match pair {
            [k, val] => (k.as_str(), val.as_str()),
            _ => return Err(format!("`{}` has no value", pair[0])),
        };
        let num = |s: &str| s.parse::<usize>().map_err(|e| format!("{k} {s}: {e}"));
        match k {
            "--device" => a.device = val.into(),
            "--model" => a.model = val.into(),
            "--batch" => a.batch = num(val)?,
            "--bn-batch" => a.bn_batch = num(val)?,
            "--chunk" => a.chunk = num(val)?,
            "--rounds" => a.rounds = num(val)?,
            "--steps" => a.steps = num(val)?,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if a.rounds == 0 || a.steps == 0 {
        return Err("--rounds and --steps must be at least 1".into());
    }
    Ok(a)
}

/// The median (of an even count, the mean of the middle two).
fn median(v: Vec<f64>) -> f64 {
    use statrs::statistics::{Data, Median};
    Data::new(v).median()
}

type Step<'a> = Box<dyn FnMut() -> Result<(), Box<dyn std::error::Error>> + 'a>;

/// Seconds per step of `steps` calls of `f`, the device synchronised.
fn time(dev: &Device, steps: usize, f: &mut Step<'_>) -> Result<f64, Box<dyn std::error::Error>> {
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..steps {
        f()?;
    }
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / steps as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { samlab_models::shorten_candle_spin() };
    samlab_models::keep_freed_pages();
    let a = args().map_err(|e| format!("{e}\nusage: batched_step [--device cpu|cuda] [--model NAME] [--batch N] [--bn-batch B] [--chunk M] [--rounds R] [--steps S]"))?;
    let dev = match a.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        d => return Err(format!("unknown device {d}").into()),
    };
    let arch: Arch = a.model.parse()?;
    let x = fixtures::images(a.batch, 7, &Device::Cpu)?.to_device(&dev)?;
    let y = Tensor::from_vec(
        (0..a.batch as u32).map(|i| i % 10).collect::<Vec<_>>(),
        a.batch,
        &Device::Cpu,
    )?
    .to_device(&dev)?;
    let mut sam = SamConfig::new(0.05);
    sam.chunk = Some(a.chunk);
    let sgd_cfg = SamConfig::new(0.0);
    // One model and optimiser per form and method, from the same start.
    let fresh = || -> Result<(Model, Sgd), Box<dyn std::error::Error>> {
        let m = Model::with_dtype(&arch, 10, 0, &dev, DType::F32)?;
        Ok((m, Sgd::new(SgdConfig::default())?))
    };
    let (m1, mut o1) = fresh()?;
    let (m2, mut o2) = fresh()?;
    let (m3, mut o3) = fresh()?;
    let (m4, mut o4) = fresh()?;
    let sgd_settings = StepSettings::sequential(&sgd_cfg, Some(a.bn_batch));
    let sam_settings = StepSettings::sequential(&sam, Some(a.bn_batch));
    let sgd_batched = StepSettings {
        ghost: GhostForm::Batched,
        ..sgd_settings
    };
    let sam_batched = StepSettings {
        ghost: GhostForm::Batched,
        ..sam_settings
    };
    let lr = 0.01;
    let mut forms: Vec<(&str, Step<'_>)> = vec![
        (
            "sgd sequential",
            Box::new(|| {
                sgd_step_with(&m1, &mut o1, &sgd_settings, &x, &y, lr)?;
                Ok(())
            }),
        ),
        (
            "sgd batched",
            Box::new(|| {
                sgd_step_with(&m2, &mut o2, &sgd_batched, &x, &y, lr)?;
                Ok(())
            }),
        ),
        (
            "sam sequential",
            Box::new(|| {
                sam_step_with(&m3, &mut o3, &sam_settings, &x, &y, lr)?;
                Ok(())
            }),
        ),
        (
            "sam batched",
            Box::new(|| {
                sam_step_with(&m4, &mut o4, &sam_batched, &x, &y, lr)?;
                Ok(())
            }),
        ),
    ];
    println!(
        "{} on {}: batch {} as slices of {}, SAM chunks of {}; {} rounds of {} steps per form",
        a.model, a.device, a.batch, a.bn_batch, a.chunk, a.rounds, a.steps
    );
    // Warm-up: one untimed step of each (scratch buffers, allocator pages,
    // cuDNN's algorithm search).
    for (_, f) in forms.iter_mut() {
        f()?;
    }
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); 4];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for r in 0..a.rounds {
        for (method, pair) in [(0usize, [0usize, 1]), (1, [2, 3])] {
            let order = if r % 2 == 0 { pair } else { [pair[1], pair[0]] };
            for i in order {
                let t = time(&dev, a.steps, &mut forms[i].1)?;
                secs[i].push(t);
            }
            let (s, b) = (secs[pair[0]][r], secs[pair[1]][r]);
            ratios[method].push(s / b);
        }
        println!(
            "round {r}: sgd {:.4} / {:.4} s = {:.3}, sam {:.4} / {:.4} s = {:.3}",
            secs[0][r], secs[1][r], ratios[0][r], secs[2][r], secs[3][r], ratios[1][r]
        );
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0f64, f64::max);
        (lo, hi)
    };
    for (m, name) in ["sgd", "sam"].iter().enumerate() {
        let (lo, hi) = range(&ratios[m]);
        println!(
            "{name}: sequential {:.4} s/step, batched {:.4} s/step (medians); sequential / batched {:.3} [{lo:.3}, {hi:.3}]",
            median(secs[2 * m].clone()),
            median(secs[2 * m + 1].clone()),
            median(ratios[m].clone())
        );
    }
    println!(
        "{{\"model\": \"{}\", \"device\": \"{}\", \"batch\": {}, \"bn_batch\": {}, \"chunk\": {}, \"sgd_sequential_s\": {:.6}, \"sgd_batched_s\": {:.6}, \"sgd_ratio\": {:.4}, \"sam_sequential_s\": {:.6}, \"sam_batched_s\": {:.6}, \"sam_ratio\": {:.4}}}",
        a.model,
        a.device,
        a.batch,
        a.bn_batch,
        a.chunk,
        median(secs[0].clone()),
        median(secs[1].clone()),
        median(ratios[0].clone()),
        median(secs[2].clone()),
        median(secs[3].clone()),
        median(ratios[1].clone())
    );
    Ok(())
}
