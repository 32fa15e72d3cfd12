//! What a stage takes from the stages whose weights it reads (a Train
//! stage, or an Import stage: [`Kind::weights`](super::Kind::weights)): the
//! one it reads (`of`), the pair it compares (`w1`/`w2`), the probe of a
//! curvature stage, and the dependencies' files and weights loaded into a
//! model. Kept apart from `settings` and `data` (which the Train kind itself
//! uses), so the kinds' modules import one another in one direction only.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use samlab_data::{Loader, PipelineConfig};
use samlab_models::{Arch, Model};
use serde::Serialize;

use super::data::{TrainImages, probe_indices};
use super::settings::{arch_name, positive};
use super::{RunCtx, StageSpec, Weights};
use crate::error::{Invalid, Result};

/// The weights a single-dependency stage (`of`) reads.
pub fn weights_dep<'a>(deps: &[(&'static str, &'a StageSpec)]) -> Result<Weights<'a>, Invalid> {
    match deps {
        [(role, d)] => d.weights().ok_or(Invalid::NotTrain {
            role,
            found: d.kind(),
        }),
        _ => Err(Invalid::Missing {
            field: "of",
            hint: "",
        }),
    }
}

/// The model that both stages of a `w1`/`w2` pair leave.
pub fn pair_model(deps: &[(&'static str, &StageSpec)]) -> Result<Arch, Invalid> {
    let mut models = Vec::new();
    for (role, d) in deps {
        let w = d.weights().ok_or(Invalid::NotTrain {
            role,
            found: d.kind(),
        })?;
        models.push(w.model.clone());
    }
    match models.as_slice() {
        [a, b] if a == b => Ok(a.clone()),
        [a, b] => Err(Invalid::Value(format!(
            "`w1` trains {a} and `w2` {b}: both must be one model"
        ))),
        _ => Err(Invalid::Value(
            "`w1` and `w2` must name two Train or Import stages".into(),
        )),
    }
}

/// The probe of a curvature stage (Sharpness, Landscape): the first
/// `images` of its weights' (Train or Import stage's) training images in a fixed random order
/// (`probe_indices`), read in batches of `batch`. Flattened into the stage's
/// spec, so its fields keep their names in the stage key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Probe {
    pub images: usize,
    pub batch: usize,
    /// The measured weights' model and training images.
    #[serde(serialize_with = "arch_name")]
    pub model: Arch,
    /// Its training images (`train_subset`, `subset_seed`, and
    /// `val_subset` where it changes them), flattened into the key.
    #[serde(flatten)]
    pub trained_on: TrainImages,
}

impl Probe {
    /// A probe of `images` (default 512) of the training images of `of`,
    /// in batches of `batch` (default `default_batch`), both positive.
    pub fn new(
        images: Option<usize>,
        batch: Option<usize>,
        default_batch: usize,
        of: Weights<'_>,
    ) -> Result<Probe, Invalid> {
        let images = images.unwrap_or(512);
        positive("images", images as u64)?;
        let batch = batch.unwrap_or(default_batch);
        positive("batch", batch as u64)?;
        Ok(Probe {
            images,
            batch,
            model: of.model.clone(),
            trained_on: of.images,
        })
    }

    /// Batches per pass over the probe.
    pub fn batches_per_pass(&self) -> usize {
        self.images.div_ceil(self.batch)
    }

    /// The probe's batches on the device, images in `dtype`.
    pub fn batches(&self, ctx: &RunCtx, dtype: DType) -> Result<Vec<(Tensor, Tensor)>> {
        let (images, batch) = (self.images, self.batch);
        let ds = ctx.dataset;
        let train_idx = self.trained_on.indices(&ds.train, ds.num_classes())?;
        let available = train_idx.as_ref().map_or(ds.train.len(), Vec::len);
        if images > available {
            return Err(crate::error::stage_err(
                ctx.stage,
                format!(
                    "`images: {images}`, but the stage it measures has {available} training images"
                ),
            ));
        }
        let idx = probe_indices(
            train_idx,
            ds.train.len(),
            images,
            self.trained_on.subset_seed,
        );
        let loader = Loader::new(
            ds.train.clone(),
            Some(idx),
            PipelineConfig::eval(batch, ds.name.normalization()),
        )?;
        let mut out = Vec::new();
        for b in loader.epoch(0) {
            let (x, y) = b.to_tensors(ctx.device)?;
            out.push((x.to_dtype(dtype)?, y));
        }
        Ok(out)
    }
}

/// A model `arch` for the dataset, holding the final weights (and
/// BatchNorm buffers) of the dependency `role`.
pub fn dep_model(ctx: &RunCtx, arch: &Arch, role: &str) -> Result<Model> {
    let model = Model::new(arch, ctx.dataset.num_classes(), 0, ctx.device)?;
    model
        .params
        .load(&dep_file(ctx, role, "model.safetensors")?)?;
    Ok(model)
}

/// [`dep_model`] with parameters and buffers of `dtype` (the checkpoint's
/// f32 values converted).
pub fn dep_model_as(ctx: &RunCtx, arch: &Arch, role: &str, dtype: DType) -> Result<Model> {
    let f32_model = dep_model(ctx, arch, role)?;
    if dtype == DType::F32 {
        return Ok(f32_model);
    }
    let model = Model::with_dtype(
        &f32_model.arch,
        ctx.dataset.num_classes(),
        0,
        ctx.device,
        dtype,
    )?;
    let source = f32_model.params.all();
    for (name, var) in model.params.all() {
        var.set(&source[name].as_tensor().to_dtype(dtype)?)?;
    }
    Ok(model)
}

/// Loads the dependency `role`'s weights into `model` (checked against
/// its names and shapes) and returns a copy of every tensor by name.
pub fn dep_tensors(ctx: &RunCtx, model: &Model, role: &str) -> Result<HashMap<String, Tensor>> {
    model
        .params
        .load(&dep_file(ctx, role, "model.safetensors")?)?;
    model_tensors(model)
}

/// A copy of every tensor of `model` by name.
pub fn model_tensors(model: &Model) -> Result<HashMap<String, Tensor>> {
    Ok(model
        .params
        .all()
        .into_iter()
        .map(|(k, v)| Ok((k.to_string(), v.as_tensor().copy()?)))
        .collect::<candle_core::Result<_>>()?)
}

/// L2 distance between two checkpoints over the model's trainable
/// parameters (BatchNorm's running statistics left out).
pub fn distance(
    model: &Model,
    a: &HashMap<String, Tensor>,
    b: &HashMap<String, Tensor>,
) -> Result<f64> {
    let mut sq = 0.0f64;
    for (name, _) in model.params.trainable() {
        let (x, y) = (&a[name], &b[name]);
        sq += (x.to_dtype(DType::F64)? - y.to_dtype(DType::F64)?)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

/// The file `name` in the cache entry of the dependency `role`.
pub fn dep_file(ctx: &RunCtx, role: &str, name: &str) -> Result<PathBuf> {
    ctx.deps
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, d)| d.join(name))
        .ok_or_else(|| crate::error::stage_err(ctx.stage, format!("no `{role}` stage")))
}
