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
