//! `Distance`: the L2 distance between two Train stages' final weights over
//! the trainable parameters (BatchNorm's running statistics left out), for
//! the ablations of the thesis' Figure 5.3. Writes only `summary.json`.

use indexmap::IndexMap;
use samlab_data::DatasetName;
use serde::{Deserialize, Serialize};

use super::interpolate::distance;
use super::{
    Outcome, RunCtx, StageSpec, Summary, dep_model, dep_tensors, model_tensors, pair_model,
    pair_refs,
};
use crate::error::Result;

pub const GRID_FIELDS: &[&str] = &[];

/// A Distance stage as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "Distance")]
pub struct DistancePartial {
    pub extends: Option<String>,
    pub w1: Option<String>,
    pub w2: Option<String>,
    pub grid: Option<IndexMap<String, Vec<f64>>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DistanceSpec {
    /// Filled from the Train stages.
    pub model: String,
    pub classes: usize,
}

impl DistancePartial {
    pub fn merge(mut self, p: &DistancePartial) -> DistancePartial {
        if self.w1.is_none() {
            self.w1 = p.w1.clone();
        }
        if self.w2.is_none() {
            self.w2 = p.w2.clone();
        }
        self.extends = p.extends.clone();
        self.grid = super::train::merged_grid(self.grid.take(), &p.grid);
        self
    }

    pub fn set_grid(&mut self, field: &str, _v: f64) -> std::result::Result<(), String> {
        Err(format!("unknown grid field `{field}`"))
    }

    pub fn refs(&self) -> Vec<(&'static str, &str)> {
        pair_refs(&self.w1, &self.w2)
    }

    pub fn finish(&self, dataset: DatasetName) -> std::result::Result<DistanceSpec, String> {
        if self.w1.is_none() || self.w2.is_none() {
            return Err("`w1` and `w2` must name the two Train stages to compare".into());
        }
        Ok(DistanceSpec {
            model: String::new(),
            classes: dataset.num_classes(),
        })
    }
}

impl DistanceSpec {
    pub fn link(&mut self, deps: &[(&'static str, &StageSpec)]) -> std::result::Result<(), String> {
        self.model = pair_model(deps)?;
        Ok(())
    }
}

pub fn run(spec: &DistanceSpec, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
    let model = dep_model(ctx, &spec.model, "w1")?;
    let a = model_tensors(&model)?;
    let b = dep_tensors(ctx, &model, "w2")?;
    let mut summary = Summary::new();
    summary.insert("distance".into(), distance(&model, &a, &b)?);
    Ok((summary, Outcome::default()))
}
