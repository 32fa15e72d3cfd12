//! `Escape`: the escape experiment of the thesis' Table 5.1. From a Train
//! stage's final weights (a minimum found by SGD), run SGD or SAM with a
//! constant learning rate and count the steps until the training accuracy
//! falls below a threshold.
//!
//! The training accuracy is measured after every step on a fixed *probe*:
//! the first `probe` images of the Train stage's training set in an order
//! shuffled by `subset_seed`, without augmentation and with BatchNorm in
//! evaluation mode (its running statistics, which the escape steps keep
//! updating). The run starts with fresh momentum at step 0, on the same
//! training images and augmentation as the Train stage, in an order drawn
//! from `seed`. A run that is still above the threshold after `max_steps`
//! steps is *censored*: its summary has `escaped = 0` and no
//! `escape_steps`, so the mean over seeds of `escape_steps` covers the runs
//! that escaped and `escaped` says how many did.
//!
//! **Which training accuracy.** The thesis counts steps "until the training
//! accuracy falls below 90%" without saying how it is measured. Every step
//! records three readings, and `measure` says which one the threshold
//! applies to (the run stops when it crosses):
//!
//! - `Probe` (default): the clean weights after the step, evaluation mode,
//!   on the fixed probe (described above);
//! - `Batch`: the step's own batch in training mode at the weights before
//!   its update (what a training loop logs);
//! - `Perturbed`: SAM's perturbed pass at `w + e` on the step's batch (what
//!   the SAM reference implementations log as training accuracy); an SGD
//!   step has no perturbed pass, so for SGD it is the `Batch` reading.
//!
//! A reading taken during step t counts t steps. The summary has, for each
//! reading, `escape_steps_<reading>` (the first step it fell below the
//! threshold, when it did before the run stopped) and `escaped_<reading>`;
//! `escape_steps` and `escaped` are those of `measure`.
//!
//! Writes `metrics.csv` (one row per step: the step's batch loss, the three
//! readings and the probe's loss) and `summary.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use samlab_data::{DatasetName, Loader, PipelineConfig};
use samlab_models::{Arch, Precision};
use samlab_optim::{
    GhostForm, KindSettings, LrSchedule, Method, RunShape, SamConfig, SgdConfig, StepSchedule, StepSettings, Trainer,
};
use serde::{Deserialize, Serialize};

use super::data::{Feed, TrainImages, TrainingData, evaluate_loader, forward_cost, probe_indices, training_loader};
use super::settings::{Grid, KindsPartial, SamPartial, SgdPartial, arch_name, check_bn_batch, kinds_key, positive, whole};
use super::link::{weights_dep, dep_model};
use super::{
    Censoring, Deps, Done, Kind, KindPlan, Outcome, Partial, PlanInput, PlotOut, RunCtx,
    Summary,
};
use crate::cache::write_file;
use crate::chart::{PALETTE, Series, line_chart, mean_std_points};
use crate::error::{Invalid, Result, stage_err, step_err};

/// Which training accuracy the escape threshold applies to (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Measure {
    #[default]
    Probe,
    Batch,
    Perturbed,
}

impl Measure {
    const ALL: [Measure; 3] = [Measure::Probe, Measure::Batch, Measure::Perturbed];

    fn name(self) -> &'static str {
        match self {
            Measure::Probe => "probe",
            Measure::Batch => "batch",
            Measure::Perturbed => "perturbed",
        }
    }

    fn is_probe(&self) -> bool {
        *self == Measure::Probe
    }
}

/// An Escape stage as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Escape")]
pub struct EscapePartial {
    pub extends: Option<String>,
    /// The Train stage whose final weights are the starting minimum.
    pub of: Option<String>,
    /// `Sgd` or `Sam` at every step.
    pub method: Option<Method>,
    pub sam: Option<SamPartial>,
    /// The step kinds' own settings, as for Train.
    pub kinds: Option<KindsPartial>,
    /// Constant learning rate.
    pub lr: Option<f64>,
    pub batch: Option<usize>,
    /// Ghost batches, as for Train (the thesis' escape runs: 32).
    pub bn_batch: Option<usize>,
    /// How the ghost batches are computed, as for Train.
    pub ghost: Option<GhostForm>,
    pub optimizer: Option<SgdPartial>,
    /// Data order and augmentation of the escape steps.
    pub seed: Option<u64>,
    /// Images in the probe.
    pub probe: Option<usize>,
    pub threshold: Option<f64>,
    /// Which reading the threshold applies to.
    pub measure: Option<Measure>,
    pub max_steps: Option<u64>,
    pub eval_batch: Option<usize>,
    /// `F32` (the default) or `Bf16` autocast, for the steps and probes.
    pub precision: Option<Precision>,
    pub grid: Option<Grid>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EscapeSpec {
    pub method: Method,
    /// `None` for a kind that does not use them (SGD), so that SAM's
    /// settings do not split its key.
    pub sam: Option<SamConfig>,
    /// The step kinds' own settings: in the key as `kinds` where the
    /// method's differ from its defaults.
    #[serde(skip)]
    pub kinds: KindSettings,
    pub lr: f64,
    pub batch: usize,
    /// Ghost batches (`None`: the whole batch); left out of the key when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bn_batch: Option<usize>,
    /// How the ghost batches are computed; left out of the key when
    /// `Sequential`.
    #[serde(skip_serializing_if = "GhostForm::is_sequential")]
    pub ghost: GhostForm,
    pub optimizer: SgdConfig,
    pub seed: u64,
    pub probe: usize,
    pub threshold: f64,
    /// Left out of the key when `Probe` (the reading before there was a
    /// choice), so earlier caches stay valid.
    #[serde(skip_serializing_if = "Measure::is_probe")]
    pub measure: Measure,
    pub max_steps: u64,
    pub eval_batch: usize,
    /// Left out of the key when f32 (keys from before bf16 stay valid).
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// The minimum's model.
    #[serde(serialize_with = "arch_name")]
    pub model: Arch,
    pub classes: usize,
    /// The minimum's training images (`train_subset`, `subset_seed` and,
    /// where it changes them, `val_subset`, at the top of the key).
    #[serde(flatten)]
    pub images: TrainImages,
    pub augment: bool,
}

impl Partial for EscapePartial {
    type Spec = EscapeSpec;
    const GRID_FIELDS: &'static [&'static str] = &[
        "seed",
        "rho",
        "lr",
        "batch",
        "bn_batch",
        "probe",
        "threshold",
    ];

    fn extends(&self) -> Option<&str> {
        self.extends.as_deref()
    }

    fn refs(&self) -> Vec<(&'static str, &str)> {
        self.of.iter().map(|f| ("of", f.as_str())).collect()
    }

    fn grid(&self) -> Option<&Grid> {
        self.grid.as_ref()
    }

    fn grid_paths() -> Vec<String> {
        KindsPartial::grid_paths()
    }

    fn set_grid(&mut self, field: &str, v: f64) -> Result<(), Invalid> {
        match field {
            "seed" => self.seed = Some(whole(v)?),
            "rho" => self.sam.get_or_insert_with(Default::default).rho = Some(v),
            "lr" => self.lr = Some(v),
            "batch" => self.batch = Some(whole(v)? as usize),
            "bn_batch" => self.bn_batch = Some(whole(v)? as usize),
            "probe" => self.probe = Some(whole(v)? as usize),
            "threshold" => self.threshold = Some(v),
            p if p.starts_with("kinds.") => KindsPartial::set(&mut self.kinds, p, v)?,
            _ => return Err(Invalid::UnknownGridField(field.to_string())),
        }
        Ok(())
    }

    fn finish(&self, dataset: DatasetName, deps: &Deps) -> Result<EscapeSpec, Invalid> {
        if self.of.is_none() {
            return Err(Invalid::Missing {
                field: "of",
                hint: ": name the Train stage whose minimum to escape",
            });
        }
        let method = self.method.ok_or(Invalid::Missing {
            field: "method",
            hint: ": `Sgd` or `Sam`",
        })?;
        let lr = self.lr.ok_or(Invalid::Missing {
            field: "lr",
            hint: " (the thesis: 0.03 for ResNet-18)",
        })?;
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Invalid::Value(format!(
                "learning rate {lr} must be finite and > 0"
            )));
        }
        let batch = self.batch.unwrap_or(256);
        positive("batch", batch as u64)?;
        check_bn_batch(self.bn_batch, batch)?;
        let eval_batch = self.eval_batch.unwrap_or(500);
        positive("eval_batch", eval_batch as u64)?;
        let probe = self.probe.unwrap_or(1000);
        positive("probe", probe as u64)?;
        let max_steps = self.max_steps.unwrap_or(2000);
        positive("max_steps", max_steps)?;
        let threshold = self.threshold.unwrap_or(0.9);
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(Invalid::Value(format!(
                "`threshold` {threshold} must lie in (0, 1]"
            )));
        }
        let sam = match method.uses_sam() {
            false => None,
            true => Some(SamPartial::resolve(
                self.sam.as_ref(),
                batch,
                self.bn_batch,
            )?),
        };
        let kinds = KindsPartial::resolve(self.kinds.as_ref())?;
        let plain = SamConfig::new(0.0);
        let ghost = self.ghost.unwrap_or_default();
        let run = RunShape {
            settings: StepSettings {
                sam: sam.as_ref().unwrap_or(&plain),
                bn_batch: self.bn_batch,
                ghost,
            },
            batch: Some(batch),
        };
        kinds.check_run(method, &run)?;
        let minimum = weights_dep(deps)?;
        Ok(EscapeSpec {
            method,
            sam,
            kinds,
            lr,
            batch,
            bn_batch: self.bn_batch,
            ghost,
            optimizer: SgdPartial::resolve(self.optimizer.as_ref())?,
            seed: self.seed.unwrap_or(0),
            probe,
            threshold,
            measure: self.measure.unwrap_or_default(),
            max_steps,
            eval_batch,
            precision: self.precision.unwrap_or_default(),
            model: minimum.model.clone(),
            classes: dataset.num_classes(),
            images: minimum.images,
            augment: minimum.augment,
        })
    }
}

impl EscapeSpec {
    /// The name of the chosen reading (`probe`, `batch`, `perturbed`).
    pub fn measure_name(&self) -> &'static str {
        self.measure.name()
    }
}

impl Kind for EscapeSpec {
    const NAME: &'static str = "escape";
    const HEADLINE: &'static [&'static str] = &["escape_steps", "escaped"];
    const SWEEPS: bool = false;
    const CENSORING: Option<Censoring> = Some(Censoring {
        measure: "escape_steps",
        reached: "escaped",
        budget: "steps",
        verb: "escaped",
    });

    fn model(&self) -> &Arch {
        &self.model
    }

    fn images_per_step(&self) -> Option<usize> {
        Some(self.batch)
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn length(&self) -> String {
        format!("<={}st", self.max_steps)
    }

    /// Upper bound of the work: every step, plus the probe evaluations.
    fn plan(&self, _input: &PlanInput) -> Result<KindPlan, Invalid> {
        let probe = forward_cost(self.probe.div_ceil(self.batch)).max(1.0);
        let cost = self.max_steps as f64 * (self.kinds.cost(self.method) + probe);
        let mut plan = KindPlan::plain(self, cost);
        if let Some(k) = kinds_key(&self.kinds, std::iter::once(self.method)) {
            plan.key_spec["kinds"] = k;
        }
        Ok(plan)
    }

    fn run(&self, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
        run(self, ctx)
    }

    /// Steps to escape against rho, one line per Escape stage, mean +- std
    /// over the seeds that escaped (SGD drawn at rho = 0).
    fn plots(done: &[Done<'_, Self>], out: &PlotOut) -> Result<Vec<String>> {
        let mut escape: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
        for d in done {
            let rho = d.spec.sam.as_ref().map_or(0.0, |s| s.rho);
            if let Some(steps) = d.summary.and_then(|s| s.get("escape_steps")) {
                escape
                    .entry(d.name.to_string())
                    .or_default()
                    .entry(rho.to_bits())
                    .or_default()
                    .push(*steps);
            }
        }
        let series: Vec<Series> = escape
            .iter()
            .enumerate()
            .map(|(i, (name, by_rho))| Series {
                name: name.clone(),
                color: PALETTE[i % PALETTE.len()],
                points: mean_std_points(by_rho),
            })
            .collect();
        let mut written = Vec::new();
        if series.iter().map(|s| s.points.len()).sum::<usize>() >= 2 {
            let name = "escape-steps.svg".to_string();
            line_chart(
                &out.dir.join(&name),
                "Steps to escape (mean ± std over seeds that escaped; censored runs in summary.md)",
                "rho (SGD at 0)",
                "steps until train accuracy < threshold",
                &series,
            )?;
            written.push(name);
        }
        written.extend(readings(done, out)?);
        Ok(written)
    }
}

/// For each Escape stage, the reading its threshold applies to, per step:
/// one series per row (mean over the runs still going), with the threshold.
fn readings(done: &[Done<'_, EscapeSpec>], out: &PlotOut) -> Result<Vec<String>> {
    use crate::chart::{Table, mean_curve, table};
    let mut names: Vec<&str> = Vec::new();
    for d in done {
        if !names.contains(&d.name) {
            names.push(d.name);
        }
    }
    let mut written = Vec::new();
    for name in names {
        // Rows of this stage in order: label, its column, its runs' tables.
        let mut rows: Vec<(String, String, Vec<Table>)> = Vec::new();
        let mut threshold = None;
        for d in done.iter().filter(|d| d.name == name) {
            threshold = Some(d.spec.threshold);
            let i = match rows.iter().position(|r| r.0 == d.label) {
                Some(i) => i,
                None => {
                    let column = format!("{}_acc", d.spec.measure_name());
                    rows.push((d.label.clone(), column, Vec::new()));
                    rows.len() - 1
                }
            };
            rows[i].2.push(table(out.cache, d.key));
        }
        let mut series = Vec::new();
        for (label, column, runs) in &rows {
            let points: Vec<(f64, f64, f64)> = mean_curve(runs, "step", column)
                .into_iter()
                .map(|(x, m, _)| (x, m, 0.0))
                .collect();
            if points.len() >= 2 {
                series.push(Series {
                    name: format!("{label} ({column})"),
                    color: PALETTE[series.len() % PALETTE.len()],
                    points,
                });
            }
        }
        if let (Some(t), false) = (threshold, series.is_empty()) {
            let end = series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
                .fold(1.0, f64::max);
            series.push(Series {
                name: format!("threshold {t}"),
                color: plotters::style::RGBColor(120, 120, 120),
                points: vec![(0.0, t, 0.0), (end, t, 0.0)],
            });
            let file = format!("{name}-readings.svg");
            line_chart(
                &out.dir.join(&file),
                &format!("{name}: training accuracy per step (mean over the runs still going)"),
                "step",
                "accuracy",
                &series,
            )?;
            written.push(file);
        }
    }
    Ok(written)
}

fn run(spec: &EscapeSpec, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
    let ds = ctx.dataset;
    let mut model = dep_model(ctx, &spec.model, "of")?;
    model.precision = spec.precision;
    let train_idx = spec.images.indices(&ds.train, ds.num_classes())?;
    let probe_idx = probe_indices(
        train_idx.clone(),
        ds.train.len(),
        spec.probe,
        spec.images.subset_seed,
    );
    let probe = Loader::new(
        ds.train.clone(),
        Some(probe_idx),
        PipelineConfig::eval(spec.eval_batch, ds.name.normalization()),
    )?;
    let how = TrainingData {
        batch: spec.batch,
        seed: spec.seed,
        augment: spec.augment,
        reshuffle: None,
    };
    let loader = training_loader(ds, train_idx, how, ctx.stage)?;
    let spe = loader.batches_per_epoch() as u64;
    let mut trainer = Trainer::new(
        spec.optimizer.clone(),
        spec.sam.clone().unwrap_or(SamConfig::new(0.0)),
        LrSchedule::Constant { lr: spec.lr },
        &StepSchedule::Always(spec.method),
        spec.max_steps,
        spe,
    )
    .map_err(step_err(ctx.stage))?
    .with_bn_batch(spec.bn_batch)?
    .with_ghost(spec.ghost)?
    .with_kinds(spec.kinds.clone())?;

    let (loss0, correct0, n0) = evaluate_loader(&model, &probe, ctx.device)?;
    let start_acc = correct0 as f64 / n0.max(1) as f64;
    if start_acc < spec.threshold {
        return Err(stage_err(
            ctx.stage,
            format!(
                "the starting weights reach only {:.2}% on the probe, already below the threshold {}%: train the minimum longer or lower `threshold`",
                100.0 * start_acc,
                100.0 * spec.threshold
            ),
        ));
    }
    let mut csv = String::from("step,batch_loss,batch_acc,perturbed_acc,probe_loss,probe_acc\n");
    let _ = writeln!(csv, "0,,,,{loss0},{start_acc}");
    let bar = ctx.progress.stage_bar(ctx.stage, spec.max_steps, 0);
    // The first step each reading fell below the threshold.
    let mut crossed: [Option<u64>; 3] = [None; 3];
    let mut outcome = Outcome::default();
    let chosen = Measure::ALL
        .iter()
        .position(|m| *m == spec.measure)
        .expect("listed");
    let feed = Feed::new(loader.clone(), ctx.device)?;
    'outer: for epoch in 0.. {
        for batch in feed.epoch(epoch, ctx.device) {
            let (x, y) = batch?;
            let out = trainer
                .train_step(&model, &x, &y)
                .map_err(step_err(ctx.stage))?;
            outcome.steps_run += 1;
            let (loss, correct, n) = evaluate_loader(&model, &probe, ctx.device)?;
            let samples = out.samples.max(1) as f64;
            let batch_acc = out.correct as f64 / samples;
            let perturbed_acc = out
                .perturbed_correct
                .map_or(batch_acc, |k| k as f64 / samples);
            let probe_acc = correct as f64 / n.max(1) as f64;
            let _ = writeln!(
                csv,
                "{},{},{batch_acc},{perturbed_acc},{loss},{probe_acc}",
                trainer.step, out.loss
            );
            bar.inc(1);
            for (c, acc) in crossed
                .iter_mut()
                .zip([probe_acc, batch_acc, perturbed_acc])
            {
                if c.is_none() && acc < spec.threshold {
                    *c = Some(trainer.step);
                }
            }
            if crossed[chosen].is_some() || trainer.step >= spec.max_steps {
                break 'outer;
            }
        }
    }
    bar.finish();
    outcome.passes_run = trainer.passes;
    write_file(&ctx.out.join("metrics.csv"), csv.as_bytes())?;
    let mut summary = Summary::new();
    summary.insert("start_probe_acc".into(), start_acc);
    for (m, c) in Measure::ALL.iter().zip(crossed) {
        summary.insert(format!("escaped_{}", m.name()), c.is_some() as u64 as f64);
        if let Some(s) = c {
            summary.insert(format!("escape_steps_{}", m.name()), s as f64);
        }
        if *m == spec.measure {
            summary.insert("escaped".into(), c.is_some() as u64 as f64);
            if let Some(s) = c {
                summary.insert("escape_steps".into(), s as f64);
            }
        }
    }
    summary.insert("steps".into(), trainer.step as f64);
    summary.insert("passes".into(), trainer.passes);
    Ok((summary, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_a_fixed_subset_of_the_training_images() {
        let train = Some(vec![3, 5, 8, 13, 21, 34, 55]);
        let a = probe_indices(train.clone(), 100, 4, 1);
        assert_eq!(a, probe_indices(train.clone(), 100, 4, 1));
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|i| train.as_ref().unwrap().contains(i)));
        assert_ne!(a, probe_indices(train, 100, 4, 2));
        assert_eq!(
            probe_indices(None, 10, 20, 0),
            (0..10).collect::<Vec<u32>>()
        );
    }
}
