//! Device names: `cpu`, `cuda`, `cuda:N`.

use candle_core::Device;

use crate::error::{ErrorKind, Result};

/// Opens the device a study or `--device` names.
pub fn open(spec: &str) -> Result<Device> {
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                ErrorKind::Device(format!(
                    "bad device `{spec}`; valid choices: cpu, cuda, cuda:N"
                ))
            })?,
        None => {
            return Err(ErrorKind::Device(format!(
                "unknown device `{spec}`; valid choices: cpu, cuda, cuda:N"
            ))
            .into());
        }
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(ErrorKind::Device(
            "this runner was built without CUDA: run on the CPU instead with `--device cpu`, or build the CUDA runner with scripts/build-cuda.sh (cargo feature `cuda`)".into(),
        )
        .into());
    }
    Device::new_cuda(ordinal).map_err(|e| {
        ErrorKind::Device(format!(
            "no CUDA device: device {ordinal} could not be opened: {}",
            without_backtrace(e)
        ))
        .into()
    })
}

/// A candle error's message without the backtrace candle attaches when
/// `RUST_BACKTRACE` is set.
pub fn without_backtrace(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other.to_string(),
    }
}

/// What decides the rounding of a stage's numbers on `device`, besides the
/// code (the commit) and the precision: on the CPU the processor model
/// (gemm sizes its blocks by its caches), the instruction sets the kernels
/// choose by, and the `SAMLAB_CPU_CONV` path setting
/// (`cpu: AMD EPYC 7B13; avx2 fma; SAMLAB_CPU_CONV unset`); on CUDA the
/// device and whether cuDNN is built in. Two entries computed with the
/// same commit, precision and numerics give the same bits.
pub fn numerics(device: &Device) -> String {
    match device {
        Device::Cpu => {
            let model = std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find(|l| l.starts_with("model name"))
                        .and_then(|l| l.split_once(':'))
                        .map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_else(|| std::env::consts::ARCH.to_string());
            let path = match std::env::var("SAMLAB_CPU_CONV") {
                Ok(v) if !v.is_empty() => format!("SAMLAB_CPU_CONV={v}"),
                _ => "SAMLAB_CPU_CONV unset".to_string(),
            };
            format!("cpu: {model}; {}; {path}", cpu_features())
        }
        Device::Cuda(_) => format!(
            "cuda: {device:?}; cudnn {}",
            if cfg!(feature = "cudnn") { "on" } else { "off" }
        ),
        other => format!("{other:?}"),
    }
}

/// The instruction sets samlab's and gemm's CPU kernels choose by.
fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = Vec::new();
        if std::arch::is_x86_feature_detected!("avx") {
            f.push("avx");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            f.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            f.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            f.push("avx512f");
        }
        if f.is_empty() {
            "x86_64 without avx".to_string()
        } else {
            f.join(" ")
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}
