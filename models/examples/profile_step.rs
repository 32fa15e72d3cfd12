//! Runs training steps of one model for a profiler:
//! `cargo build --release -p samlab-models --example profile_step` then
//! `perf record -e cpu-clock -g target/release/examples/profile_step resnet8 128 3`.
//!
//! Arguments: model name, batch size, steps, and `eval` to time evaluation
//! forwards instead. A training step is forward in training mode,
//! cross-entropy, backward, and a plain SGD update.

use candle_core::{Device, Tensor};
use samlab_models::{Arch, Model, cross_entropy, fixtures};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// As the runner does (runner/src/main.rs): mimalloc hands freed memory back to the kernel after a delay (1 s), and
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    keep_freed_pages();
    // SAFETY: first thing in main, no other thread yet.
    unsafe { samlab_models::shorten_candle_spin() };
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map(String::as_str).unwrap_or("resnet8");
    let batch: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let steps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let eval = args.get(4).map(String::as_str) == Some("eval");
    let model = Model::new(&name.parse::<Arch>()?, 10, 0, &Device::Cpu)?;
    let x = fixtures::images(batch, 7, &Device::Cpu)?;
    let y = Tensor::from_vec(
        (0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(),
        batch,
        &Device::Cpu,
    )?;
    for step in 0..steps {
        let t = std::time::Instant::now();
        if eval {
            std::hint::black_box(model.forward(&x, false)?);
            eprintln!("eval {step}: {:.3} s", t.elapsed().as_secs_f64());
            continue;
        }
        let loss = cross_entropy(&model.forward(&x, true)?, &y)?;
        let grads = loss.backward()?;
        for (_, var) in model.params.trainable() {
            if let Some(g) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor().detach() - (g.detach() * 0.01)?)?)?;
            }
        }
        eprintln!(
            "step {step}: loss {:.4}, {:.3} s",
            loss.to_scalar::<f32>()?,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
