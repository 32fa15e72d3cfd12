//! `Distance`: the L2 distance between two Train stages' final weights over
//! the trainable parameters (BatchNorm's running statistics left out), for
//! the ablations of the thesis' Figure 5.3. Writes only `summary.json`.

use samlab_data::DatasetName;
use serde::{Deserialize, Serialize};

use super::settings::{Grid, arch_name, pair_refs};
use samlab_models::Arch;
use super::link::{pair_model, dep_model, dep_tensors, distance, model_tensors};
use super::{Deps, Kind, KindPlan, Outcome, Partial, PlanInput, RunCtx, Summary};
use crate::error::{Invalid, Result};

/// A Distance stage as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Distance")]
pub struct DistancePartial {
    pub extends: Option<String>,
    pub w1: Option<String>,
    pub w2: Option<String>,
    pub grid: Option<Grid>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DistanceSpec {
    /// The model of both stages compared.
    #[serde(serialize_with = "arch_name")]
    pub model: Arch,
    pub classes: usize,
}

impl Partial for DistancePartial {
    type Spec = DistanceSpec;
    const GRID_FIELDS: &'static [&'static str] = &[];

    fn extends(&self) -> Option<&str> {
        self.extends.as_deref()
    }

    fn refs(&self) -> Vec<(&'static str, &str)> {
        pair_refs(&self.w1, &self.w2)
    }

    fn grid(&self) -> Option<&Grid> {
        self.grid.as_ref()
    }

    fn set_grid(&mut self, field: &str, _v: f64) -> Result<(), Invalid> {
        Err(Invalid::UnknownGridField(field.to_string()))
    }

    fn finish(&self, dataset: DatasetName, deps: &Deps) -> Result<DistanceSpec, Invalid> {
        if self.w1.is_none() || self.w2.is_none() {
            return Err(Invalid::Value(
                "`w1` and `w2` must name the two Train stages to compare".into(),
            ));
        }
        Ok(DistanceSpec {
            model: pair_model(deps)?,
            classes: dataset.num_classes(),
        })
    }
}

impl Kind for DistanceSpec {
    const NAME: &'static str = "distance";
    const HEADLINE: &'static [&'static str] = &["distance"];

    fn model(&self) -> &Arch {
        &self.model
    }

    fn plan(&self, _input: &PlanInput) -> Result<KindPlan, Invalid> {
        Ok(KindPlan::plain(self, 1.0))
    }

    fn run(&self, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
        let model = dep_model(ctx, &self.model, "w1")?;
        let a = model_tensors(&model)?;
        let b = dep_tensors(ctx, &model, "w2")?;
        let mut summary = Summary::new();
        summary.insert("distance".into(), distance(&model, &a, &b)?);
        Ok((summary, Outcome::default()))
    }
}
