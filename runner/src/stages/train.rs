//! `Train`: trains a model from scratch or from another Train stage's
//! final checkpoint, with SGD or SAM per step as its schedule says.
//!
//! Writes `model.safetensors` (weights and BatchNorm buffers),
//! `optim.safetensors` (momentum, step and pass counters), `metrics.csv`
//! (one row per epoch) and `summary.json`. Keeps a rolling checkpoint
//! after every epoch, and a shared-prefix checkpoint at every epoch where
//! another run of the study branches off.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use indexmap::IndexMap;
use samlab_data::DatasetName;
use samlab_models::{Arch, Model};
use samlab_optim::{
    LrSchedule, Method, Point, Resolved, SamConfig, SgdConfig, StepSchedule, Trainer,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Outcome, RunCtx, StageSpec, Subset, Summary, eval_loader, evaluate_loader, positive,
    training_loader, whole,
};
use crate::cache::{Lookup, unix_time, write_file};
use crate::error::{Result, stage_err};
use crate::key::{canonical, hex};

pub const GRID_FIELDS: &[&str] = &[
    "seed",
    "rho",
    "lr",
    "epochs",
    "batch",
    "train_per_class",
    "chunk",
    "period",
    "switch_epoch",
];

/// SGD settings as written (unset fields: the thesis' recipe).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "Sgd")]
pub struct SgdPartial {
    pub momentum: Option<f64>,
    pub nesterov: Option<bool>,
    pub weight_decay: Option<f64>,
}

/// SAM settings as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "Sam")]
pub struct SamPartial {
    pub rho: Option<f64>,
    /// m-sharpness chunk size; unset: the whole batch.
    pub chunk: Option<usize>,
    pub adaptive: Option<bool>,
    pub eta: Option<f64>,
}

macro_rules! inherit {
    ($c:ident, $p:ident; $($f:ident),*) => { $( if $c.$f.is_none() { $c.$f = $p.$f.clone(); } )* };
}

impl SgdPartial {
    /// `own` with its unset fields taken from `parent`.
    pub fn merged(own: Option<SgdPartial>, parent: &Option<SgdPartial>) -> Option<SgdPartial> {
        match (own, parent) {
            (Some(mut a), Some(b)) => {
                inherit!(a, b; momentum, nesterov, weight_decay);
                Some(a)
            }
            (a, b) => a.or_else(|| b.clone()),
        }
    }
}

impl SamPartial {
    /// `own` with its unset fields taken from `parent`.
    pub fn merged(own: Option<SamPartial>, parent: &Option<SamPartial>) -> Option<SamPartial> {
        match (own, parent) {
            (Some(mut a), Some(b)) => {
                inherit!(a, b; rho, chunk, adaptive, eta);
                Some(a)
            }
            (a, b) => a.or_else(|| b.clone()),
        }
    }
}

/// A grid whose fields come from `parent` unless `own` sets them.
pub fn merged_grid(
    own: Option<IndexMap<String, Vec<f64>>>,
    parent: &Option<IndexMap<String, Vec<f64>>>,
) -> Option<IndexMap<String, Vec<f64>>> {
    match parent {
        None => own,
        Some(pg) => {
            let mut g = pg.clone();
            for (k, v) in own.unwrap_or_default() {
                g.insert(k, v);
            }
            Some(g)
        }
    }
}

/// A Train stage as written; every field may come from what it extends.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "Train")]
pub struct TrainPartial {
    pub extends: Option<String>,
    /// Another Train stage whose final weights this run starts from.
    pub from: Option<String>,
    pub model: Option<String>,
    pub train_subset: Option<Subset>,
    pub subset_seed: Option<u64>,
    pub batch: Option<usize>,
    pub epochs: Option<u64>,
    pub seed: Option<u64>,
    pub augment: Option<bool>,
    pub optimizer: Option<SgdPartial>,
    pub lr: Option<LrSchedule>,
    pub method: Option<StepSchedule>,
    pub sam: Option<SamPartial>,
    pub test_subset: Option<Subset>,
    pub eval_batch: Option<usize>,
    pub grid: Option<IndexMap<String, Vec<f64>>>,
}

/// A fully resolved Train stage: what its key is made of.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainSpec {
    /// Canonical architecture name.
    pub model: String,
    pub train_subset: Subset,
    pub subset_seed: u64,
    pub batch: usize,
    pub epochs: u64,
    /// Initialisation and data order.
    pub seed: u64,
    pub augment: bool,
    pub optimizer: SgdConfig,
    pub lr: LrSchedule,
    pub method: StepSchedule,
    pub sam: SamConfig,
    /// Final evaluation on the test split (`Off`: none).
    pub test_subset: Subset,
    pub eval_batch: usize,
    /// Classes of the dataset (the model's output width).
    pub classes: usize,
}

impl TrainPartial {
    pub fn merge(mut self, p: &TrainPartial) -> TrainPartial {
        let c = &mut self;
        inherit!(c, p; from, model, train_subset, subset_seed, batch, epochs, seed, augment, lr, method, test_subset, eval_batch);
        c.extends = p.extends.clone();
        c.optimizer = SgdPartial::merged(c.optimizer.take(), &p.optimizer);
        c.sam = SamPartial::merged(c.sam.take(), &p.sam);
        c.grid = merged_grid(c.grid.take(), &p.grid);
        self
    }

    pub fn set_grid(&mut self, field: &str, v: f64) -> std::result::Result<(), String> {
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
            "train_per_class" => self.train_subset = Some(Subset::PerClass(whole(v)? as usize)),
            "chunk" => self.sam.get_or_insert_default().chunk = Some(whole(v)? as usize),
            "period" => match &mut self.method {
                Some(StepSchedule::Psam { period, .. }) => *period = whole(v)?,
                _ => return Err("`period` needs `method: Psam(...)`".into()),
            },
            "switch_epoch" => match &mut self.method {
                Some(StepSchedule::Switch { at, .. }) => *at = Point::Epoch(v),
                _ => return Err("`switch_epoch` needs `method: Switch(...)`".into()),
            },
            _ => return Err(format!("unknown grid field `{field}`")),
        }
        Ok(())
    }

    pub fn finish(&self, dataset: DatasetName) -> std::result::Result<TrainSpec, String> {
        let model_name = self
            .model
            .as_deref()
            .ok_or("`model` is missing (e.g. model: \"resnet18\")")?;
        let arch: Arch = model_name
            .parse()
            .map_err(|e: samlab_models::Error| e.to_string())?;
        let epochs = self.epochs.ok_or("`epochs` is missing")?;
        positive("epochs", epochs)?;
        let batch = self.batch.unwrap_or(256);
        positive("batch", batch as u64)?;
        let eval_batch = self.eval_batch.unwrap_or(500);
        positive("eval_batch", eval_batch as u64)?;
        let optimizer = resolve_sgd(self.optimizer.as_ref())?;
        let sam = resolve_sam(self.sam.as_ref(), batch)?;
        let lr = self.lr.clone().unwrap_or(LrSchedule::Cosine { lr: 0.1 });
        let lr_value = match lr {
            LrSchedule::Constant { lr } | LrSchedule::Cosine { lr } => lr,
        };
        if !(lr_value.is_finite() && lr_value >= 0.0) {
            return Err(format!("learning rate {lr_value} must be finite and >= 0"));
        }
        let train_subset = self.train_subset.unwrap_or(Subset::All);
        if train_subset == Subset::Off || train_subset == Subset::PerClass(0) {
            return Err("`train_subset` must be All or PerClass(n) with n >= 1".into());
        }
        let test_subset = self.test_subset.unwrap_or(Subset::All);
        Ok(TrainSpec {
            model: arch.name(),
            train_subset,
            subset_seed: self.subset_seed.unwrap_or(0),
            batch,
            epochs,
            seed: self.seed.unwrap_or(0),
            augment: self.augment.unwrap_or(true),
            optimizer,
            lr,
            method: self
                .method
                .clone()
                .unwrap_or(StepSchedule::Always(Method::Sgd)),
            sam,
            test_subset,
            eval_batch,
            classes: dataset.num_classes(),
        })
    }
}

/// SGD settings with the recipe's defaults filled in, checked.
pub(crate) fn resolve_sgd(o: Option<&SgdPartial>) -> std::result::Result<SgdConfig, String> {
    let d = SgdConfig::default();
    let o = o.cloned().unwrap_or_default();
    let optimizer = SgdConfig {
        momentum: o.momentum.unwrap_or(d.momentum),
        nesterov: o.nesterov.unwrap_or(d.nesterov),
        weight_decay: o.weight_decay.unwrap_or(d.weight_decay),
    };
    samlab_optim::Sgd::new(optimizer.clone()).map_err(|e| e.to_string())?;
    Ok(optimizer)
}

/// SAM settings with defaults filled in, checked against the batch size.
pub(crate) fn resolve_sam(
    s: Option<&SamPartial>,
    batch: usize,
) -> std::result::Result<SamConfig, String> {
    let s = s.cloned().unwrap_or_default();
    let ds = SamConfig::new(0.05);
    let sam = SamConfig {
        rho: s.rho.unwrap_or(ds.rho),
        chunk: s.chunk,
        adaptive: s.adaptive.unwrap_or(ds.adaptive),
        eta: s.eta.unwrap_or(ds.eta),
    };
    sam.check().map_err(|e| e.to_string())?;
    if let Some(m) = sam.chunk
        && !batch.is_multiple_of(m)
    {
        return Err(format!(
            "the m-sharpness chunk {m} does not divide the batch {batch}"
        ));
    }
    Ok(sam)
}

impl TrainSpec {
    pub fn link(&mut self, deps: &[(&'static str, &StageSpec)]) -> std::result::Result<(), String> {
        for (role, d) in deps {
            match d {
                StageSpec::Train(t) if t.model == self.model => {}
                StageSpec::Train(t) => {
                    return Err(format!(
                        "`{role}` names a {} run, but this stage trains {}",
                        t.model, self.model
                    ));
                }
                other => {
                    return Err(format!(
                        "`{role}` must name a Train stage, not {}",
                        other.kind()
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn arch(&self) -> Arch {
        self.model
            .parse()
            .expect("resolved specs hold valid model names")
    }

    /// Steps per epoch on a training split of `train_len` images.
    pub fn steps_per_epoch(&self, train_len: usize) -> u64 {
        (self.train_subset.count(train_len, self.classes) / self.batch) as u64
    }

    /// The SGD/SAM schedule resolved to steps.
    pub fn resolved(&self, spe: u64) -> std::result::Result<Resolved, String> {
        self.method
            .resolve(self.epochs * spe, spe)
            .map_err(|e| e.to_string())
    }

    /// The spec as it goes into the key (schedule resolved to steps, SAM
    /// settings dropped when no step uses SAM).
    pub fn key_spec(&self, spe: u64) -> std::result::Result<serde_json::Value, String> {
        let total = self.epochs * spe;
        let resolved = self.resolved(spe)?;
        let mut v = serde_json::to_value(self).expect("specs serialise");
        let sam_steps = resolved.count(Method::Sam, 0, total);
        v["method"] = resolved_json(&resolved, total);
        if sam_steps == 0 {
            v["sam"] = serde_json::Value::Null;
        }
        Ok(v)
    }

    /// What a shared prefix of this run is made of, before `k` and the methods.
    /// What a shared prefix of this run is made of, before `k` and the
    /// methods: (everything but the SAM settings, the SAM settings). The
    /// SAM settings count only for prefixes that contain a SAM step, so
    /// SGD->SAM runs with any rho share the SGD run's epochs.
    pub fn prefix_identity(
        &self,
        spe: u64,
        deps: &[(&str, String)],
        dataset_fp: &str,
    ) -> (String, String) {
        let mut v = serde_json::to_value(self).expect("specs serialise");
        let m = v.as_object_mut().expect("an object");
        m.remove("method");
        m.remove("test_subset");
        m.remove("eval_batch");
        let sam = m.remove("sam").expect("specs have SAM settings");
        if matches!(self.lr, LrSchedule::Constant { .. }) {
            m.remove("epochs");
        }
        let deps: serde_json::Map<String, serde_json::Value> = deps
            .iter()
            .map(|(r, k)| (r.to_string(), k.clone().into()))
            .collect();
        (
            canonical(&serde_json::json!({
                "semantics": crate::key::SEMANTICS,
                "spec": v,
                "deps": deps,
                "spe": spe,
                "dataset": dataset_fp,
            })),
            canonical(&sam),
        )
    }
}

fn resolved_json(r: &Resolved, total: u64) -> serde_json::Value {
    use serde_json::json;
    let name = |m: Method| match m {
        Method::Sgd => "Sgd",
        Method::Sam => "Sam",
    };
    match *r {
        Resolved::Always(m) => json!({"Always": name(m)}),
        Resolved::Switch { from, to, at } if at == 0 || from == to => json!({"Always": name(to)}),
        Resolved::Switch { from, at, .. } if at >= total => json!({"Always": name(from)}),
        Resolved::Switch { from, to, at } => {
            json!({"Switch": {"from": name(from), "to": name(to), "at": at}})
        }
        Resolved::Psam { period: 1, .. } => json!({"Always": "Sam"}),
        Resolved::Psam { until: 0, .. } => json!({"Always": "Sam"}),
        Resolved::Psam { period, until } => {
            json!({"Psam": {"period": period, "until": until.min(total)}})
        }
    }
}

/// Prefix keys of one training run, and where it keeps prefix checkpoints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrefixPlan {
    /// `keys[k]`: the key of the first `k` epochs (index 0 unused).
    pub keys: Vec<String>,
    /// Epochs after which to keep a shared-prefix checkpoint.
    pub keep: Vec<u64>,
    pub identity: String,
    /// The SAM settings, which count from the first SAM step on.
    pub sam: String,
    /// The method of every step of the run.
    pub methods: Vec<bool>,
    pub spe: u64,
}

impl PrefixPlan {
    pub fn new(
        (identity, sam): (String, String),
        resolved: &Resolved,
        epochs: u64,
        spe: u64,
    ) -> PrefixPlan {
        let total = epochs * spe;
        let methods: Vec<bool> = (0..total)
            .map(|t| resolved.method(t) == Method::Sam)
            .collect();
        let mut h = Sha256::new();
        h.update(identity.as_bytes());
        let mut keys = vec![String::new()];
        let mut sam_seen = false;
        for k in 1..=epochs {
            for t in (k - 1) * spe..k * spe {
                let is_sam = methods[t as usize];
                if is_sam && !sam_seen {
                    sam_seen = true;
                    h.update(b":sam=");
                    h.update(sam.as_bytes());
                }
                h.update([is_sam as u8]);
            }
            let mut hk = h.clone();
            hk.update(format!(":epochs={k}").as_bytes());
            keys.push(hex(&hk.finalize()));
        }
        PrefixPlan {
            keys,
            keep: Vec::new(),
            identity,
            sam,
            methods,
            spe,
        }
    }

    /// The epoch up to which two runs compute the same thing (0: none).
    pub fn shared_epochs(&self, other: &PrefixPlan) -> u64 {
        if self.identity != other.identity || self.spe != other.spe || self.spe == 0 {
            return 0;
        }
        let n = self.methods.len().min(other.methods.len());
        let mut d = (0..n)
            .find(|&i| self.methods[i] != other.methods[i])
            .unwrap_or(n);
        if self.sam != other.sam {
            // Same methods up to d: the first SAM step there ends the sharing.
            d = (0..d).find(|&i| self.methods[i]).unwrap_or(d);
        }
        d as u64 / self.spe
    }
}

const METRICS_HEADER: &str = "epoch,step,lr,train_loss,train_acc,sam_steps,passes,wall_s";

/// Where a checkpoint goes: its directory, what it is (`prefix`, `partial`) and its key.
struct Target<'a> {
    dir: &'a Path,
    what: &'a str,
    key: &'a str,
}

fn save_checkpoint(
    ctx: &RunCtx,
    model: &Model,
    trainer: &Trainer,
    rows: &[String],
    to: Target,
    epoch: u64,
) -> Result<()> {
    let s = ctx.cache.staging()?;
    write_state(model, trainer, rows, &s)?;
    let mut info = BTreeMap::new();
    info.insert("epoch".into(), epoch.to_string());
    info.insert("created".into(), unix_time());
    ctx.cache
        .commit(&s, to.dir, to.what, to.key, ctx.stage, info)?;
    Ok(())
}

fn write_state(model: &Model, trainer: &Trainer, rows: &[String], dir: &Path) -> Result<()> {
    model.params.save(&dir.join("model.safetensors"))?;
    trainer.save(&dir.join("optim.safetensors"))?;
    let mut csv = String::from(METRICS_HEADER);
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

/// Runs a Train stage.
pub fn run(spec: &TrainSpec, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
    let ds = ctx.dataset;
    let indices = spec
        .train_subset
        .indices(&ds.train, ds.num_classes(), spec.subset_seed)?;
    let loader = training_loader(ds, indices, spec.batch, spec.seed, spec.augment, ctx.stage)?;
    let spe = loader.batches_per_epoch() as u64;
    let total = spec.epochs * spe;
    let model = Model::new(&spec.arch(), ds.num_classes(), spec.seed, ctx.device)?;
    if let Some((_, dir)) = ctx.deps.iter().find(|(r, _)| *r == "from") {
        model.params.load(&dir.join("model.safetensors"))?;
    }
    let mut trainer = Trainer::new(
        spec.optimizer.clone(),
        spec.sam.clone(),
        spec.lr.clone(),
        &spec.method,
        total,
        spe,
    )?;

    // Where to start: the latest rolling checkpoint or shared prefix.
    let mut outcome = Outcome::default();
    let mut rows: Vec<String> = Vec::new();
    let mut start: Option<(u64, std::path::PathBuf, &str)> = None;
    for (epoch, dir) in ctx.cache.partials(ctx.key).into_iter().rev() {
        if epoch >= spec.epochs {
            continue;
        }
        match ctx.cache.check(&dir) {
            Lookup::Valid(..) => {
                start = Some((epoch, dir, "partial"));
                break;
            }
            Lookup::Damaged(p, why) => {
                ctx.progress.note(&format!(
                    "{}: rolling checkpoint {} is damaged ({why}); not used",
                    ctx.stage,
                    p.display()
                ));
                ctx.cache.discard(&p)?;
            }
            Lookup::Missing => {}
        }
    }
    if let Some(plan) = ctx.prefix {
        let from = start.as_ref().map(|s| s.0).unwrap_or(0);
        for k in (from + 1..spec.epochs).rev() {
            let dir = ctx.cache.prefix_dir(&plan.keys[k as usize]);
            match ctx.cache.check(&dir) {
                Lookup::Valid(..) => {
                    start = Some((k, dir, "prefix"));
                    break;
                }
                Lookup::Damaged(p, why) => {
                    ctx.progress.note(&format!(
                        "{}: prefix checkpoint {} is damaged ({why}); not used",
                        ctx.stage,
                        p.display()
                    ));
                    ctx.cache.discard(&p)?;
                }
                Lookup::Missing => {}
            }
        }
    }
    if let Some((epoch, dir, what)) = &start {
        model.params.load(&dir.join("model.safetensors"))?;
        trainer.load(&model, &dir.join("optim.safetensors"))?;
        rows = read_rows(dir)?;
        if trainer.step != epoch * spe || rows.len() as u64 != *epoch {
            return Err(stage_err(
                ctx.stage,
                format!(
                    "checkpoint {} is at step {} with {} metric rows, expected epoch {epoch}",
                    dir.display(),
                    trainer.step,
                    rows.len()
                ),
            ));
        }
        outcome.start_epoch = *epoch;
        outcome.resumed_from = what.to_string();
    }

    let bar = ctx
        .progress
        .stage_bar(ctx.stage, total, outcome.start_epoch * spe);
    let passes_before = trainer.passes;
    for epoch in outcome.start_epoch..spec.epochs {
        let t0 = Instant::now();
        let (mut loss, mut correct, mut seen, mut sam_steps) = (0.0f64, 0usize, 0usize, 0u64);
        let mut lr = 0.0;
        for batch in loader.epoch(epoch) {
            let (x, y) = batch.to_tensors(ctx.device)?;
            lr = spec.lr.at(trainer.step, total);
            let out = trainer
                .train_step(&model, &x, &y)
                .map_err(|e| stage_err(ctx.stage, e.to_string()))?;
            loss += out.loss * out.samples as f64;
            correct += out.correct;
            seen += out.samples;
            sam_steps += (out.method == Method::Sam) as u64;
            outcome.steps_run += 1;
            bar.inc(1);
        }
        let wall = t0.elapsed().as_secs_f64();
        let (mean_loss, acc) = (loss / seen as f64, correct as f64 / seen as f64);
        rows.push(format!(
            "{},{},{lr},{mean_loss},{acc},{sam_steps},{},{wall:.3}",
            epoch + 1,
            trainer.step,
            trainer.passes
        ));
        ctx.progress
            .epoch_line(ctx.stage, epoch + 1, spec.epochs, mean_loss, acc, &bar);
        let done = epoch + 1;
        if let Some(plan) = ctx.prefix
            && plan.keep.contains(&done)
        {
            let pk = &plan.keys[done as usize];
            let dest = ctx.cache.prefix_dir(pk);
            if !matches!(ctx.cache.check(&dest), Lookup::Valid(..)) {
                let to = Target {
                    dir: &dest,
                    what: "prefix",
                    key: pk,
                };
                save_checkpoint(ctx, &model, &trainer, &rows, to, done)?;
            }
        }
        if done < spec.epochs {
            let dest = ctx
                .cache
                .partial_dir(ctx.key)
                .join(format!("epoch-{done:06}"));
            let to = Target {
                dir: &dest,
                what: "partial",
                key: ctx.key,
            };
            save_checkpoint(ctx, &model, &trainer, &rows, to, done)?;
            for (e, old) in ctx.cache.partials(ctx.key) {
                if e < done {
                    ctx.cache.discard(&old)?;
                }
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
    summary.insert("passes".into(), trainer.passes as f64);
    summary.insert(
        "passes_per_step".into(),
        trainer.passes as f64 / trainer.step.max(1) as f64,
    );
    let resolved = trainer.schedule.clone();
    summary.insert(
        "sam_steps".into(),
        resolved.count(Method::Sam, 0, total) as f64,
    );
    let wall: f64 = rows
        .iter()
        .filter_map(|r| r.rsplit(',').next()?.parse::<f64>().ok())
        .sum();
    summary.insert("wall_s".into(), wall);
    if spec.test_subset != Subset::Off {
        let l = eval_loader(
            ds,
            false,
            spec.test_subset,
            spec.subset_seed,
            spec.eval_batch,
        )?;
        let (loss, correct, n) = evaluate_loader(&model, &l, ctx.device)?;
        summary.insert("test_loss".into(), loss);
        summary.insert("test_acc".into(), correct as f64 / n.max(1) as f64);
        summary.insert("test_error".into(), 1.0 - correct as f64 / n.max(1) as f64);
    }
    write_state(&model, &trainer, &rows, ctx.out)?;
    Ok((summary, outcome))
}
