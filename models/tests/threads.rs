//! The CPU ops split work by image, channel or fixed chunk, never by thread:
//! a training step gives the same bits with 1, 2 or 3 threads.
//!
//! The test runs itself as a child process per thread count (the thread
//! count of rayon's and candle's pools is fixed when they start) and
//! compares what the children print.

use std::process::Command;

use candle_core::{Device, Tensor};
use samlab_models::{Arch, Model, cross_entropy, fixtures};

const CHILD: &str = "SAMLAB_THREADS_TEST_CHILD";

/// Bits of the logits, the training-mode loss, every gradient and every
/// updated running statistic, hashed (FNV-1a over the f32 bits).
fn step_fingerprint(arch: &str) -> String {
    let dev = Device::Cpu;
    let model = Model::new(&arch.parse::<Arch>().unwrap(), 10, 3, &dev).unwrap();
    // 20 images: ResNet-8's 8x8 layers run in chunks of 4 images, and the
    // weight gradient in groups of 8, the last one partial.
    let x = fixtures::images(20, 5, &dev).unwrap();
    let y = Tensor::from_vec((0..20u32).map(|i| i % 10).collect::<Vec<_>>(), 20, &dev).unwrap();
    let logits = model.forward(&x, true).unwrap();
    let grads = cross_entropy(&logits, &y).unwrap().backward().unwrap();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |t: &Tensor| {
        for v in t.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            for b in v.to_bits().to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    };
    feed(&logits);
    feed(&model.forward(&x, false).unwrap());
    for (_, var) in model.params.trainable() {
        feed(grads.get(var.as_tensor()).unwrap());
    }
    for (_, var) in model.params.buffers() {
        feed(var.as_tensor());
    }
    format!("{h:016x}")
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    if std::env::var_os(CHILD).is_some() {
        for arch in ["resnet8", "wrn10-1"] {
            println!("fingerprint {arch} {}", step_fingerprint(arch));
        }
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let run = |threads: usize| -> Vec<String> {
        let out = Command::new(&exe)
            .args([
                "--exact",
                "results_do_not_depend_on_the_thread_count",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD, "1")
            .env("RAYON_NUM_THREADS", threads.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "child with {threads} threads failed");
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            // (libtest may print its "test ... " on the same line)
            .filter_map(|l| l.find("fingerprint ").map(|at| l[at..].to_string()))
            .collect();
        assert_eq!(
            lines.len(),
            2,
            "child with {threads} threads printed {lines:?}"
        );
        lines
    };
    let one = run(1);
    assert_eq!(run(2), one);
    assert_eq!(run(3), one);
}

/// The strided input gradients' columnless kernel (`cpu/dgrad.rs`) gives
/// the bits of gemm + col2im, the path before it (`SAMLAB_CPU_CONV=col2im`):
/// a training step of ResNet-8 (3x3 and 1x1 strided convolutions with 32
/// and 64 output channels) and of WRN-10-1 (strided second convolutions)
/// has the same fingerprint both ways, so what results/ holds stays valid.
/// On a CPU without AVX2 + FMA both children take gemm + col2im.
#[test]
fn the_strided_input_gradient_kernel_changes_no_bit() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
    {
        eprintln!("no AVX2 + FMA: both paths are gemm + col2im here");
    }
    let exe = std::env::current_exe().unwrap();
    let run = |path: &str| -> Vec<String> {
        let out = Command::new(&exe)
            .args([
                "--exact",
                "results_do_not_depend_on_the_thread_count",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD, "1")
            .env("SAMLAB_CPU_CONV", path)
            .output()
            .unwrap();
        assert!(out.status.success(), "child on path {path:?} failed");
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.find("fingerprint ").map(|at| l[at..].to_string()))
            .collect();
        assert_eq!(lines.len(), 2, "child on path {path:?} printed {lines:?}");
        lines
    };
    assert_eq!(run(""), run("col2im"));
}
