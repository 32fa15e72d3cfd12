//! Sustained SGD or SAM steps of ResNet-8 (batch 128, CPU) in one process,
//! for comparing the two without the alternation of `benches/sam_step.rs`:
//!
//! ```sh
//! cargo build --release -p samlab-optim --example sam_sustained
//! target/release/examples/sam_sustained sgd 40
//! target/release/examples/sam_sustained sam 20
//! ```
//!
//! Prints seconds per step after 5 untimed SGD steps.

use candle_core::{Device, Tensor};
use samlab_models::{Arch, Model, fixtures};
use samlab_optim::{SamConfig, Sgd, SgdConfig, sam_step, sgd_step};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { samlab_models::shorten_candle_spin() };
    let args: Vec<String> = std::env::args().collect();
    let sam = match args.get(1).map(String::as_str) {
        Some("sgd") => None,
        Some("sam") => Some(SamConfig::new(0.05)),
        _ => return Err("usage: sam_sustained sgd|sam STEPS".into()),
    };
    let steps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let model = Model::new(&"resnet8".parse::<Arch>()?, 10, 0, &Device::Cpu)?;
    let x = fixtures::images(128, 7, &Device::Cpu)?;
    let y = Tensor::from_vec(
        (0..128u32).map(|i| i % 10).collect::<Vec<_>>(),
        128,
        &Device::Cpu,
    )?;
    let mut opt = Sgd::new(SgdConfig::default())?;
    for _ in 0..5 {
        sgd_step(&model, &mut opt, &x, &y, 0.01)?;
    }
    let t = std::time::Instant::now();
    for _ in 0..steps {
        match &sam {
            Some(cfg) => sam_step(&model, &mut opt, cfg, &x, &y, 0.01)?,
            None => sgd_step(&model, &mut opt, &x, &y, 0.01)?,
        };
    }
    let kind = if sam.is_some() { "sam" } else { "sgd" };
    println!(
        "{kind} {:.4} s/step",
        t.elapsed().as_secs_f64() / steps as f64
    );
    Ok(())
}
