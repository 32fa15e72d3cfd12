//! `Evaluate`: loss and error of a Train stage's final weights on the
//! train and/or test split (BatchNorm in evaluation mode, no augmentation).
//!
//! Writes `metrics.csv` (one row per split) and `summary.json`.

use indexmap::IndexMap;
use samlab_data::DatasetName;
use serde::{Deserialize, Serialize};

use super::{
    Outcome, RunCtx, StageSpec, Subset, Summary, dep_model, eval_loader, evaluate_loader, positive,
    whole,
};
use crate::cache::write_file;
use crate::error::Result;

pub const GRID_FIELDS: &[&str] = &["train_per_class", "test_per_class", "subset_seed"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SplitName {
    Train,
    Test,
}

/// An Evaluate stage as written.
#[derive(Clone, Debug, Default, Deserialize)]
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
    pub grid: Option<IndexMap<String, Vec<f64>>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalSpec {
    pub splits: Vec<SplitName>,
    pub train_subset: Subset,
    pub test_subset: Subset,
    pub subset_seed: u64,
    pub batch: usize,
    /// Filled from the evaluated stage.
    pub model: String,
    pub classes: usize,
}

/// Sets one of [`GRID_FIELDS`] of an evaluating stage (Evaluate, Interpolate).
pub(super) fn set_eval_grid(
    field: &str,
    v: f64,
    train_subset: &mut Option<Subset>,
    test_subset: &mut Option<Subset>,
    subset_seed: &mut Option<u64>,
) -> std::result::Result<(), String> {
    match field {
        "train_per_class" => *train_subset = Some(Subset::PerClass(whole(v)? as usize)),
        "test_per_class" => *test_subset = Some(Subset::PerClass(whole(v)? as usize)),
        "subset_seed" => *subset_seed = Some(whole(v)?),
        _ => return Err(format!("unknown grid field `{field}`")),
    }
    Ok(())
}

/// `(name, is the train split, subset)` of each split an evaluating stage reads.
fn split_parts(
    splits: &[SplitName],
    train: Subset,
    test: Subset,
) -> impl Iterator<Item = (&'static str, bool, Subset)> + '_ {
    splits.iter().map(move |s| match s {
        SplitName::Train => ("train", true, train),
        SplitName::Test => ("test", false, test),
    })
}

/// Batches of `batch` in one evaluation of those splits.
pub(crate) fn split_batches(
    f: &EvalFields,
    classes: usize,
    train_len: usize,
    test_len: usize,
) -> usize {
    split_parts(&f.splits, f.train_subset, f.test_subset)
        .map(|(_, train, sub)| {
            sub.count(if train { train_len } else { test_len }, classes)
                .div_ceil(f.batch)
        })
        .sum()
}

/// One evaluation loader per split, by split name.
pub(crate) fn split_loaders(
    ds: &samlab_data::Dataset,
    f: &EvalFields,
    subset_seed: u64,
) -> Result<Vec<(&'static str, samlab_data::Loader)>> {
    split_parts(&f.splits, f.train_subset, f.test_subset)
        .map(|(name, train, sub)| Ok((name, eval_loader(ds, train, sub, subset_seed, f.batch)?)))
        .collect()
}

/// What every evaluating stage resolves the same way: which splits, which
/// images of each, and the batch size.
#[derive(Clone, Debug)]
pub(crate) struct EvalFields {
    pub splits: Vec<SplitName>,
    pub train_subset: Subset,
    pub test_subset: Subset,
    pub batch: usize,
}

impl EvalFields {
    pub fn resolve(
        splits: &Option<Vec<SplitName>>,
        train_subset: Option<Subset>,
        test_subset: Option<Subset>,
        batch: Option<usize>,
    ) -> std::result::Result<EvalFields, String> {
        let splits = splits
            .clone()
            .unwrap_or(vec![SplitName::Train, SplitName::Test]);
        if splits.is_empty() {
            return Err("`splits` is empty".into());
        }
        let batch = batch.unwrap_or(500);
        positive("batch", batch as u64)?;
        let train_subset = train_subset.unwrap_or(Subset::All);
        let test_subset = test_subset.unwrap_or(Subset::All);
        for s in [train_subset, test_subset] {
            if s == Subset::Off || s == Subset::PerClass(0) {
                return Err("subsets must be All or PerClass(n) with n >= 1; leave a split out of `splits` instead".into());
            }
        }
        Ok(EvalFields {
            splits,
            train_subset,
            test_subset,
            batch,
        })
    }
}

impl EvalPartial {
    pub fn merge(mut self, p: &EvalPartial) -> EvalPartial {
        macro_rules! inherit { ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = p.$f.clone(); } )* }; }
        inherit!(of, splits, train_subset, test_subset, subset_seed, batch);
        self.extends = p.extends.clone();
        self.grid = super::train::merged_grid(self.grid.take(), &p.grid);
        self
    }

    pub fn set_grid(&mut self, field: &str, v: f64) -> std::result::Result<(), String> {
        set_eval_grid(
            field,
            v,
            &mut self.train_subset,
            &mut self.test_subset,
            &mut self.subset_seed,
        )
    }

    pub fn finish(&self, dataset: DatasetName) -> std::result::Result<EvalSpec, String> {
        if self.of.is_none() {
            return Err("`of` is missing: name the Train stage to evaluate".into());
        }
        let EvalFields {
            splits,
            train_subset,
            test_subset,
            batch,
        } = EvalFields::resolve(
            &self.splits,
            self.train_subset,
            self.test_subset,
            self.batch,
        )?;
        Ok(EvalSpec {
            splits,
            train_subset,
            test_subset,
            subset_seed: self.subset_seed.unwrap_or(0),
            batch,
            model: String::new(),
            classes: dataset.num_classes(),
        })
    }
}

impl EvalSpec {
    pub(crate) fn fields(&self) -> EvalFields {
        EvalFields {
            splits: self.splits.clone(),
            train_subset: self.train_subset,
            test_subset: self.test_subset,
            batch: self.batch,
        }
    }

    /// Evaluations, in SGD-step equivalents (a forward pass is about a third of a step).
    pub fn cost(&self, train_len: usize, test_len: usize) -> u64 {
        (split_batches(&self.fields(), self.classes, train_len, test_len) as u64).div_ceil(3)
    }

    pub fn link(&mut self, deps: &[(&'static str, &StageSpec)]) -> std::result::Result<(), String> {
        match deps {
            [(_, StageSpec::Train(t))] => {
                self.model = t.model.clone();
                Ok(())
            }
            [(role, other)] => Err(format!(
                "`{role}` must name a Train stage, not {}",
                other.kind()
            )),
            _ => Err("`of` is missing".into()),
        }
    }
}

pub fn run(spec: &EvalSpec, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
    let model = dep_model(ctx, &spec.model, "of")?;
    let mut summary = Summary::new();
    let mut csv = String::from("split,images,loss,accuracy,error\n");
    for (name, l) in split_loaders(ctx.dataset, &spec.fields(), spec.subset_seed)? {
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
