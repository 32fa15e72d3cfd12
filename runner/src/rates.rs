//! Measured training rates on accelerators, for the GPU-hours `runner
//! plan` shows. The repository keeps them in `results/gpu/rates.csv`,
//! written by `scripts/gpu-check.sh` on a lent GPU:
//!
//! ```text
//! device,model,precision,batch,sgd_img_s,sam_img_s,card,measured
//! cuda,resnet18,f32,256,5100.2,2600.4,NVIDIA H200,2026-11-29
//! ```
//!
//! `precision` (`f32`, `bf16`) may be absent: such rates are f32's. A stage
//! takes the rate of its own precision.
//!
//! A stage's GPU time is its cost in SGD-step equivalents times the images
//! of one of its steps (Train and Escape stages: their batch), divided by
//! the measured SGD images per second of its model on that device. Stages
//! whose steps are not training steps (evaluation, curvature) are left out
//! of the estimate and counted as such.

use std::path::Path;

use samlab_models::Precision;

use crate::error::{ErrorKind, Result};
use crate::plan::Planned;
use crate::study::Study;

/// One measured rate.
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    pub device: String,
    pub model: String,
    pub precision: Precision,
    pub sgd_img_s: f64,
}

/// The rates of a rates file.
#[derive(Clone, Debug, Default)]
pub struct Rates(Vec<Rate>);

impl Rates {
    /// Reads `path`; `Ok(None)` when it does not exist. A malformed line is
    /// an error naming the file and line.
    pub fn load(path: &Path) -> Result<Option<Rates>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ErrorKind::Io {
                    path: path.to_path_buf(),
                    source,
                }
                .into());
            }
        };
        let bad = |line: usize, message: String| -> crate::error::Error {
            ErrorKind::Rates {
                path: path.to_path_buf(),
                line,
                message,
            }
            .into()
        };
        let mut lines = text.lines().enumerate();
        let head: Vec<&str> = match lines.next() {
            Some((_, h)) => h.split(',').map(str::trim).collect(),
            None => return Ok(Some(Rates::default())),
        };
        let col = |name: &str| {
            head.iter()
                .position(|h| *h == name)
                .ok_or_else(|| bad(1, format!("no `{name}` column in the header")))
        };
        let (d, m, r) = (col("device")?, col("model")?, col("sgd_img_s")?);
        let p = head.iter().position(|h| *h == "precision");
        let mut rates = Vec::new();
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let get = |c: usize| f.get(c).copied().unwrap_or("");
            let rate: f64 = get(r)
                .parse()
                .map_err(|_| bad(i + 1, format!("`sgd_img_s` is not a number: {:?}", get(r))))?;
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(bad(
                    i + 1,
                    format!("`sgd_img_s` must be positive, not {rate}"),
                ));
            }
            let precision = match p.map(get) {
                None | Some("") => Precision::F32,
                Some(v) => v.parse().map_err(|e| bad(i + 1, format!("{e}")))?,
            };
            rates.push(Rate {
                device: get(d).to_string(),
                model: get(m).to_string(),
                precision,
                sgd_img_s: rate,
            });
        }
        Ok(Some(Rates(rates)))
    }

    /// The last rate measured for `model` in `precision` on `device`
    /// (`cuda:1` reads `cuda`'s).
    pub fn sgd_img_s(&self, device: &str, model: &str, precision: Precision) -> Option<f64> {
        let kind = device.split(':').next().unwrap_or(device);
        self.0
            .iter()
            .rev()
            .find(|r| r.device == kind && r.model == model && r.precision == precision)
            .map(|r| r.sgd_img_s)
    }
}

/// The GPU time of a plan's work left to run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Estimate {
    pub hours: f64,
    /// Models with training work and no measured rate (`wrn28-10 bf16`
    /// when only its f32 rate is known).
    pub unmeasured: Vec<String>,
    /// SGD-step equivalents of stages that are not training steps.
    pub left_out: f64,
}

/// GPU-hours of `planned` on `device` at `rates` (module docs).
pub fn estimate(study: &Study, planned: &[Planned], rates: &Rates, device: &str) -> Estimate {
    let mut e = Estimate::default();
    for (s, p) in study.stages.iter().zip(planned) {
        if p.cost == 0.0 {
            continue;
        }
        match s.spec.images_per_step() {
            Some(images) => {
                match rates.sgd_img_s(device, &s.spec.model().name(), s.spec.precision()) {
                    Some(rate) => e.hours += p.cost * images as f64 / rate / 3600.0,
                    None => {
                        let m = match s.spec.precision() {
                            Precision::F32 => s.spec.model().to_string(),
                            p => format!("{} {p}", s.spec.model()),
                        };
                        if !e.unmeasured.contains(&m) {
                            e.unmeasured.push(m);
                        }
                    }
                }
            }
            None => e.left_out += p.cost,
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_file_reads_the_last_rate_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rates.csv");
        assert!(Rates::load(&p).unwrap().is_none());
        std::fs::write(
            &p,
            "device,model,batch,sgd_img_s,sam_img_s,card,measured\n\
             cuda,resnet18,256,4000,2000,H200,2026-01-01\n\
             cuda,resnet18,256,5000,2500,H200,2026-02-01\n",
        )
        .unwrap();
        let r = Rates::load(&p).unwrap().unwrap();
        assert_eq!(
            r.sgd_img_s("cuda:0", "resnet18", Precision::F32),
            Some(5000.0)
        );
        assert_eq!(r.sgd_img_s("cuda", "resnet18", Precision::Bf16), None);
        assert_eq!(r.sgd_img_s("cuda", "wrn28-10", Precision::F32), None);
        std::fs::write(
            &p,
            "device,model,precision,sgd_img_s\n\
             cuda,resnet18,bf16,9000\n\
             cuda,resnet18,f32,5000\n",
        )
        .unwrap();
        let r = Rates::load(&p).unwrap().unwrap();
        assert_eq!(
            r.sgd_img_s("cuda", "resnet18", Precision::Bf16),
            Some(9000.0)
        );
        assert_eq!(
            r.sgd_img_s("cuda", "resnet18", Precision::F32),
            Some(5000.0)
        );
        std::fs::write(
            &p,
            "device,model,precision,sgd_img_s\ncuda,resnet18,fp8,1\n",
        )
        .unwrap();
        let err = Rates::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("rates.csv:2: ") && err.contains("fp8"),
            "{err}"
        );
        std::fs::write(&p, "device,model,sgd_img_s\ncuda,resnet18,fast\n").unwrap();
        let err = Rates::load(&p).unwrap_err().to_string();
        assert!(err.contains("rates.csv:2: "), "{err}");
    }
}
