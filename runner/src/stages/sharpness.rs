//! `Sharpness`: curvature of a Train stage's final weights, as PyHessian
//! measures it, and SAM's own sharpness (the thesis' Theorem 3.2.1 is about
//! the top eigenvalue; SAM's objective about the rise within radius rho).
//!
//! The loss is the mean cross-entropy over a fixed probe of the Train
//! stage's training images (the first `images` of them in a fixed random
//! order, the same probe an Escape stage of the same size reads),
//! BatchNorm in evaluation mode, weight decay left out. Measured:
//!
//! - the `k` largest Hessian eigenvalues by Lanczos (`eigen`), each with its
//!   residual `|H v - lambda v|`, which bounds its distance to a true
//!   eigenvalue; the eigenvectors are kept (`eigenvectors.safetensors`)
//!   for a Landscape stage's `Eigenvector` direction;
//! - the Hessian trace by Hutchinson (`trace`), with its standard error;
//! - SAM's sharpness `L(w + e) - L(w)` at radius `rho`: the first-order `e`
//!   and the best of `ascent` further normalised-gradient steps.
//!
//! Hessian-vector products are central differences of exact gradients with
//! the ReLU pattern frozen at `w` (samlab_optim::curvature: the product
//! double backward gives, within 1e-9 in f64 and 1e-5 on eigenvalues in
//! f32 against JAX). Writes `metrics.csv` (`measure, index, value, error`)
//! and `summary.json`.

use std::collections::HashMap;
use std::fmt::Write as _;

use candle_core::{DType, Tensor};
use samlab_data::DatasetName;
use samlab_models::Arch;
use samlab_optim::curvature::{
    LanczosConfig, LossSurface, hutchinson, lanczos, norm, sam_sharpness,
};
use serde::{Deserialize, Serialize};

use super::settings::{Grid, whole};
use super::link::{Probe, weights_dep, dep_model_as};
use super::{Deps, Kind, KindPlan, Outcome, Partial, PlanInput, RunCtx, Summary};
use crate::cache::write_file;
use crate::error::{Invalid, Result};

/// The precision the curvature is computed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    F32,
    F64,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        }
    }

    /// The finite-difference step of the Hessian-vector product (optim's
    /// curvature tests measure the error at these steps).
    pub fn default_step(self) -> f64 {
        match self {
            Precision::F32 => 1e-3,
            Precision::F64 => 1e-5,
        }
    }
}

/// Lanczos settings as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EigenPartial {
    pub k: Option<usize>,
    pub steps: Option<usize>,
}

/// Hutchinson settings as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracePartial {
    pub samples: Option<usize>,
}

/// A Sharpness stage as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Sharpness")]
pub struct SharpnessPartial {
    pub extends: Option<String>,
    /// The Train stage whose final weights are measured.
    pub of: Option<String>,
    /// Training images in the probe.
    pub images: Option<usize>,
    pub batch: Option<usize>,
    pub precision: Option<Precision>,
    /// The finite-difference step (default: by precision).
    pub fd_step: Option<f64>,
    /// Top eigenvalues: `(k: 3, steps: 20)`; `k: 0` skips them.
    pub eigen: Option<EigenPartial>,
    /// Trace: `(samples: 20)`; `samples: 0` skips it.
    pub trace: Option<TracePartial>,
    /// SAM's radius for its sharpness.
    pub rho: Option<f64>,
    /// Normalised-gradient ascent steps after the first-order one.
    pub ascent: Option<usize>,
    /// Lanczos' start vector and Hutchinson's vectors.
    pub seed: Option<u64>,
    pub grid: Option<Grid>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SharpnessSpec {
    #[serde(flatten)]
    pub probe: Probe,
    pub precision: Precision,
    pub fd_step: f64,
    pub k: usize,
    pub lanczos_steps: usize,
    pub trace_samples: usize,
    pub rho: f64,
    pub ascent: usize,
    pub seed: u64,
}

impl Partial for SharpnessPartial {
    type Spec = SharpnessSpec;
    const GRID_FIELDS: &'static [&'static str] = &["seed", "rho", "images"];

    fn extends(&self) -> Option<&str> {
        self.extends.as_deref()
    }

    fn refs(&self) -> Vec<(&'static str, &str)> {
        self.of.iter().map(|f| ("of", f.as_str())).collect()
    }

    fn grid(&self) -> Option<&Grid> {
        self.grid.as_ref()
    }

    fn set_grid(&mut self, field: &str, v: f64) -> Result<(), Invalid> {
        match field {
            "seed" => self.seed = Some(whole(v)?),
            "rho" => self.rho = Some(v),
            "images" => self.images = Some(whole(v)? as usize),
            _ => return Err(Invalid::UnknownGridField(field.to_string())),
        }
        Ok(())
    }

    fn finish(&self, _dataset: DatasetName, deps: &Deps) -> Result<SharpnessSpec, Invalid> {
        if self.of.is_none() {
            return Err(Invalid::Missing {
                field: "of",
                hint: ": name the Train stage to measure",
            });
        }
        let probe = Probe::new(self.images, self.batch, 128, weights_dep(deps)?)?;
        let precision = self.precision.unwrap_or(Precision::F32);
        let fd_step = self.fd_step.unwrap_or(precision.default_step());
        if !(fd_step > 0.0 && fd_step.is_finite()) {
            return Err(Invalid::Value(format!(
                "`fd_step` must be positive, not {fd_step}"
            )));
        }
        let eigen = self.eigen.unwrap_or_default();
        let k = eigen.k.unwrap_or(3);
        let lanczos_steps = eigen.steps.unwrap_or(20);
        if k > 0 && lanczos_steps < k {
            return Err(Invalid::Value(format!(
                "`eigen`: {lanczos_steps} Lanczos steps cannot give {k} eigenvalues (steps >= k)"
            )));
        }
        let rho = self.rho.unwrap_or(0.05);
        if !(rho > 0.0 && rho.is_finite()) {
            return Err(Invalid::Value(format!("`rho` must be positive, not {rho}")));
        }
        Ok(SharpnessSpec {
            probe,
            precision,
            fd_step,
            k,
            lanczos_steps,
            trace_samples: self.trace.unwrap_or_default().samples.unwrap_or(20),
            rho,
            ascent: self.ascent.unwrap_or(5),
            seed: self.seed.unwrap_or(0),
        })
    }
}

impl SharpnessSpec {
    /// Hessian-vector products it runs.
    fn hvps(&self) -> usize {
        let eig = if self.k > 0 {
            self.lanczos_steps + self.k
        } else {
            0
        };
        eig + self.trace_samples
    }
}

impl Kind for SharpnessSpec {
    const NAME: &'static str = "sharpness";
    const HEADLINE: &'static [&'static str] = &["lambda_max", "trace", "sam_sharpness"];
    const INDEX: &'static [&'static str] = &["measure", "index"];

    fn model(&self) -> &Arch {
        &self.probe.model
    }

    fn length(&self) -> String {
        format!("{}hvp", self.hvps())
    }

    /// A gradient over the probe costs about one SGD step per batch; a
    /// product is two gradients (f64's speed is not counted apart).
    fn plan(&self, _input: &PlanInput) -> Result<KindPlan, Invalid> {
        let grad = self.probe.batches_per_pass() as f64;
        let gradients = 2 * self.hvps() + self.ascent + 2;
        Ok(KindPlan::plain(self, grad * gradients as f64))
    }

    fn run(&self, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
        run(self, ctx)
    }
}

fn run(spec: &SharpnessSpec, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
    let dtype = spec.precision.dtype();
    let model = dep_model_as(ctx, &spec.probe.model, "of", dtype)?;
    let batches = spec.probe.batches(ctx, dtype)?;
    let surface = LossSurface::new(&model, batches, spec.fd_step)?;
    let bar = ctx
        .progress
        .stage_bar(ctx.stage, (spec.hvps() + spec.ascent + 2) as u64, 0);
    let mut summary = Summary::new();
    let mut csv = String::from("measure,index,value,error\n");

    let at = surface.read(true)?;
    summary.insert("loss".into(), at.loss);
    summary.insert("accuracy".into(), at.accuracy);
    summary.insert("grad_norm".into(), norm(at.grad.as_deref().unwrap_or(&[])));
    summary.insert("params".into(), surface.dim() as f64);
    bar.inc(1);

    let mut hvp = |v: &[f64]| {
        let r = surface.hvp(v);
        bar.inc(1);
        r
    };
    if spec.k > 0 {
        let cfg = LanczosConfig {
            k: spec.k,
            steps: spec.lanczos_steps,
            seed: spec.seed,
        };
        let pairs = lanczos(&mut hvp, surface.dim(), &cfg)?;
        let mut vectors = HashMap::new();
        for (i, p) in pairs.iter().enumerate() {
            let _ = writeln!(csv, "eigenvalue,{},{},{}", i + 1, p.value, p.residual);
            summary.insert(format!("lambda_{}", i + 1), p.value);
            summary.insert(format!("residual_{}", i + 1), p.residual);
            let v: Vec<f32> = p.vector.iter().map(|&x| x as f32).collect();
            let n = v.len();
            vectors.insert(
                format!("v{}", i + 1),
                Tensor::from_vec(v, n, &candle_core::Device::Cpu)?,
            );
        }
        if let Some(p) = pairs.first() {
            summary.insert("lambda_max".into(), p.value);
        }
        // the weights they belong to, for a Landscape stage's check
        let w: Vec<f32> = surface.weights()?.iter().map(|&x| x as f32).collect();
        let n = w.len();
        vectors.insert(
            "w".into(),
            Tensor::from_vec(w, n, &candle_core::Device::Cpu)?,
        );
        let path = ctx.out.join("eigenvectors.safetensors");
        candle_core::safetensors::save(&vectors, &path)?;
    }
    if spec.trace_samples > 0 {
        let t = hutchinson(&mut hvp, surface.dim(), spec.trace_samples, spec.seed)?;
        for (i, s) in t.samples.iter().enumerate() {
            let _ = writeln!(csv, "trace_sample,{},{s},", i + 1);
        }
        summary.insert("trace".into(), t.mean);
        if t.std_err.is_finite() {
            summary.insert("trace_se".into(), t.std_err);
        }
    }
    let sam = sam_sharpness(&surface, spec.rho, spec.ascent)?;
    bar.inc(spec.ascent as u64 + 1);
    let _ = writeln!(csv, "sam_first_order,0,{},", sam.first_order);
    for (i, r) in sam.path.iter().enumerate() {
        let _ = writeln!(csv, "sam_ascent,{},{r},", i + 1);
    }
    summary.insert("sam_sharpness_first_order".into(), sam.first_order);
    summary.insert("sam_sharpness".into(), sam.ascent);
    bar.finish();
    write_file(&ctx.out.join("metrics.csv"), csv.as_bytes())?;
    Ok((summary, Outcome::default()))
}
