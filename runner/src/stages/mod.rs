//! Stage kinds. Each kind is one module with its partial form (as written
//! in a study, every field optional so stages can extend each other), its
//! resolved spec (what goes into the key) and how it runs. Adding a kind
//! means a new module plus one variant in [`RawStage`] and [`StageSpec`]
//! and their `match`es below.

pub mod distance;
pub mod escape;
pub mod evaluate;
pub mod interpolate;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use indexmap::IndexMap;
use samlab_data::{Dataset, DatasetName, Loader, PipelineConfig, Split, subset_per_class};
use samlab_models::Model;
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::error::Result;
use crate::progress::Progress;

/// Which images of a split a stage uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subset {
    /// Every image.
    All,
    /// This many images of every class, chosen by the stage's `subset_seed`.
    PerClass(usize),
    /// None (only where a stage allows it: a Train stage's final test evaluation).
    Off,
}

impl Subset {
    /// Indices into `split`, or `None` for all of it.
    pub fn indices(
        self,
        split: &Split,
        classes: usize,
        seed: u64,
    ) -> samlab_data::Result<Option<Vec<u32>>> {
        match self {
            Subset::All | Subset::Off => Ok(None),
            Subset::PerClass(n) => subset_per_class(split, classes, n, seed).map(Some),
        }
    }

    /// How many images it selects of a split of `len` images.
    pub fn count(self, len: usize, classes: usize) -> usize {
        match self {
            Subset::All => len,
            Subset::PerClass(n) => n * classes,
            Subset::Off => 0,
        }
    }
}

/// A stage as written in a study.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename = "Stage")]
pub enum RawStage {
    Train(train::TrainPartial),
    Evaluate(evaluate::EvalPartial),
    Escape(escape::EscapePartial),
    Interpolate(interpolate::InterpPartial),
    Distance(distance::DistancePartial),
}

/// A stage with every field resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum StageSpec {
    Train(train::TrainSpec),
    Evaluate(evaluate::EvalSpec),
    Escape(escape::EscapeSpec),
    Interpolate(interpolate::InterpSpec),
    Distance(distance::DistanceSpec),
}

impl RawStage {
    pub fn kind(&self) -> &'static str {
        match self {
            RawStage::Train(_) => "Train",
            RawStage::Evaluate(_) => "Evaluate",
            RawStage::Escape(_) => "Escape",
            RawStage::Interpolate(_) => "Interpolate",
            RawStage::Distance(_) => "Distance",
        }
    }

    pub fn extends(&self) -> Option<&str> {
        match self {
            RawStage::Train(p) => p.extends.as_deref(),
            RawStage::Evaluate(p) => p.extends.as_deref(),
            RawStage::Escape(p) => p.extends.as_deref(),
            RawStage::Interpolate(p) => p.extends.as_deref(),
            RawStage::Distance(p) => p.extends.as_deref(),
        }
    }

    /// `self` with every unset field taken from `parent` (same kind only).
    pub fn merge_parent(self, parent: &RawStage) -> std::result::Result<RawStage, String> {
        match (self, parent) {
            (RawStage::Train(c), RawStage::Train(p)) => Ok(RawStage::Train(c.merge(p))),
            (RawStage::Evaluate(c), RawStage::Evaluate(p)) => Ok(RawStage::Evaluate(c.merge(p))),
            (RawStage::Escape(c), RawStage::Escape(p)) => Ok(RawStage::Escape(c.merge(p))),
            (RawStage::Interpolate(c), RawStage::Interpolate(p)) => {
                Ok(RawStage::Interpolate(c.merge(p)))
            }
            (RawStage::Distance(c), RawStage::Distance(p)) => Ok(RawStage::Distance(c.merge(p))),
            (c, p) => Err(format!(
                "a {} stage cannot extend a {} block",
                c.kind(),
                p.kind()
            )),
        }
    }

    /// The stages this one needs: (role, stage name).
    pub fn refs(&self) -> Vec<(&'static str, &str)> {
        match self {
            RawStage::Train(p) => p.from.iter().map(|f| ("from", f.as_str())).collect(),
            RawStage::Evaluate(p) => p.of.iter().map(|f| ("of", f.as_str())).collect(),
            RawStage::Escape(p) => p.of.iter().map(|f| ("of", f.as_str())).collect(),
            RawStage::Interpolate(p) => p.refs(),
            RawStage::Distance(p) => p.refs(),
        }
    }

    pub fn grid(&self) -> Option<&IndexMap<String, Vec<f64>>> {
        match self {
            RawStage::Train(p) => p.grid.as_ref(),
            RawStage::Evaluate(p) => p.grid.as_ref(),
            RawStage::Escape(p) => p.grid.as_ref(),
            RawStage::Interpolate(p) => p.grid.as_ref(),
            RawStage::Distance(p) => p.grid.as_ref(),
        }
    }

    pub fn grid_fields(&self) -> &'static [&'static str] {
        match self {
            RawStage::Train(_) => train::GRID_FIELDS,
            RawStage::Evaluate(_) => evaluate::GRID_FIELDS,
            RawStage::Escape(_) => escape::GRID_FIELDS,
            RawStage::Interpolate(_) => interpolate::GRID_FIELDS,
            RawStage::Distance(_) => distance::GRID_FIELDS,
        }
    }

    pub fn set_grid(&mut self, field: &str, v: f64) -> std::result::Result<(), String> {
        match self {
            RawStage::Train(p) => p.set_grid(field, v),
            RawStage::Evaluate(p) => p.set_grid(field, v),
            RawStage::Escape(p) => p.set_grid(field, v),
            RawStage::Interpolate(p) => p.set_grid(field, v),
            RawStage::Distance(p) => p.set_grid(field, v),
        }
    }

    /// The resolved spec, or what is missing or wrong.
    pub fn finish(&self, dataset: DatasetName) -> std::result::Result<StageSpec, String> {
        match self {
            RawStage::Train(p) => p.finish(dataset).map(StageSpec::Train),
            RawStage::Evaluate(p) => p.finish(dataset).map(StageSpec::Evaluate),
            RawStage::Escape(p) => p.finish(dataset).map(StageSpec::Escape),
            RawStage::Interpolate(p) => p.finish(dataset).map(StageSpec::Interpolate),
            RawStage::Distance(p) => p.finish(dataset).map(StageSpec::Distance),
        }
    }
}

impl StageSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            StageSpec::Train(_) => "train",
            StageSpec::Evaluate(_) => "evaluate",
            StageSpec::Escape(_) => "escape",
            StageSpec::Interpolate(_) => "interpolate",
            StageSpec::Distance(_) => "distance",
        }
    }

    /// The model it trains or evaluates.
    pub fn model(&self) -> &str {
        match self {
            StageSpec::Train(s) => &s.model,
            StageSpec::Evaluate(s) => &s.model,
            StageSpec::Escape(s) => &s.model,
            StageSpec::Interpolate(s) => &s.model,
            StageSpec::Distance(s) => &s.model,
        }
    }

    /// How long it runs, for `runner plan`: epochs, steps or `-`.
    pub fn length(&self) -> String {
        match self {
            StageSpec::Train(s) => s.epochs.to_string(),
            StageSpec::Escape(s) => format!("<={}st", s.max_steps),
            StageSpec::Interpolate(s) => format!("{}pt", s.alpha.points),
            StageSpec::Evaluate(_) | StageSpec::Distance(_) => "-".into(),
        }
    }

    /// The key's spec of a kind other than Train (whose key needs the
    /// steps per epoch; see `TrainSpec::key_spec`).
    pub fn plain_key_spec(&self) -> serde_json::Value {
        match self {
            StageSpec::Train(s) => serde_json::to_value(s),
            StageSpec::Evaluate(s) => serde_json::to_value(s),
            StageSpec::Escape(s) => serde_json::to_value(s),
            StageSpec::Interpolate(s) => serde_json::to_value(s),
            StageSpec::Distance(s) => serde_json::to_value(s),
        }
        .expect("specs serialise")
    }

    /// Runs the stage.
    pub fn run(&self, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
        match self {
            StageSpec::Train(s) => train::run(s, ctx),
            StageSpec::Evaluate(s) => evaluate::run(s, ctx),
            StageSpec::Escape(s) => escape::run(s, ctx),
            StageSpec::Interpolate(s) => interpolate::run(s, ctx),
            StageSpec::Distance(s) => distance::run(s, ctx),
        }
    }

    /// Fills in what a stage takes from the stages it depends on (an
    /// Evaluate stage's model comes from the Train stage it evaluates).
    pub fn link(&mut self, deps: &[(&'static str, &StageSpec)]) -> std::result::Result<(), String> {
        match self {
            StageSpec::Train(s) => s.link(deps),
            StageSpec::Evaluate(s) => s.link(deps),
            StageSpec::Escape(s) => s.link(deps),
            StageSpec::Interpolate(s) => s.link(deps),
            StageSpec::Distance(s) => s.link(deps),
        }
    }
}

/// The model that both Train stages of a `w1`/`w2` pair train.
pub(crate) fn pair_model(
    deps: &[(&'static str, &StageSpec)],
) -> std::result::Result<String, String> {
    let mut models = Vec::new();
    for (role, d) in deps {
        match d {
            StageSpec::Train(t) => models.push(t.model.clone()),
            other => {
                return Err(format!(
                    "`{role}` must name a Train stage, not {}",
                    other.kind()
                ));
            }
        }
    }
    match models.as_slice() {
        [a, b] if a == b => Ok(a.clone()),
        [a, b] => Err(format!(
            "`w1` trains {a} and `w2` {b}: both must be one model"
        )),
        _ => Err("`w1` and `w2` must name two Train stages".into()),
    }
}

/// `(w1, w2)` as stage references.
pub(crate) fn pair_refs<'a>(
    w1: &'a Option<String>,
    w2: &'a Option<String>,
) -> Vec<(&'static str, &'a str)> {
    let mut r = Vec::new();
    if let Some(a) = w1 {
        r.push(("w1", a.as_str()));
    }
    if let Some(b) = w2 {
        r.push(("w2", b.as_str()));
    }
    r
}

/// A model of `name` for the dataset, holding the final weights (and
/// BatchNorm buffers) of the dependency `role`.
pub(crate) fn dep_model(ctx: &RunCtx, name: &str, role: &str) -> Result<Model> {
    let arch = name
        .parse()
        .map_err(|e: samlab_models::Error| crate::error::stage_err(ctx.stage, e.to_string()))?;
    let model = Model::new(&arch, ctx.dataset.num_classes(), 0, ctx.device)?;
    model
        .params
        .load(&dep_file(ctx, role, "model.safetensors")?)?;
    Ok(model)
}

/// Loads the dependency `role`'s weights into `model` (checked against
/// its names and shapes) and returns a copy of every tensor by name.
pub(crate) fn dep_tensors(
    ctx: &RunCtx,
    model: &Model,
    role: &str,
) -> Result<std::collections::HashMap<String, candle_core::Tensor>> {
    model
        .params
        .load(&dep_file(ctx, role, "model.safetensors")?)?;
    model_tensors(model)
}

/// A copy of every tensor of `model` by name.
pub(crate) fn model_tensors(
    model: &Model,
) -> Result<std::collections::HashMap<String, candle_core::Tensor>> {
    Ok(model
        .params
        .all()
        .into_iter()
        .map(|(k, v)| Ok((k.to_string(), v.as_tensor().copy()?)))
        .collect::<candle_core::Result<_>>()?)
}

/// A shuffled training loader over `indices` (None: the whole split), with
/// CIFAR augmentation unless `augment` is false; at least one full batch.
pub(crate) fn training_loader(
    ds: &Dataset,
    indices: Option<Vec<u32>>,
    batch: usize,
    seed: u64,
    augment: bool,
    stage: &str,
) -> Result<Loader> {
    let mut cfg = PipelineConfig::train(batch, ds.name.normalization(), seed);
    if !augment {
        cfg.augment = samlab_data::Augment::NONE;
    }
    let loader = Loader::new(ds.train.clone(), indices, cfg)?;
    if loader.batches_per_epoch() == 0 {
        return Err(crate::error::stage_err(
            stage,
            format!(
                "{} training images make no full batch of {batch}",
                loader.len()
            ),
        ));
    }
    Ok(loader)
}

/// The file `name` in the cache entry of the dependency `role`.
pub(crate) fn dep_file(ctx: &RunCtx, role: &str, name: &str) -> Result<PathBuf> {
    ctx.deps
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, d)| d.join(name))
        .ok_or_else(|| crate::error::stage_err(ctx.stage, format!("no `{role}` stage")))
}

/// Converts a grid value to a whole number.
pub(crate) fn whole(v: f64) -> std::result::Result<u64, String> {
    if v >= 0.0 && v.fract() == 0.0 && v < 9.0e15 {
        Ok(v as u64)
    } else {
        Err(format!("{v} is not a whole number >= 0"))
    }
}

/// Checks that integer fields which must be positive are.
pub(crate) fn positive(name: &str, v: u64) -> std::result::Result<(), String> {
    if v == 0 {
        Err(format!("`{name}` must be at least 1"))
    } else {
        Ok(())
    }
}

/// What a running stage can use.
pub struct RunCtx<'a> {
    pub cache: &'a Cache,
    pub dataset: &'a Dataset,
    pub device: &'a Device,
    /// The stage's display name and key.
    pub stage: &'a str,
    pub key: &'a str,
    /// Entry directories of the stages it depends on, by role.
    pub deps: Vec<(&'static str, PathBuf)>,
    /// The directory the stage writes its outputs into.
    pub out: &'a Path,
    pub progress: &'a Progress,
    /// For training: the prefix keys of the run, by epoch, and the epochs
    /// at which to keep a shared-prefix checkpoint.
    pub prefix: Option<&'a train::PrefixPlan>,
}

/// What running a stage did, beyond the files it wrote.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The epoch it started from (0 when from scratch).
    pub start_epoch: u64,
    /// Where the start came from (`partial`, `prefix` or empty).
    pub resumed_from: String,
    /// Steps and SGD-step-equivalent passes computed by this process.
    pub steps_run: u64,
    pub passes_run: u64,
}

/// Mean loss and number of correct predictions of `model` (evaluation
/// mode) over the images `loader` yields.
pub fn evaluate_loader(
    model: &Model,
    loader: &Loader,
    device: &Device,
) -> Result<(f64, usize, usize)> {
    let mut loss_sum = 0.0f64;
    let mut correct = 0usize;
    let mut n = 0usize;
    for batch in loader.epoch(0) {
        let (x, y) = batch.to_tensors(device)?;
        let logits = model.forward(&x, false)?;
        let b = y.dims1()?;
        let loss = samlab_models::cross_entropy(&logits, &y)?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        let pred = logits.argmax(1)?;
        let hits = pred
            .eq(&y)?
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        loss_sum += loss * b as f64;
        correct += hits as usize;
        n += b;
    }
    Ok((
        if n > 0 { loss_sum / n as f64 } else { f64::NAN },
        correct,
        n,
    ))
}

/// A loader over (a subset of) a split for evaluation.
pub fn eval_loader(
    ds: &Dataset,
    train_split: bool,
    subset: Subset,
    subset_seed: u64,
    batch: usize,
) -> Result<Loader> {
    let split = if train_split { &ds.train } else { &ds.test };
    let indices = subset.indices(split, ds.num_classes(), subset_seed)?;
    Ok(Loader::new(
        split.clone(),
        indices,
        PipelineConfig::eval(batch, ds.name.normalization()),
    )?)
}

/// A summary: metric name to value, in sorted order.
pub type Summary = BTreeMap<String, f64>;
