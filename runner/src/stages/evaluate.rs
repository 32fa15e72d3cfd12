//! `Evaluate`: loss and error of a Train stage's final weights on the
//! train and/or test split (BatchNorm in evaluation mode, no augmentation).
//!
//! Writes `metrics.csv` (one row per split) and `summary.json`.

use samlab_data::DatasetName;
use samlab_models::Arch;
use serde::{Deserialize, Serialize};

use super::data::{EvalFields, SplitName, Subset, evaluate_loader, forward_cost, set_eval_grid};
use super::settings::{Grid, arch_name};
use super::link::{weights_dep, dep_model};
use super::{Deps, Kind, KindPlan, Outcome, Partial, PlanInput, RunCtx, Summary};
use crate::cache::write_file;
use crate::error::{Invalid, Result};

/// An Evaluate stage as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Evaluate")]
pub struct EvalPartial {
    pub extends: Option<String>,
    /// The Train stage whose final weights are evaluated.
    pub of: Option<String>,
    pub splits: Option<Vec<SplitName>>,
    pub train_subset: Option<Subset>,
    pub test_subset: Option<Subset>,
    pub subset_seed: Option<u64>,
    pub batch: Option<usize>,
    pub grid: Option<Grid>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalSpec {
    /// Splits, subsets and batch size.
    #[serde(flatten)]
    pub eval: EvalFields,
    pub subset_seed: u64,
    /// The evaluated stage's.
    #[serde(serialize_with = "arch_name")]
    pub model: Arch,
    pub classes: usize,
}

impl Partial for EvalPartial {
    type Spec = EvalSpec;
    const GRID_FIELDS: &'static [&'static str] =
        &["train_per_class", "test_per_class", "subset_seed"];

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
        set_eval_grid(
            field,
            v,
            &mut self.train_subset,
            &mut self.test_subset,
            &mut self.subset_seed,
        )
    }

    fn finish(&self, dataset: DatasetName, deps: &Deps) -> Result<EvalSpec, Invalid> {
        if self.of.is_none() {
            return Err(Invalid::Missing {
                field: "of",
                hint: ": name the Train stage to evaluate",
            });
        }
        let eval = EvalFields::resolve(
            &self.splits,
            self.train_subset,
            self.test_subset,
            self.batch,
        )?;
        Ok(EvalSpec {
            eval,
            subset_seed: self.subset_seed.unwrap_or(0),
            model: weights_dep(deps)?.model.clone(),
            classes: dataset.num_classes(),
        })
    }
}

impl Kind for EvalSpec {
    const NAME: &'static str = "evaluate";
    const HEADLINE: &'static [&'static str] = &["test_acc"];
    const INDEX: &'static [&'static str] = &["split"];

    fn model(&self) -> &Arch {
        &self.model
    }

    fn plan(&self, input: &PlanInput) -> Result<KindPlan, Invalid> {
        let batches = self.eval.batches(self.classes, &input.data);
        Ok(KindPlan::plain(self, forward_cost(batches)))
    }

    fn run(&self, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
        let model = dep_model(ctx, &self.model, "of")?;
        let mut summary = Summary::new();
        let mut csv = String::from("split,images,loss,accuracy,error\n");
        for (name, l) in self.eval.loaders(ctx.dataset, self.subset_seed)? {
            let (loss, correct, n) = evaluate_loader(&model, &l, ctx.device)?;
            let acc = correct as f64 / n.max(1) as f64;
            csv.push_str(&format!("{name},{n},{loss},{acc},{}\n", 1.0 - acc));
            summary.insert(format!("{name}_loss"), loss);
            summary.insert(format!("{name}_acc"), acc);
            summary.insert(format!("{name}_error"), 1.0 - acc);
        }
        write_file(&ctx.out.join("metrics.csv"), csv.as_bytes())?;
        Ok((summary, Outcome::default()))
    }
}
