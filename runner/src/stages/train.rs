//! `Train`: trains a model from scratch or from another Train stage's
//! final checkpoint, with SGD or SAM per step as its schedule says.
//!
//! Writes `model.safetensors` (weights and BatchNorm buffers),
//! `optim.safetensors` (momentum, step and pass counters), `metrics.csv`
//! (one row per epoch) and `summary.json`. Keeps a rolling checkpoint
//! after every epoch, and a shared-prefix checkpoint at every epoch where
//! another run of the study branches off. Mid-epoch, it writes a rolling
//! checkpoint at the step where a signal asks it to stop
//! ([`crate::interrupt`]) or where `--checkpoint-every` has passed since
//! the last one, with the epoch's running sums (`epoch.json`), so that a
//! resumed run continues to the bits of an uninterrupted one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use samlab_data::DatasetName;
use samlab_models::{Arch, Model, Precision};
use samlab_optim::{
    GhostForm, KindSettings, LrSchedule, Method, Point, Resolved, RunShape, SamConfig, SgdConfig, StepSchedule,
    StepSettings, Trainer,
};
use serde::{Deserialize, Serialize};

use super::data::{Feed, SplitName, Subset, TrainingData, eval_loader, evaluate_loader, training_loader};
use super::settings::{Grid, KindsPartial, SamPartial, SgdPartial, arch_name, check_bn_batch, kinds_key, non_default_kinds, positive, whole};
use super::{
    Deps, Done, Kind, KindPlan, Outcome, Partial, PlanInput, PlotOut, RunCtx, Summary,
};
use crate::cache::{Verify, partial_name, resume_point, unix_time, write_file};
use crate::error::{ErrorKind, Invalid, Result, io, stage_err, step_err};
use crate::key::PrefixPlan;

/// A Train stage as written; every field may come from what it extends.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Train")]
pub struct TrainPartial {
    pub extends: Option<String>,
    /// A Train or Import stage whose final weights this run starts from
    /// (fine-tuning a network imported from PyTorch, say).
    pub from: Option<String>,
    pub model: Option<String>,
    pub train_subset: Option<Subset>,
    /// Training images held out for validation: `PerClass(n)`, disjoint
    /// from the training images, drawn by `subset_seed` (default `Off`).
    pub val_subset: Option<Subset>,
    pub subset_seed: Option<u64>,
    pub batch: Option<usize>,
    /// Ghost batches: BatchNorm over slices of this many images, SGD and
    /// SAM steps alike (the thesis: 32, one GPU's share of 256).
    pub bn_batch: Option<usize>,
    /// How the ghost batches are computed: `Sequential` (the default, one
    /// pass per slice) or `Batched` (one batched pass per SAM pass, SGD
    /// and SAM steps only; `samlab_optim::batched`).
    pub ghost: Option<GhostForm>,
    pub epochs: Option<u64>,
    pub seed: Option<u64>,
    /// A fork: from `epoch` on, the data order and augmentation come from
    /// `seed` (the run's first `epoch` epochs, shared with the unforked
    /// run through the cache, are unchanged).
    pub reshuffle: Option<Reshuffle>,
    pub augment: Option<bool>,
    pub optimizer: Option<SgdPartial>,
    pub lr: Option<LrSchedule>,
    pub method: Option<StepSchedule>,
    pub sam: Option<SamPartial>,
    /// The step kinds' own settings (`kinds: (look_sam: (k: 3))`).
    pub kinds: Option<KindsPartial>,
    pub test_subset: Option<Subset>,
    /// Evaluate on the validation and test subsets every this many epochs
    /// (and after the last), into the metric rows (default: only at the end).
    pub eval_every: Option<u64>,
    pub eval_batch: Option<usize>,
    /// `F32` (the default, the thesis' setting) or `Bf16` autocast.
    pub precision: Option<Precision>,
    pub grid: Option<Grid>,
}

/// A fully resolved Train stage: what its key is made of.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainSpec {
    /// The model it trains.
    #[serde(serialize_with = "arch_name")]
    pub model: Arch,
    pub train_subset: Subset,
    /// Held-out training images (`val_loss`, `val_acc`); left out of the
    /// key when `Off`.
    #[serde(skip_serializing_if = "is_off")]
    pub val_subset: Subset,
    pub subset_seed: u64,
    pub batch: usize,
    /// Ghost batches (`None`: the whole batch); left out of the key when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bn_batch: Option<usize>,
    /// How the ghost batches are computed; left out of the key (and of the
    /// prefix keys) when `Sequential`, so a batched run shares nothing
    /// with a sequential one.
    #[serde(skip_serializing_if = "GhostForm::is_sequential")]
    pub ghost: GhostForm,
    pub epochs: u64,
    /// Initialisation and data order.
    pub seed: u64,
    /// From an epoch on, the data order from another seed; left out of
    /// the key when unset, and out of the shared prefixes before its epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reshuffle: Option<Reshuffle>,
    pub augment: bool,
    pub optimizer: SgdConfig,
    pub lr: LrSchedule,
    pub method: StepSchedule,
    pub sam: SamConfig,
    /// The step kinds' own settings: in the key as `kinds`, for the kinds
    /// the run uses, where they differ from the defaults (`key_spec`).
    #[serde(skip)]
    pub kinds: KindSettings,
    /// Final evaluation on the test split (`Off`: none).
    pub test_subset: Subset,
    /// Evaluation every this many epochs; left out of the key when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<u64>,
    pub eval_batch: usize,
    /// Classes of the dataset (the model's output width).
    pub classes: usize,
    /// What training and the final evaluation compute in; left out of the
    /// key when f32, so f32 keys are what they were before bf16 existed.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// Indices into a split.
type Indices = Vec<u32>;

/// A fork of a run (`reshuffle: (epoch: 24, seed: 100)`): epochs `0..epoch`
/// are the run's own (the same init, order and steps, shared through the
/// cache with the run without it); from epoch `epoch` on (counted from 0,
/// so after `epoch` epochs), the order and augmentation of each epoch are
/// drawn from `seed` instead of the run's seed. Initialisation, the
/// schedule and every other setting are the run's. The control of "how far
/// does a run move when only its data order changes" (an SGD->SGD fork
/// beside SGD->SAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reshuffle {
    pub epoch: u64,
    pub seed: u64,
}

/// The study's fork as the input pipeline and the prefix keys take it.
impl From<Reshuffle> for samlab_data::Reshuffle {
    fn from(r: Reshuffle) -> Self {
        samlab_data::Reshuffle {
            epoch: r.epoch,
            seed: r.seed,
        }
    }
}

fn is_off(s: &Subset) -> bool {
    *s == Subset::Off
}

impl Partial for TrainPartial {
    type Spec = TrainSpec;
    const GRID_FIELDS: &'static [&'static str] = &[
        "seed",
        "rho",
        "lr",
        "epochs",
        "batch",
        "bn_batch",
        "train_per_class",
        "chunk",
        "period",
        "switch_epoch",
    ];

    fn extends(&self) -> Option<&str> {
        self.extends.as_deref()
    }

    fn refs(&self) -> Vec<(&'static str, &str)> {
        self.from.iter().map(|f| ("from", f.as_str())).collect()
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
            "rho" => self.sam.get_or_insert_default().rho = Some(v),
            "lr" => {
                self.lr = Some(match self.lr.take() {
                    Some(LrSchedule::Constant { .. }) => LrSchedule::Constant { lr: v },
                    _ => LrSchedule::Cosine { lr: v },
                })
            }
            "epochs" => self.epochs = Some(whole(v)?),
            "batch" => self.batch = Some(whole(v)? as usize),
            "bn_batch" => self.bn_batch = Some(whole(v)? as usize),
            "train_per_class" => self.train_subset = Some(Subset::PerClass(whole(v)? as usize)),
            "chunk" => self.sam.get_or_insert_default().chunk = Some(whole(v)? as usize),
            "period" => match &mut self.method {
                Some(StepSchedule::Psam { period, .. }) => *period = whole(v)?,
                _ => return Err(Invalid::Value("`period` needs `method: Psam(...)`".into())),
            },
            "switch_epoch" => match &mut self.method {
                Some(StepSchedule::Switch { at, .. }) => *at = Point::Epoch(v),
                _ => {
                    return Err(Invalid::Value(
                        "`switch_epoch` needs `method: Switch(...)`".into(),
                    ));
                }
            },
            p if p.starts_with("kinds.") => KindsPartial::set(&mut self.kinds, p, v)?,
            _ => return Err(Invalid::UnknownGridField(field.to_string())),
        }
        Ok(())
    }

    fn finish(&self, dataset: DatasetName, deps: &Deps) -> Result<TrainSpec, Invalid> {
        let model_name = self.model.as_deref().ok_or(Invalid::Missing {
            field: "model",
            hint: " (e.g. model: \"resnet18\")",
        })?;
        let arch: Arch = model_name.parse()?;
        // `from` starts from the final weights of a Train or Import stage
        // of the same model.
        for (role, d) in deps {
            let w = d.weights().ok_or(Invalid::NotTrain {
                role,
                found: d.kind(),
            })?;
            if *w.model != arch {
                return Err(Invalid::Value(format!(
                    "`{role}` names a {} network, but this stage trains {arch}",
                    w.model
                )));
            }
        }
        let epochs = self.epochs.ok_or(Invalid::Missing {
            field: "epochs",
            hint: "",
        })?;
        positive("epochs", epochs)?;
        let batch = self.batch.unwrap_or(256);
        positive("batch", batch as u64)?;
        let eval_batch = self.eval_batch.unwrap_or(500);
        positive("eval_batch", eval_batch as u64)?;
        let optimizer = SgdPartial::resolve(self.optimizer.as_ref())?;
        check_bn_batch(self.bn_batch, batch)?;
        let sam = SamPartial::resolve(self.sam.as_ref(), batch, self.bn_batch)?;
        let lr = self.lr.clone().unwrap_or(LrSchedule::Cosine { lr: 0.1 });
        let lr_value = match lr {
            LrSchedule::Constant { lr } | LrSchedule::Cosine { lr } => lr,
        };
        if !(lr_value.is_finite() && lr_value >= 0.0) {
            return Err(Invalid::Value(format!(
                "learning rate {lr_value} must be finite and >= 0"
            )));
        }
        let train_subset = self.train_subset.unwrap_or(Subset::All);
        if train_subset == Subset::Off || train_subset == Subset::PerClass(0) {
            return Err(Invalid::Value(
                "`train_subset` must be All or PerClass(n) with n >= 1".into(),
            ));
        }
        let test_subset = self.test_subset.unwrap_or(Subset::All);
        let val_subset = self.val_subset.unwrap_or(Subset::Off);
        if matches!(val_subset, Subset::All | Subset::PerClass(0)) {
            return Err(Invalid::Value(
                "`val_subset` must be Off or PerClass(n) with n >= 1 (images held out of training)"
                    .into(),
            ));
        }
        if let Some(k) = self.eval_every {
            positive("eval_every", k)?;
        }
        let method = self
            .method
            .clone()
            .unwrap_or(StepSchedule::Always(Method::Sgd));
        let seed = self.seed.unwrap_or(0);
        if let Some(r) = self.reshuffle {
            if r.epoch >= epochs {
                return Err(Invalid::Value(format!(
                    "reshuffle.epoch ({}) must be below epochs ({epochs}): the run would never reshuffle",
                    r.epoch
                )));
            }
            if r.seed == seed {
                return Err(Invalid::Value(format!(
                    "reshuffle.seed ({}) is the run's own seed: the fork would be the run itself",
                    r.seed
                )));
            }
        }
        let kinds = KindsPartial::resolve(self.kinds.as_ref())?;
        let ghost = self.ghost.unwrap_or_default();
        // A kind that cannot take a setting of this run says so here.
        for m in method.kinds() {
            let run = RunShape {
                settings: StepSettings {
                    sam: &sam,
                    bn_batch: self.bn_batch,
                    ghost,
                },
                batch: Some(batch),
            };
            kinds.check_run(m, &run)?;
        }
        Ok(TrainSpec {
            model: arch,
            train_subset,
            val_subset,
            eval_every: self.eval_every,
            subset_seed: self.subset_seed.unwrap_or(0),
            batch,
            bn_batch: self.bn_batch,
            ghost,
            epochs,
            seed,
            reshuffle: self.reshuffle,
            augment: self.augment.unwrap_or(true),
            optimizer,
            lr,
            method,
            sam,
            kinds,
            test_subset,
            eval_batch,
            classes: dataset.num_classes(),
            precision: self.precision.unwrap_or_default(),
        })
    }
}

impl TrainSpec {

    /// Training images of a training split of `train_len` images.
    pub fn train_images(&self, train_len: usize) -> usize {
        let held = self.val_subset.count(train_len, self.classes);
        match self.train_subset {
            Subset::All => train_len.saturating_sub(held),
            s => s.count(train_len, self.classes),
        }
    }

    /// Steps per epoch on a training split of `train_len` images.
    pub fn steps_per_epoch(&self, train_len: usize) -> u64 {
        (self.train_images(train_len) / self.batch) as u64
    }

    /// The training images and the held-out ones (`None`: every image;
    /// no validation), as indices into the training split.
    fn split(&self, ds: &samlab_data::Dataset) -> Result<(Option<Indices>, Option<Indices>)> {
        let classes = ds.num_classes();
        Ok(match self.val_subset {
            Subset::PerClass(v) => {
                let n = match self.train_subset {
                    Subset::PerClass(n) => Some(n),
                    _ => None,
                };
                let (t, held) =
                    samlab_data::split_per_class(&ds.train, classes, n, v, self.subset_seed)?;
                (Some(t), Some(held))
            }
            _ => (
                self.train_subset
                    .indices(&ds.train, classes, self.subset_seed)?,
                None,
            ),
        })
    }

    /// The SGD/SAM schedule resolved to steps.
    pub fn resolved(&self, spe: u64) -> Result<Resolved, Invalid> {
        Ok(self.method.resolve(self.epochs * spe, spe)?)
    }

    /// The step kinds the run uses.
    fn used(&self, resolved: &Resolved, spe: u64) -> impl Iterator<Item = Method> + '_ {
        let (resolved, total) = (resolved.clone(), self.epochs * spe);
        Method::ALL
            .iter()
            .copied()
            .filter(move |m| resolved.count(*m, 0, total) > 0)
    }

    /// The spec as it goes into its key: the schedule resolved to steps (so
    /// equivalent ways of writing it agree), the SAM settings dropped when
    /// no step uses them, and the used kinds' own settings that differ
    /// from their defaults (`kinds`, absent when none do).
    pub fn key_spec(&self, resolved: &Resolved, spe: u64) -> serde_json::Value {
        let total = self.epochs * spe;
        let mut v = serde_json::to_value(self).expect("specs serialise");
        v["method"] = crate::key::schedule_json(resolved, total);
        if !self.used(resolved, spe).any(Method::uses_sam) {
            v["sam"] = serde_json::Value::Null;
        }
        if let Some(k) = kinds_key(&self.kinds, self.used(resolved, spe)) {
            v["kinds"] = k;
        }
        v
    }

    /// What its shared prefixes are made of. Left out of their identity:
    /// the schedule (the methods of the steps go in instead), the final
    /// evaluation, the SAM settings until the first step that uses them (so
    /// SGD->SAM runs with any rho share the SGD run's epochs), each kind's
    /// own settings until its first step, and `epochs` when neither the
    /// learning rate nor rho depends on the run's length.
    fn prefix_parts(&self, resolved: &Resolved, spe: u64) -> crate::key::PrefixParts {
        let mut v = serde_json::to_value(self).expect("specs serialise");
        let m = v.as_object_mut().expect("an object");
        m.remove("method");
        m.remove("test_subset");
        m.remove("eval_batch");
        let sam = m.remove("sam").expect("specs have SAM settings");
        // A reshuffle counts from its epoch (key.rs), not in the identity.
        m.remove("reshuffle");
        // A rho schedule follows the run's length, as the cosine rate does.
        if matches!(self.lr, LrSchedule::Constant { .. })
            && self.sam.rho_schedule == samlab_optim::RhoSchedule::Constant
        {
            m.remove("epochs");
        }
        crate::key::PrefixParts {
            spec: v,
            sam,
            kinds: non_default_kinds(&self.kinds),
            costs: Method::ALL.iter().map(|m| self.kinds.cost(*m)).collect(),
            schedule: resolved.clone(),
            reshuffle: self.reshuffle.map(Into::into),
            epochs: self.epochs,
            spe,
        }
    }

    /// How the training loader draws batches.
    pub fn data(&self) -> TrainingData {
        TrainingData {
            batch: self.batch,
            seed: self.seed,
            augment: self.augment,
            reshuffle: self.reshuffle.map(Into::into),
        }
    }
}

impl Kind for TrainSpec {
    const NAME: &'static str = "train";
    const HEADLINE: &'static [&'static str] = &["test_acc", "passes_per_step"];

    fn model(&self) -> &Arch {
        &self.model
    }

    fn weights(&self) -> Option<super::Weights<'_>> {
        Some(super::Weights {
            model: &self.model,
            images: super::data::TrainImages::new(self.train_subset, self.val_subset, self.subset_seed),
            augment: self.augment,
        })
    }

    fn images_per_step(&self) -> Option<usize> {
        Some(self.batch)
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn length(&self) -> String {
        self.epochs.to_string()
    }

    fn plan(&self, input: &PlanInput) -> Result<KindPlan, Invalid> {
        let spe = self.steps_per_epoch(input.data.train_len);
        if spe == 0 {
            return Err(Invalid::Value(format!(
                "{} training images make no full batch of {}",
                self.train_images(input.data.train_len),
                self.batch
            )));
        }
        let resolved = self.resolved(spe)?;
        let prefix = PrefixPlan::new(
            self.prefix_parts(&resolved, spe),
            input.deps,
            input.fingerprint,
        );
        Ok(KindPlan {
            key_spec: self.key_spec(&resolved, spe),
            cost: prefix.cost_from(0),
            prefix: Some(prefix),
        })
    }

    fn run(&self, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
        run(self, ctx)
    }

    /// Training curves: train loss and accuracy per epoch (and validation
    /// and test accuracy where `eval_every` recorded them), one series per
    /// row (a stage at one grid point besides the seed: mean over seeds,
    /// std as a band; the legend gives SAM's share of steps).
    fn plots(done: &[Done<'_, Self>], out: &PlotOut) -> Result<Vec<String>> {
        use crate::chart::{
            Mark, PALETTE, Series, Table, line_chart_marked, mean_curve, number_label, table,
        };
        // Per row: its label, its runs, SAM's share of steps and the epoch
        // where its schedule changes method (a switch, PSAM's E), if any.
        type Row = (String, Vec<Table>, f64, Option<(f64, &'static str)>);
        let mut rows: Vec<Row> = Vec::new();
        for d in done {
            let i = match rows.iter().position(|r| r.0 == d.label) {
                Some(i) => i,
                None => {
                    let share = d
                        .summary
                        .and_then(|m| Some(m.get("sam_steps")? / m.get("steps")?))
                        .unwrap_or(0.0);
                    // Steps per epoch from the run's own count; the switch
                    // as the run resolved it, in epochs.
                    let spe = d
                        .summary
                        .and_then(|m| m.get("steps"))
                        .map(|s| *s as u64 / d.spec.epochs.max(1))
                        .unwrap_or(0);
                    let total = spe * d.spec.epochs;
                    let switch = match d.spec.resolved(spe) {
                        _ if spe == 0 => None,
                        Ok(Resolved::Switch { at, .. }) => Some((at, "switch")),
                        Ok(Resolved::Psam { until, .. }) => Some((until, "PSAM E")),
                        _ => None,
                    }
                    .filter(|(at, _)| *at > 0 && *at < total)
                    .map(|(at, what)| (at as f64 / spe as f64, what));
                    rows.push((d.label.clone(), Vec::new(), share, switch));
                    rows.len() - 1
                }
            };
            rows[i].1.push(table(out.cache, d.key));
        }
        let mut written = Vec::new();
        if rows.len() > PALETTE.len() * 2 || rows.is_empty() {
            return Ok(written);
        }
        let marks: Vec<Mark> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let (epoch, what) = r.3?;
                Some(Mark {
                    x: epoch,
                    label: format!("{what} @ {}", number_label(epoch)),
                    color: PALETTE[i % PALETTE.len()],
                })
            })
            .collect();
        // The evaluation columns exist where a stage set `eval_every`; a
        // column no run has gives no chart.
        for (col, what) in [
            ("train_loss", "train loss"),
            ("train_acc", "train accuracy"),
            ("val_acc", "validation accuracy"),
            ("test_acc", "test accuracy"),
        ] {
            let series: Vec<Series> = rows
                .iter()
                .enumerate()
                .map(|(i, (label, runs, share, _))| Series {
                    name: format!("{label} (SAM {:.0}% of steps)", 100.0 * share),
                    color: PALETTE[i % PALETTE.len()],
                    points: mean_curve(runs, "epoch", col),
                })
                .filter(|s| !s.points.is_empty())
                .collect();
            if series.is_empty() {
                continue;
            }
            let name = format!("curves-{col}.svg");
            line_chart_marked(
                &out.dir.join(&name),
                &format!(
                    "{what} per epoch (mean over seeds, band ± std; {})",
                    if col.starts_with("train") {
                        "training mode"
                    } else {
                        "evaluation mode"
                    }
                ),
                "epoch",
                what,
                &series,
                &marks,
            )?;
            written.push(name);
        }
        written.extend(cost_accuracy(done, out)?);
        Ok(written)
    }
}

/// What a row costs against what it reaches: one point per row (a stage at
/// one grid point), x its mean cost over seeds (SGD-step equivalents, or
/// wall time), y its mean final test accuracy with a 95% t interval over
/// seeds (none at n = 1); for two or more rows with a final test accuracy.
/// Wall time is every epoch's, shared-prefix epochs included: what the
/// run costs alone.
/// The cost-accuracy figure a comparison of SAM variants prints.
fn cost_accuracy(done: &[Done<'_, TrainSpec>], out: &PlotOut) -> Result<Vec<String>> {
    use crate::chart::{PALETTE, Series, line_chart};
    // Per row: its label, and each run's (passes, wall_s, test_acc).
    let mut rows: Vec<(String, Vec<[f64; 3]>)> = Vec::new();
    for d in done {
        let Some(m) = d.summary else { continue };
        let (Some(&passes), Some(&wall), Some(&acc)) =
            (m.get("passes"), m.get("wall_s"), m.get("test_acc"))
        else {
            continue;
        };
        match rows.iter_mut().find(|r| r.0 == d.label) {
            Some(r) => r.1.push([passes, wall, acc]),
            None => rows.push((d.label.clone(), vec![[passes, wall, acc]])),
        }
    }
    if rows.len() < 2 || rows.len() > 2 * PALETTE.len() {
        return Ok(Vec::new());
    }
    let mut written = Vec::new();
    for (x, x_label, name) in [
        (0, "cost: SGD-step equivalents (forward+backward passes)", "cost-accuracy.svg"),
        (1, "wall time (s)", "time-accuracy.svg"),
    ] {
        let series: Vec<Series> = rows
            .iter()
            .enumerate()
            .map(|(i, (label, runs))| {
                let xs: Vec<f64> = runs.iter().map(|r| r[x]).collect();
                let accs: Vec<f64> = runs.iter().map(|r| r[2]).collect();
                let (acc, sd) = crate::stats::mean_std(&accs);
                let n = accs.len() as f64;
                let half = if accs.len() > 1 {
                    crate::stats::t_quantile(0.975, n - 1.0) * sd / n.sqrt()
                } else {
                    0.0
                };
                Series {
                    name: format!("{label} (n={})", accs.len()),
                    color: PALETTE[i % PALETTE.len()],
                    points: vec![(crate::stats::mean_std(&xs).0, acc, half)],
                }
            })
            .collect();
        line_chart(
            &out.dir.join(name),
            "final test accuracy against cost (mean over seeds, 95% t interval)",
            x_label,
            "test accuracy",
            &series,
        )?;
        written.push(name.to_string());
    }
    Ok(written)
}

const METRICS_HEADER: &str = "epoch,step,lr,train_loss,train_acc,sam_steps,passes,wall_s";
/// The columns `eval_every` adds to every row (empty where an epoch was not
/// evaluated or the split is off).
const EVAL_HEADER: &str = "val_loss,val_acc,test_loss,test_acc";

/// The header of `rows`: with the evaluation columns where they have them.
fn header_of(rows: &[String]) -> String {
    let base = METRICS_HEADER.split(',').count();
    match rows.first() {
        Some(r) if r.split(',').count() > base => format!("{METRICS_HEADER},{EVAL_HEADER}"),
        _ => METRICS_HEADER.to_string(),
    }
}

/// Where a checkpoint goes: its directory, what it is (`prefix`, `partial`) and its key.
struct Target<'a> {
    dir: &'a Path,
    what: &'a str,
    key: &'a str,
}

/// The sums of an epoch in progress, kept in a mid-epoch checkpoint as
/// `epoch.json` (floats round-trip exactly), so the epoch's metric row
/// comes out as it would have without the interruption.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct EpochSoFar {
    /// Steps of the epoch done.
    steps: u64,
    /// Sum of the batch losses times their sizes.
    loss: f64,
    correct: usize,
    seen: usize,
    sam_steps: u64,
    /// The learning rate of the last step.
    lr: f64,
    /// Wall time spent on the epoch before the checkpoint.
    wall_s: f64,
}

const EPOCH_FILE: &str = "epoch.json";

impl EpochSoFar {
    fn read(dir: &Path) -> Result<EpochSoFar> {
        let p = dir.join(EPOCH_FILE);
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        serde_json::from_str(&text)
            .map_err(|e| crate::error::cache_err(&p, format!("not an epoch in progress: {e}")))
    }
}

fn save_checkpoint(
    ctx: &RunCtx,
    model: &Model,
    trainer: &Trainer,
    rows: &[String],
    to: Target,
    epoch: u64,
    so_far: Option<&EpochSoFar>,
) -> Result<()> {
    let s = ctx.cache.staging()?;
    write_state(model, trainer, rows, &s)?;
    let mut info = BTreeMap::new();
    info.insert("epoch".into(), epoch.to_string());
    if let Some(e) = so_far {
        let text = serde_json::to_string_pretty(e).expect("sums serialise");
        write_file(&s.join(EPOCH_FILE), text.as_bytes())?;
        info.insert("step_in_epoch".into(), e.steps.to_string());
    }
    info.insert("created".into(), unix_time());
    ctx.cache
        .commit(&s, to.dir, to.what, to.key, ctx.stage, info)?;
    Ok(())
}

fn write_state(model: &Model, trainer: &Trainer, rows: &[String], dir: &Path) -> Result<()> {
    model.params.save(&dir.join("model.safetensors"))?;
    trainer.save(&dir.join("optim.safetensors"))?;
    let mut csv = header_of(rows);
    csv.push('\n');
    for r in rows {
        csv.push_str(r);
        csv.push('\n');
    }
    write_file(&dir.join("metrics.csv"), csv.as_bytes())
}

fn read_rows(dir: &Path) -> Result<Vec<String>> {
    let p = dir.join("metrics.csv");
    let text = std::fs::read_to_string(&p).map_err(crate::error::io(&p))?;
    Ok(text
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Writes the rolling checkpoint after `epoch` epochs and, mid-epoch, the
/// steps of the next in `so_far`; removes the older ones.
fn save_partial(
    ctx: &RunCtx,
    model: &Model,
    trainer: &Trainer,
    rows: &[String],
    epoch: u64,
    so_far: Option<&EpochSoFar>,
) -> Result<()> {
    let step = so_far.map_or(0, |e| e.steps);
    let dest = ctx
        .cache
        .partial_dir(ctx.key)
        .join(partial_name(epoch, step));
    let to = Target {
        dir: &dest,
        what: "partial",
        key: ctx.key,
    };
    save_checkpoint(ctx, model, trainer, rows, to, epoch, so_far)?;
    for (e, s, old) in ctx.cache.partials(ctx.key) {
        if (e, s) < (epoch, step) {
            ctx.cache.discard(&old)?;
        }
    }
    Ok(())
}

/// The error of a run stopped by `signal` with its checkpoint saved `at`.
fn interrupted(ctx: &RunCtx, signal: crate::interrupt::Signal, at: String) -> crate::Error {
    ErrorKind::Interrupted {
        stage: ctx.stage.to_string(),
        signal,
        at: format!("{at} (checkpoint saved)"),
    }
    .into()
}

/// The values of metric column `name` in `rows` (METRICS_HEADER's order).
fn column<'a>(rows: &'a [String], name: &str) -> impl Iterator<Item = f64> + 'a {
    let i = METRICS_HEADER
        .split(',')
        .position(|h| h == name)
        .expect("a column of METRICS_HEADER");
    rows.iter()
        .filter_map(move |r| r.split(',').nth(i)?.parse().ok())
}

/// Runs a Train stage.
pub fn run(spec: &TrainSpec, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
    let ds = ctx.dataset;
    let (indices, held_out) = spec.split(ds)?;
    let loader = training_loader(ds, indices, spec.data(), ctx.stage)?;
    let spe = loader.batches_per_epoch() as u64;
    // The plan's prefix keys and costs were made for its steps per epoch.
    if let Some(p) = ctx.prefix
        && p.spe != spe
    {
        return Err(stage_err(
            ctx.stage,
            format!(
                "the plan counted {} steps an epoch, the training data gives {spe}",
                p.spe
            ),
        ));
    }
    let total = spec.epochs * spe;
    let mut model = Model::new(&spec.model, ds.num_classes(), spec.seed, ctx.device)?;
    model.precision = spec.precision;
    if let Some((_, dir)) = ctx.deps.iter().find(|(r, _)| *r == "from") {
        model.params.load(&dir.join("model.safetensors"))?;
    }
    // The schedule as the plan resolved it (its prefix keys and costs were
    // made from it); resolved here only for a run without a plan.
    let schedule = match ctx.prefix {
        Some(p) => p.schedule.clone(),
        None => spec
            .resolved(spe)
            .map_err(|e| stage_err(ctx.stage, e.to_string()))?,
    };
    let mut trainer = Trainer::resolved(
        spec.optimizer.clone(),
        spec.sam.clone(),
        spec.lr.clone(),
        schedule,
        total,
    )?
    .with_bn_batch(spec.bn_batch)?
    .with_ghost(spec.ghost)?
    .with_kinds(spec.kinds.clone())?;

    // Where to start: the latest rolling checkpoint or shared prefix.
    let mut outcome = Outcome::default();
    let mut rows: Vec<String> = Vec::new();
    let found = resume_point(
        Some(ctx.cache),
        ctx.key,
        ctx.prefix,
        spec.epochs,
        Verify::Full,
        &|_| false,
    );
    for (dir, why) in &found.damaged {
        ctx.progress.note(&format!(
            "{}: checkpoint {} is damaged ({why}); not used",
            ctx.stage,
            dir.display()
        ));
        ctx.cache.discard(dir)?;
    }
    let mut carried = EpochSoFar::default();
    if let Some(start) = &found.point {
        let (epoch, dir) = (start.epoch, &start.dir);
        model.params.load(&dir.join("model.safetensors"))?;
        trainer.load(&model, &dir.join("optim.safetensors"))?;
        rows = read_rows(dir)?;
        if start.step > 0 {
            carried = EpochSoFar::read(dir)?;
        }
        if trainer.step != epoch * spe + start.step
            || rows.len() as u64 != epoch
            || carried.steps != start.step
            || start.step >= spe
        {
            return Err(stage_err(
                ctx.stage,
                format!(
                    "checkpoint {} is at step {} with {} metric rows and {} steps of an epoch, \
                     expected epoch {epoch} and step {} of the next ({spe} steps an epoch)",
                    dir.display(),
                    trainer.step,
                    rows.len(),
                    carried.steps,
                    start.step
                ),
            ));
        }
        outcome.start_epoch = epoch;
        outcome.start_step = start.step;
        outcome.resumed_from = start.from.as_str().to_string();
    }

    let bar = ctx.progress.stage_bar(
        ctx.stage,
        total,
        outcome.start_epoch * spe + outcome.start_step,
    );
    let passes_before = trainer.passes;
    let feed = Feed::new(loader.clone(), ctx.device)?;
    // Evaluation during training: the held-out and the test images.
    let val_loader = match &held_out {
        Some(held) if spec.eval_every.is_some() => Some(samlab_data::Loader::new(
            ds.train.clone(),
            Some(held.clone()),
            samlab_data::PipelineConfig::eval(spec.eval_batch, ds.name.normalization()),
        )?),
        _ => None,
    };
    let test_loader = match spec.test_subset {
        Subset::Off => None,
        _ if spec.eval_every.is_none() => None,
        s => Some(eval_loader(
            ds,
            SplitName::Test,
            s,
            spec.subset_seed,
            spec.eval_batch,
        )?),
    };
    let mut last_checkpoint = Instant::now();
    for epoch in outcome.start_epoch..spec.epochs {
        let t0 = Instant::now();
        let mut e = std::mem::take(&mut carried);
        for batch in feed.epoch_from(epoch, e.steps as usize, ctx.device) {
            let (x, y) = batch?;
            e.lr = spec.lr.at(trainer.step, total);
            let out = trainer
                .train_step(&model, &x, &y)
                .map_err(step_err(ctx.stage))?;
            e.loss += out.loss * out.samples as f64;
            e.correct += out.correct;
            e.seen += out.samples;
            e.sam_steps += out.perturbed() as u64;
            e.steps += 1;
            outcome.steps_run += 1;
            bar.inc(1);
            // Mid-epoch: a checkpoint where a signal or the clock asks.
            let stop = crate::interrupt::requested();
            let due = ctx
                .checkpoint_every
                .is_some_and(|d| last_checkpoint.elapsed() >= d);
            if e.steps < spe && (stop.is_some() || due) {
                let mut at = e.clone();
                at.wall_s += t0.elapsed().as_secs_f64();
                save_partial(ctx, &model, &trainer, &rows, epoch, Some(&at))?;
                last_checkpoint = Instant::now();
                if let Some(signal) = stop {
                    bar.finish_and_clear();
                    let at = format!("after step {} of epoch {}", e.steps, epoch + 1);
                    return Err(interrupted(ctx, signal, at));
                }
            }
        }
        let wall = e.wall_s + t0.elapsed().as_secs_f64();
        let (mean_loss, acc) = (e.loss / e.seen as f64, e.correct as f64 / e.seen as f64);
        let mut row = format!(
            "{},{},{},{mean_loss},{acc},{},{},{wall:.3}",
            epoch + 1,
            trainer.step,
            e.lr,
            e.sam_steps,
            trainer.passes
        );
        if let Some(k) = spec.eval_every {
            // Evaluation mode changes no weight and no running statistic.
            let due = (epoch + 1).is_multiple_of(k) || epoch + 1 == spec.epochs;
            for l in [&val_loader, &test_loader] {
                match l.as_ref().filter(|_| due) {
                    Some(l) => {
                        let (loss, correct, n) = evaluate_loader(&model, l, ctx.device)?;
                        let _ = write!(row, ",{loss},{}", correct as f64 / n.max(1) as f64);
                    }
                    None => row.push_str(",,"),
                }
            }
        }
        rows.push(row);
        ctx.progress
            .epoch_line(ctx.stage, epoch + 1, spec.epochs, mean_loss, acc, &bar);
        let done = epoch + 1;
        if let Some(plan) = ctx.prefix
            && plan.keep.contains(&done)
        {
            let pk = &plan.keys[done as usize];
            let dest = ctx.cache.prefix_dir(pk);
            if !matches!(
                ctx.cache.check_with(&dest, Verify::Memo),
                crate::cache::Lookup::Valid(..)
            ) {
                let to = Target {
                    dir: &dest,
                    what: "prefix",
                    key: pk,
                };
                save_checkpoint(ctx, &model, &trainer, &rows, to, done, None)?;
            }
        }
        if done < spec.epochs {
            save_partial(ctx, &model, &trainer, &rows, done, None)?;
            last_checkpoint = Instant::now();
            if let Some(signal) = crate::interrupt::requested() {
                bar.finish_and_clear();
                return Err(interrupted(ctx, signal, format!("after epoch {done}")));
            }
        }
    }
    bar.finish_and_clear();
    outcome.passes_run = trainer.passes - passes_before;

    let mut summary = Summary::new();
    let last: Vec<f64> = rows
        .last()
        .map(|r| {
            r.split(',')
                .map(|x| x.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .unwrap_or_default();
    if last.len() >= 5 {
        summary.insert("train_loss".into(), last[3]);
        summary.insert("train_acc".into(), last[4]);
    }
    summary.insert("steps".into(), trainer.step as f64);
    summary.insert("passes".into(), trainer.passes);
    summary.insert(
        "passes_per_step".into(),
        trainer.passes / trainer.step.max(1) as f64,
    );
    // Steps that took a perturbed pass, as the metric rows counted them.
    summary.insert("sam_steps".into(), column(&rows, "sam_steps").sum());
    let wall: f64 = column(&rows, "wall_s").sum();
    summary.insert("wall_s".into(), wall);
    // With `eval_every`, the last row already holds the final model's
    // figures (evaluated after the last epoch): taken from there, not
    // computed again.
    let header = header_of(&rows);
    let from_rows = |name: &str| -> Option<f64> {
        spec.eval_every?;
        let i = header.split(',').position(|c| c == name)?;
        rows.last()?.split(',').nth(i)?.parse().ok()
    };
    if let Some(held) = held_out {
        let (loss, acc) = match (from_rows("val_loss"), from_rows("val_acc")) {
            (Some(l), Some(a)) => (l, a),
            _ => {
                let l = samlab_data::Loader::new(
                    ds.train.clone(),
                    Some(held),
                    samlab_data::PipelineConfig::eval(spec.eval_batch, ds.name.normalization()),
                )?;
                let (loss, correct, n) = evaluate_loader(&model, &l, ctx.device)?;
                (loss, correct as f64 / n.max(1) as f64)
            }
        };
        summary.insert("val_loss".into(), loss);
        summary.insert("val_acc".into(), acc);
    }
    if spec.test_subset != Subset::Off {
        let (loss, acc) = match (from_rows("test_loss"), from_rows("test_acc")) {
            (Some(l), Some(a)) => (l, a),
            _ => {
                let l = eval_loader(
                    ds,
                    SplitName::Test,
                    spec.test_subset,
                    spec.subset_seed,
                    spec.eval_batch,
                )?;
                let (loss, correct, n) = evaluate_loader(&model, &l, ctx.device)?;
                (loss, correct as f64 / n.max(1) as f64)
            }
        };
        summary.insert("test_loss".into(), loss);
        summary.insert("test_acc".into(), acc);
        summary.insert("test_error".into(), 1.0 - acc);
    }
    write_state(&model, &trainer, &rows, ctx.out)?;
    Ok((summary, outcome))
}

#[cfg(test)]
mod tests {
    use crate::stages::StageSpec;

    fn train(fields: &str) -> Result<StageSpec, String> {
        let text = format!(
            r#"Study(version: 1, dataset: "cifar10", stages: {{
                "t": Train(model: "resnet8", epochs: 1, batch: 64, method: Always(Sam), {fields}),
            }})"#
        );
        crate::study::parse(&text, std::path::Path::new("t.ron"))
            .map(|s| s.stages[0].spec.clone())
            .map_err(|e| e.to_string())
    }

    /// The thesis' protocol: BatchNorm per device of 32, and SAM's m equal
    /// to it unless a study says otherwise; only a set `bn_batch` enters
    /// the key.
    #[test]
    fn bn_batch_sets_the_chunk_and_must_divide_batch_and_chunk() {
        let StageSpec::Train(t) = train("bn_batch: 32").unwrap() else {
            panic!()
        };
        assert_eq!((t.bn_batch, t.sam.chunk), (Some(32), Some(32)));
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["bn_batch"], 32);
        let StageSpec::Train(t) = train("bn_batch: 16, sam: (chunk: 64)").unwrap() else {
            panic!()
        };
        assert_eq!((t.bn_batch, t.sam.chunk), (Some(16), Some(64)));
        let StageSpec::Train(t) = train("").unwrap() else {
            panic!()
        };
        assert_eq!((t.bn_batch, t.sam.chunk), (None, None));
        assert!(serde_json::to_value(&t).unwrap().get("bn_batch").is_none());
        let e = train("bn_batch: 48").unwrap_err();
        assert!(
            e.contains("`bn_batch` 48 does not divide the batch 64"),
            "{e}"
        );
        let e = train("bn_batch: 32, sam: (chunk: 16)").unwrap_err();
        assert!(
            e.contains("`bn_batch` 32 does not divide the m-sharpness chunk 16"),
            "{e}"
        );
    }

    /// A fork's epoch is within the run and its seed is another one; an
    /// unset fork is not in the key.
    #[test]
    fn reshuffle_is_checked_and_left_out_of_the_key_when_unset() {
        let e = train("reshuffle: (epoch: 1, seed: 3)").unwrap_err();
        assert!(e.contains("reshuffle.epoch (1) must be below epochs (1)"), "{e}");
        let e = train("seed: 3, reshuffle: (epoch: 0, seed: 3)").unwrap_err();
        assert!(e.contains("reshuffle.seed (3) is the run's own seed"), "{e}");
        let e = train("reshuffle: (epoch: 0, seed: 3, at: 1)").unwrap_err();
        assert!(e.contains("Unexpected field named `at`"), "{e}");
        let StageSpec::Train(t) = train("reshuffle: (epoch: 0, seed: 3)").unwrap() else {
            panic!()
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["reshuffle"], serde_json::json!({"epoch": 0, "seed": 3}));
        let StageSpec::Train(t) = train("seed: 2").unwrap() else {
            panic!()
        };
        assert!(serde_json::to_value(&t).unwrap().get("reshuffle").is_none());
    }

    /// A validation split is per class, never the whole training set, and
    /// enters the key only when set.
    #[test]
    fn val_subset_is_checked_and_left_out_of_the_key_when_off() {
        for bad in ["val_subset: All", "val_subset: PerClass(0)"] {
            let e = train(bad).unwrap_err();
            assert!(e.contains("`val_subset` must be Off or PerClass(n)"), "{e}");
        }
        let StageSpec::Train(t) = train("val_subset: Off").unwrap() else {
            panic!()
        };
        assert!(
            serde_json::to_value(&t)
                .unwrap()
                .get("val_subset")
                .is_none()
        );
        let StageSpec::Train(t) = train("val_subset: PerClass(100)").unwrap() else {
            panic!()
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["val_subset"], serde_json::json!({"PerClass": 100}));
        // All training images but the held-out ones train.
        assert_eq!(t.train_images(50_000), 50_000 - 1000);
    }
}
