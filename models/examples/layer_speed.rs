//! Times the CPU layers at the shapes of ResNet-8 and ResNet-18, batch 128:
//! `cargo run --release -p samlab-models --example layer_speed`.
//!
//! Convolutions: forward, both gradients (bwd) and the weight gradient
//! alone (dW), in GFLOP/s of the fastest of several calls (the minimum is
//! the figure least moved by other load on a shared machine).
//! dx ms is bwd's time less dW's: the input gradient. `SAMLAB_CPU_CONV=im2col`
//! times the im2col + gemm path where the direct kernel would run, and
//! `SAMLAB_CPU_CONV=col2im` the strided layers' input gradient by gemm +
//! col2im. `SAMLAB_LAYERS=<text>` keeps the layers whose name contains it. BatchNorm + ReLU in training mode: the best of
//! 30 forward passes and of 30 backward passes (backward of a sum of the
//! output, so candle's own sum backward is included), in ms.

use candle_core::{Device, Tensor, Var};
use samlab_models::Builder;
use samlab_models::layers::{BatchNorm2d, Conv2d, ConvSpec};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let batch = 128;
    // (name, cin, cout, kernel, stride, input size)
    let shapes = [
        ("r8 stem", 3, 16, 3, 1, 32),
        ("r8 l1", 16, 16, 3, 1, 32),
        ("r8 l2 down", 16, 32, 3, 2, 32),
        ("r8 l2", 32, 32, 3, 1, 16),
        ("r8 l2 short", 16, 32, 1, 2, 32),
        ("r8 l3 down", 32, 64, 3, 2, 16),
        ("r8 l3 short", 32, 64, 1, 2, 16),
        ("r8 l3", 64, 64, 3, 1, 8),
        ("w16 l2 down", 64, 64, 3, 2, 32),
        ("w16 l3 down", 128, 128, 3, 2, 16),
        ("r18 l2 down", 64, 128, 3, 2, 32),
        ("r18 l4 down", 256, 512, 3, 2, 8),
        ("r18 l1", 64, 64, 3, 1, 32),
        ("r18 l2", 128, 128, 3, 1, 16),
        ("r18 l3", 256, 256, 3, 1, 8),
        ("r18 l4", 512, 512, 3, 1, 4),
    ];
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "layer", "fwd GF/s", "bwd GF/s", "dW GF/s", "fwd ms", "dW ms", "dx ms"
    );
    let only = std::env::var("SAMLAB_LAYERS").unwrap_or_default();
    for (name, cin, cout, k, s, hw) in shapes {
        if !name.contains(&only) {
            continue;
        }
        let b = Builder::new(0, &Device::Cpu);
        let conv = Conv2d::new(ConvSpec::new(cin, cout, k, s), &b)?;
        let x = Var::from_tensor(&Tensor::randn(
            0f32,
            1.0,
            (batch, cin, hw, hw),
            &Device::Cpu,
        )?)?;
        let oh = (hw + 2 * (k / 2) - k) / s + 1;
        let flops = 2.0 * (batch * cout * oh * oh * cin * k * k) as f64;
        let reps = ((2e9 / flops) as usize).clamp(5, 50);
        let best = |f: &dyn Fn() -> Result<(), Box<dyn std::error::Error>>| -> Result<f64, Box<dyn std::error::Error>> {
            f()?;
            let mut best = f64::MAX;
            for _ in 0..reps {
                let t = std::time::Instant::now();
                f()?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let fwd = best(&|| {
            std::hint::black_box(conv.forward(&x)?);
            Ok(())
        })?;
        let loss = conv.forward(&x)?.sum_all()?;
        let bwd = best(&|| {
            std::hint::black_box(loss.backward()?);
            Ok(())
        })?;
        // The weight gradient alone: an input that needs no gradient.
        let loss = conv.forward(&x.as_tensor().detach())?.sum_all()?;
        let dw = best(&|| {
            std::hint::black_box(loss.backward()?);
            Ok(())
        })?;
        println!(
            "{name:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>9.2} {:>9.2}",
            flops / fwd / 1e9,
            2.0 * flops / bwd / 1e9,
            flops / dw / 1e9,
            fwd * 1e3,
            dw * 1e3,
            (bwd - dw) * 1e3
        );
    }
    // The strided input gradients, both kernels in this process, called
    // in turn 15 times each (so a slow phase of the machine hits both).
    println!(
        "{:<12} {:>12} {:>12} {:>7}",
        "strided dx", "col2im ms", "direct ms", "x"
    );
    for (name, cin, cout, k, s, hw) in shapes {
        if s == 1 || !name.contains(&only) {
            continue;
        }
        let pad = k / 2;
        let oh = (hw + 2 * pad - k) / s + 1;
        let xs = candle_core::Shape::from((batch, cin, hw, hw));
        let ws = candle_core::Shape::from((cout, cin, k, k));
        let dy: Vec<f32> = (0..batch * cout * oh * oh)
            .map(|i| samlab_models::fixtures::hashed(i, 1) as f32)
            .collect();
        let w: Vec<f32> = (0..cout * cin * k * k)
            .map(|i| samlab_models::fixtures::hashed(i, 2) as f32)
            .collect();
        let run = |col2im: bool| {
            let t = std::time::Instant::now();
            let dx = samlab_models::measure::strided_grad_input(&xs, &ws, s, pad, &dy, &w, col2im);
            (t.elapsed().as_secs_f64(), dx)
        };
        let (mut old, mut new) = (f64::MAX, f64::MAX);
        for _ in 0..15 {
            let (t_old, a) = run(true);
            let (t_new, b) = run(false);
            let (Some(a), Some(b)) = (a, b) else {
                break;
            };
            assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()));
            (old, new) = (old.min(t_old), new.min(t_new));
        }
        println!(
            "{name:<12} {:>12.2} {:>12.2} {:>7.2}",
            old * 1e3,
            new * 1e3,
            old / new
        );
    }
    println!("{:<12} {:>9} {:>9}", "BN + ReLU", "fwd ms", "bwd ms");
    for (name, c, hw) in [("r8 l1", 16, 32), ("r18 l1", 64, 32)] {
        let b = Builder::new(0, &Device::Cpu);
        let bn = BatchNorm2d::new(c, &b)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, c, hw, hw), &Device::Cpu)?)?;
        let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
        for _ in 0..30 {
            let t = std::time::Instant::now();
            let y = bn.forward_relu(x.as_tensor(), true)?;
            fwd = fwd.min(t.elapsed().as_secs_f64());
            let loss = y.sum_all()?;
            let t = std::time::Instant::now();
            loss.backward()?;
            bwd = bwd.min(t.elapsed().as_secs_f64());
        }
        println!("{name:<12} {:>9.2} {:>9.2}", fwd * 1e3, bwd * 1e3);
    }
    Ok(())
}
