//! `Interpolate`: the loss landscape between two solutions (the thesis'
//! Figures 5.1 and 5.2). For each `a` of a grid, the weights
//! `w(a) = (1 - a) w1 + a w2` are evaluated on the train and/or test split:
//! loss and error, BatchNorm in evaluation mode, no augmentation. The grid
//! may reach beyond [0, 1].
//!
//! BatchNorm's running statistics are either interpolated like the weights
//! (`bn: Interpolated`, the default; a running variance that extrapolation
//! drives below zero is clamped to 0), or re-estimated at every `a`
//! (`bn: Recomputed(batches: n)`): the mean of the batch statistics of the first `n`
//! batches of `batch` images of the first solution's training images (no
//! augmentation, in a fixed order; the last batch may be smaller), as PyTorch's `momentum=None` cumulative average would give.
//!
//! Also reports the L2 distance between the two solutions' trainable
//! parameters. Writes `metrics.csv` (`alpha, split, images, loss, error`)
//! and `summary.json`.

use std::collections::HashMap;
use std::fmt::Write as _;

use candle_core::{Device, Tensor};
use plotters::style::{BLUE, RED};
use samlab_data::{DatasetName, Loader, PipelineConfig};
use samlab_models::{Arch, Model};
use serde::{Deserialize, Serialize};

use super::data::{EvalFields, SplitName, Subset, TrainImages, evaluate_loader, forward_cost, set_eval_grid};
use super::settings::{AlphaGrid, Grid, arch_name, pair_refs, positive};
use super::link::{pair_model, dep_model, dep_tensors, distance, model_tensors};
use super::{
    Deps, Done, Kind, KindPlan, Outcome, Partial, PlanInput, PlotOut, RunCtx, Summary,
};
use crate::cache::write_file;
use crate::chart::{Series, line_chart};
use crate::error::{Invalid, Result};

/// How BatchNorm's running statistics are set at each `a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BnStats {
    Interpolated,
    Recomputed { batches: usize },
}

/// An Interpolate stage as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Interpolate")]
pub struct InterpPartial {
    pub extends: Option<String>,
    /// The Train stages at a = 0 and a = 1.
    pub w1: Option<String>,
    pub w2: Option<String>,
    pub alpha: Option<AlphaGrid>,
    pub bn: Option<BnStats>,
    pub splits: Option<Vec<SplitName>>,
    pub train_subset: Option<Subset>,
    pub test_subset: Option<Subset>,
    pub subset_seed: Option<u64>,
    pub batch: Option<usize>,
    pub grid: Option<Grid>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InterpSpec {
    pub alpha: AlphaGrid,
    pub bn: BnStats,
    /// Splits, subsets and batch size.
    #[serde(flatten)]
    pub eval: EvalFields,
    pub subset_seed: u64,
    /// The model of both stages.
    #[serde(serialize_with = "arch_name")]
    pub model: Arch,
    pub classes: usize,
    /// The first solution's training images (for `Recomputed`).
    pub w1_train_subset: Subset,
    /// `w1`'s validation split, where it changes its training images.
    #[serde(skip_serializing_if = "Subset::is_off")]
    pub w1_val_subset: Subset,
    pub w1_subset_seed: u64,
}

impl Partial for InterpPartial {
    type Spec = InterpSpec;
    const GRID_FIELDS: &'static [&'static str] =
        &["train_per_class", "test_per_class", "subset_seed"];

    fn extends(&self) -> Option<&str> {
        self.extends.as_deref()
    }

    fn refs(&self) -> Vec<(&'static str, &str)> {
        pair_refs(&self.w1, &self.w2)
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

    fn finish(&self, dataset: DatasetName, deps: &Deps) -> Result<InterpSpec, Invalid> {
        if self.w1.is_none() || self.w2.is_none() {
            return Err(Invalid::Value(
                "`w1` and `w2` must name the two Train stages to interpolate".into(),
            ));
        }
        let alpha = self.alpha.unwrap_or(AlphaGrid {
            start: -0.5,
            end: 1.5,
            points: 21,
        });
        if alpha.points == 0 || !alpha.start.is_finite() || !alpha.end.is_finite() {
            return Err(Invalid::Value(format!(
                "`alpha` needs finite `start` and `end` and `points` >= 1, not {alpha:?}"
            )));
        }
        let bn = self.bn.unwrap_or(BnStats::Interpolated);
        if let BnStats::Recomputed { batches } = bn {
            positive("batches", batches as u64)?;
        }
        let eval = EvalFields::resolve(
            &self.splits,
            self.train_subset,
            self.test_subset,
            self.batch,
        )?;
        let model = pair_model(deps)?;
        // BatchNorm statistics are recomputed on `w1`'s training images.
        let w1 = deps
            .iter()
            .find(|(r, _)| *r == "w1")
            .and_then(|(_, d)| d.weights())
            .ok_or(Invalid::Missing {
                field: "w1",
                hint: "",
            })?;
        Ok(InterpSpec {
            alpha,
            bn,
            eval,
            subset_seed: self.subset_seed.unwrap_or(0),
            model,
            classes: dataset.num_classes(),
            w1_train_subset: w1.images.train_subset,
            w1_val_subset: w1.images.val_subset,
            w1_subset_seed: w1.images.subset_seed,
        })
    }
}

impl Kind for InterpSpec {
    const NAME: &'static str = "interpolate";
    const INDEX: &'static [&'static str] = &["split", "alpha"];
    const HEADLINE: &'static [&'static str] = &[
        "train_error_max_between",
        "test_error_max_between",
        "distance",
    ];

    fn model(&self) -> &Arch {
        &self.model
    }

    fn length(&self) -> String {
        format!("{}pt", self.alpha.points)
    }

    /// Evaluations at every point, and the BatchNorm re-estimation batches.
    fn plan(&self, input: &PlanInput) -> Result<KindPlan, Invalid> {
        let recompute = match self.bn {
            BnStats::Recomputed { batches } => batches,
            BnStats::Interpolated => 0,
        };
        let per_point = self.eval.batches(self.classes, &input.data) + recompute;
        Ok(KindPlan::plain(
            self,
            forward_cost(per_point * self.alpha.points),
        ))
    }

    fn run(&self, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
        run(self, ctx)
    }

    /// Per stage: train (red) and test (blue) error along `a`, and the same
    /// for the loss, as the thesis draws Figures 5.1 and 5.2.
    fn plots(done: &[Done<'_, Self>], out: &PlotOut) -> Result<Vec<String>> {
        let mut written = Vec::new();
        for d in done {
            let (_, data) = crate::chart::fields(out.cache, d.key);
            let stem = d.stem.clone();
            for (col, what) in [(4, "error"), (3, "loss")] {
                let mut series = Vec::new();
                for (split, color) in [("train", RED), ("test", BLUE)] {
                    let points: Vec<(f64, f64, f64)> = data
                        .iter()
                        .filter(|row| row.len() > col && row[1] == split)
                        .filter_map(|row| Some((row[0].parse().ok()?, row[col].parse().ok()?, 0.0)))
                        .collect();
                    if points.len() >= 2 {
                        series.push(Series {
                            name: split.into(),
                            color,
                            points,
                        });
                    }
                }
                if !series.is_empty() {
                    let name = format!("{stem}-{what}.svg");
                    line_chart(
                        &out.dir.join(&name),
                        &format!("{}: {what} along (1-a) w1 + a w2", d.display),
                        "a",
                        what,
                        &series,
                    )?;
                    written.push(name);
                }
            }
        }
        Ok(written)
    }
}

/// How much the loss rises around `a0` along the line: the mean of the
/// loss at `a0 - d` and `a0 + d`, minus the loss at `a0`, with `d` the
/// largest step up to 0.5 the grid reaches on both sides (linear between
/// grid points). The flatter end of the line has the smaller rise (the
/// thesis' Figure 5.1: SGD->SAM's end sits in the flatter region).
pub fn rise(curve: &[(f64, f64)], a0: f64) -> Option<f64> {
    let lo = curve.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let hi = curve.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let d = (a0 - lo).min(hi - a0).min(0.5);
    if d.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let mut pts: Vec<(f64, f64)> = curve.to_vec();
    pts.sort_by(|p, q| p.0.total_cmp(&q.0));
    let at = |a: f64| -> Option<f64> {
        pts.windows(2).find_map(|w| {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            (x0 <= a && a <= x1).then(|| {
                if x1 > x0 {
                    y0 + (y1 - y0) * (a - x0) / (x1 - x0)
                } else {
                    y0
                }
            })
        })
    };
    Some((at(a0 - d)? + at(a0 + d)?) / 2.0 - at(a0)?)
}

/// Sets the model to `(1 - a) w1 + a w2`, running variances clamped at 0.
fn set_interpolated(
    model: &Model,
    w1: &HashMap<String, Tensor>,
    w2: &HashMap<String, Tensor>,
    a: f64,
) -> Result<()> {
    for (name, var) in model.params.all() {
        let t = ((&w1[name] * (1.0 - a))? + (&w2[name] * a)?)?;
        let t = if name.ends_with("running_var") {
            t.relu()?
        } else {
            t
        };
        var.set(&t)?;
    }
    Ok(())
}

/// Replaces the running statistics by the mean of the batch statistics of
/// every batch `loader` yields. BatchNorm updates `r <- (1 - m) r + m s`
/// with m = 0.1, so each batch's `s` is recovered from consecutive values
/// of `r`.
fn recompute_bn(
    model: &Model,
    loader: &Loader,
    batches: usize,
    device: &Device,
    stage: &str,
) -> Result<()> {
    const M: f64 = 0.1;
    let mut sums: Option<Vec<Tensor>> = None;
    let mut n = 0usize;
    for batch in loader.epoch(0).take(batches) {
        let (x, _) = batch.to_tensors(device)?;
        let before = model.params.snapshot_buffers()?;
        model.forward(&x, true)?;
        let after = model.params.snapshot_buffers()?;
        let stats: Vec<Tensor> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (a - (b * (1.0 - M))?)? / M)
            .collect::<candle_core::Result<_>>()?;
        sums = Some(match sums {
            None => stats,
            Some(s) => s
                .iter()
                .zip(&stats)
                .map(|(x, y)| x + y)
                .collect::<candle_core::Result<_>>()?,
        });
        n += 1;
    }
    if n < batches {
        return Err(crate::error::stage_err(
            stage,
            format!(
                "`Recomputed(batches: {batches})` needs {batches} batches, w1's training images make {n}"
            ),
        ));
    }
    if let Some(s) = sums {
        let mean: Vec<Tensor> = s
            .iter()
            .map(|t| t / n as f64)
            .collect::<candle_core::Result<_>>()?;
        model.params.restore_buffers(&mean)?;
    }
    Ok(())
}

fn run(spec: &InterpSpec, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
    let ds = ctx.dataset;
    let model = dep_model(ctx, &spec.model, "w2")?;
    let w2 = model_tensors(&model)?;
    let w1 = dep_tensors(ctx, &model, "w1")?;
    let loaders = spec.eval.loaders(ds, spec.subset_seed)?;
    let bn_loader = match spec.bn {
        BnStats::Recomputed { .. } => {
            let w1 = TrainImages {
                train_subset: spec.w1_train_subset,
                val_subset: spec.w1_val_subset,
                subset_seed: spec.w1_subset_seed,
            };
            let idx = w1.indices(&ds.train, ds.num_classes())?;
            Some(Loader::new(
                ds.train.clone(),
                idx,
                PipelineConfig::eval(spec.eval.batch, ds.name.normalization()),
            )?)
        }
        BnStats::Interpolated => None,
    };

    let alphas = spec.alpha.values();
    let bar = ctx.progress.stage_bar(ctx.stage, alphas.len() as u64, 0);
    let mut csv = String::from("alpha,split,images,loss,error\n");
    let mut summary = Summary::new();
    let mut worst: HashMap<&str, f64> = HashMap::new();
    let mut curves: HashMap<&str, Vec<(f64, f64)>> = HashMap::new();
    for &a in &alphas {
        set_interpolated(&model, &w1, &w2, a)?;
        if let (BnStats::Recomputed { batches }, Some(l)) = (spec.bn, &bn_loader) {
            recompute_bn(&model, l, batches, ctx.device, ctx.stage)?;
        }
        for (name, loader) in &loaders {
            let (loss, correct, n) = evaluate_loader(&model, loader, ctx.device)?;
            let err = 1.0 - correct as f64 / n.max(1) as f64;
            let _ = writeln!(csv, "{a},{name},{n},{loss},{err}");
            curves.entry(name).or_default().push((a, loss));
            if a == 0.0 {
                summary.insert(format!("{name}_error_w1"), err);
            }
            if a == 1.0 {
                summary.insert(format!("{name}_error_w2"), err);
            }
            if (0.0..=1.0).contains(&a) {
                let w = worst.entry(name).or_insert(f64::NEG_INFINITY);
                *w = w.max(err);
            }
        }
        bar.inc(1);
    }
    bar.finish();
    for (name, w) in worst {
        summary.insert(format!("{name}_error_max_between"), w);
    }
    for (name, curve) in &curves {
        for (end, a0) in [("w1", 0.0), ("w2", 1.0)] {
            if let Some(r) = rise(curve, a0) {
                summary.insert(format!("{name}_loss_rise_{end}"), r);
            }
        }
    }
    summary.insert("distance".into(), distance(&model, &w1, &w2)?);
    write_file(&ctx.out.join("metrics.csv"), csv.as_bytes())?;
    Ok((summary, Outcome::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_reads_the_curve_on_both_sides_of_each_end() {
        // loss min(a^2, 4 (a - 1)^2): at d = 0.5 around w1 (0.25 + 0.25) / 2,
        // around w2 (0.25 + 1) / 2
        let curve: Vec<(f64, f64)> = (0..=20)
            .map(|i| {
                let a = -0.5 + 0.1 * i as f64;
                (a, (a * a).min(4.0 * (a - 1.0) * (a - 1.0)))
            })
            .collect();
        assert!((rise(&curve, 0.0).unwrap() - 0.25).abs() < 1e-9);
        assert!((rise(&curve, 1.0).unwrap() - 0.625).abs() < 1e-9);
        // a grid that ends at a = 1 has no right side there
        let short: Vec<(f64, f64)> = curve
            .iter()
            .copied()
            .filter(|p| p.0 <= 1.0 + 1e-9)
            .collect();
        assert_eq!(rise(&short, 1.0), None);
    }
}
