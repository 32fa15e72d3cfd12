//! Runs training steps of one model for a profiler:
//! `cargo build --release -p samlab-models --example profile_step` then
//! `perf record -e cpu-clock -g target/release/examples/profile_step resnet8 128 3`.
//!
//! Arguments: model name, batch size, steps, and `eval` to time evaluation
//! forwards instead. A training step is forward in training mode,
//! cross-entropy, backward, and a plain SGD update.

use candle_core::Device;
use samlab_models::{Arch, Model, fixtures};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    samlab_models::keep_freed_pages();
    // SAFETY: first thing in main, no other thread yet.
    unsafe { samlab_models::shorten_candle_spin() };
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map(String::as_str).unwrap_or("resnet8");
    let batch: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let steps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let eval = args.get(4).map(String::as_str) == Some("eval");
    let model = Model::new(&name.parse::<Arch>()?, 10, 0, &Device::Cpu)?;
    let x = fixtures::images(batch, 7, &Device::Cpu)?;
    let y = fixtures::labels(batch, &Device::Cpu)?;
    for step in 0..steps {
        let t = std::time::Instant::now();
        if eval {
            std::hint::black_box(model.infer(&x)?);
            eprintln!("eval {step}: {:.3} s", t.elapsed().as_secs_f64());
            continue;
        }
        let loss = fixtures::plain_sgd_step(&model, &x, &y, 0.01)?;
        eprintln!(
            "step {step}: loss {:.4}, {:.3} s",
            loss.to_scalar::<f32>()?,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
