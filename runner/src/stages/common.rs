//! What stage kinds share: inheritance of fields and grids, the SGD/SAM
//! partials and their resolution, evaluation splits and subsets, the
//! `w1`/`w2` pair check, loading a dependency's weights, and the training
//! and evaluation loaders. A kind's own module holds only what is its own.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use indexmap::IndexMap;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use samlab_data::{Dataset, Loader, PipelineConfig, Split, subset_per_class};
use samlab_models::{Arch, Model};
use samlab_optim::{Decay, KindSettings, Method, RhoSchedule, SamConfig, Scope, SgdConfig};
use serde::{Deserialize, Serialize};

use super::RunCtx;
use crate::error::{Invalid, Result};

/// A stage's grid as written: field name to the values it takes.
pub type Grid = IndexMap<String, Vec<f64>>;

/// `$child.f = $parent.f` for every listed field the child leaves unset.
macro_rules! inherit {
    ($c:expr, $p:expr; $($f:ident),* $(,)?) => {
        $( if $c.$f.is_none() { $c.$f = $p.$f.clone(); } )*
    };
}
pub(crate) use inherit;

/// A grid whose fields come from `parent` unless `own` sets them.
pub fn merged_grid(own: Option<Grid>, parent: &Option<Grid>) -> Option<Grid> {
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

/// SGD settings as written (unset fields: the thesis' recipe).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Sgd")]
pub struct SgdPartial {
    pub momentum: Option<f64>,
    pub nesterov: Option<bool>,
    pub weight_decay: Option<f64>,
    /// `Update` (default) or `Loss`: docs/thesis-protocol.md.
    pub decay: Option<Decay>,
}

/// SAM settings as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Sam")]
pub struct SamPartial {
    pub rho: Option<f64>,
    /// m-sharpness chunk size; unset: the whole batch.
    pub chunk: Option<usize>,
    pub adaptive: Option<bool>,
    pub eta: Option<f64>,
    /// `All` (default) or `Norm`: SAM-ON, only the normalisation layers'
    /// parameters perturbed.
    pub scope: Option<Scope>,
    /// `Constant` (default), `Linear(to: x)`, `Cosine(to: x)` or
    /// `LrProportional(min: x)` (GSAM's rule).
    pub rho_schedule: Option<RhoSchedule>,
}

impl SgdPartial {
    /// `own` with its unset fields taken from `parent`.
    pub fn merged(own: Option<SgdPartial>, parent: &Option<SgdPartial>) -> Option<SgdPartial> {
        match (own, parent) {
            (Some(mut a), Some(b)) => {
                inherit!(a, b; momentum, nesterov, weight_decay, decay);
                Some(a)
            }
            (a, b) => a.or_else(|| b.clone()),
        }
    }

    /// The settings with the recipe's defaults filled in, checked.
    pub fn resolve(o: Option<&SgdPartial>) -> Result<SgdConfig, Invalid> {
        let d = SgdConfig::default();
        let o = o.cloned().unwrap_or_default();
        let optimizer = SgdConfig {
            momentum: o.momentum.unwrap_or(d.momentum),
            nesterov: o.nesterov.unwrap_or(d.nesterov),
            weight_decay: o.weight_decay.unwrap_or(d.weight_decay),
            decay: o.decay.unwrap_or(d.decay),
        };
        samlab_optim::Sgd::new(optimizer.clone())?;
        Ok(optimizer)
    }
}

impl SamPartial {
    /// `own` with its unset fields taken from `parent`.
    pub fn merged(own: Option<SamPartial>, parent: &Option<SamPartial>) -> Option<SamPartial> {
        match (own, parent) {
            (Some(mut a), Some(b)) => {
                inherit!(a, b; rho, chunk, adaptive, eta, scope, rho_schedule);
                Some(a)
            }
            (a, b) => a.or_else(|| b.clone()),
        }
    }

    /// The settings with defaults filled in, checked against the batch size
    /// and the ghost batch: the chunk m defaults to the ghost batch, as a
    /// device perturbs and normalises its own images.
    pub fn resolve(
        s: Option<&SamPartial>,
        batch: usize,
        bn_batch: Option<usize>,
    ) -> Result<SamConfig, Invalid> {
        let s = s.cloned().unwrap_or_default();
        let ds = SamConfig::new(0.05);
        let sam = SamConfig {
            rho: s.rho.unwrap_or(ds.rho),
            chunk: s.chunk.or(bn_batch),
            adaptive: s.adaptive.unwrap_or(ds.adaptive),
            eta: s.eta.unwrap_or(ds.eta),
            scope: s.scope.unwrap_or(ds.scope),
            rho_schedule: s.rho_schedule.unwrap_or(ds.rho_schedule),
        };
        sam.check()?;
        if let Some(m) = sam.chunk
            && !batch.is_multiple_of(m)
        {
            return Err(Invalid::Value(format!(
                "the m-sharpness chunk {m} does not divide the batch {batch}"
            )));
        }
        if let (Some(m), Some(b)) = (sam.chunk, bn_batch)
            && !m.is_multiple_of(b)
        {
            return Err(Invalid::Value(format!(
                "`bn_batch` {b} does not divide the m-sharpness chunk {m}: a device's perturbation covers whole ghost batches"
            )));
        }
        Ok(sam)
    }
}

/// The step kinds' own settings as written (`kinds: (look_sam: (k: 3))`),
/// kept as a value: `extends` merges it field by field, and it becomes
/// [`KindSettings`] once, with the kinds' defaults, in `finish`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct KindsPartial(serde_json::Value);

impl KindsPartial {
    /// `own` with what it leaves unset taken from `parent`, at every level.
    pub fn merged(
        own: Option<KindsPartial>,
        parent: &Option<KindsPartial>,
    ) -> Option<KindsPartial> {
        fn merge(own: &mut serde_json::Value, parent: &serde_json::Value) {
            if let (Some(o), Some(p)) = (own.as_object_mut(), parent.as_object()) {
                for (k, v) in p {
                    match o.get_mut(k) {
                        Some(mine) => merge(mine, v),
                        None => {
                            o.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
        match (own, parent) {
            (Some(mut a), Some(b)) => {
                merge(&mut a.0, &b.0);
                Some(a)
            }
            (a, b) => a.or_else(|| b.clone()),
        }
    }

    /// Every numeric setting of every kind, as a grid path
    /// (`kinds.look_sam.k`).
    pub fn grid_paths() -> Vec<String> {
        let d = serde_json::to_value(KindSettings::default()).expect("settings serialise");
        let mut out = Vec::new();
        for (kind, fields) in d.as_object().into_iter().flatten() {
            for (name, v) in fields.as_object().into_iter().flatten() {
                if v.is_number() {
                    out.push(format!("kinds.{kind}.{name}"));
                }
            }
        }
        out
    }

    /// Sets grid path `kinds.KIND.NAME` (one of [`grid_paths`](Self::grid_paths))
    /// to `v`: a whole number where the setting is one.
    pub fn set(own: &mut Option<KindsPartial>, path: &str, v: f64) -> Result<(), Invalid> {
        let d = serde_json::to_value(KindSettings::default()).expect("settings serialise");
        let parts: Vec<&str> = path.split('.').collect();
        let [_, kind, name] = parts[..] else {
            return Err(Invalid::UnknownGridField(path.to_string()));
        };
        let value = match d.get(kind).and_then(|k| k.get(name)) {
            Some(x) if x.is_u64() => serde_json::Value::from(whole(v)?),
            Some(x) if x.is_number() => serde_json::Value::from(v),
            _ => return Err(Invalid::UnknownGridField(path.to_string())),
        };
        let root = &mut own
            .get_or_insert_with(|| KindsPartial(serde_json::json!({})))
            .0;
        if !root.is_object() {
            *root = serde_json::json!({});
        }
        let k = root
            .as_object_mut()
            .expect("an object")
            .entry(kind)
            .or_insert_with(|| serde_json::json!({}));
        match k.as_object_mut() {
            Some(m) => {
                m.insert(name.to_string(), value);
                Ok(())
            }
            None => Err(Invalid::Value(format!(
                "`kinds.{kind}` must be a block of settings to vary `{path}`"
            ))),
        }
    }

    /// The settings with every kind's defaults filled in, checked.
    pub fn resolve(o: Option<&KindsPartial>) -> Result<KindSettings, Invalid> {
        let kinds: KindSettings = match o {
            None => KindSettings::default(),
            Some(v) => serde_json::from_value(v.0.clone())
                .map_err(|e| Invalid::Value(format!("`kinds`: {e}")))?,
        };
        kinds.check()?;
        Ok(kinds)
    }
}

/// What a key records of the step kinds' own settings: for each kind the
/// run uses, the settings that differ from the kind's defaults (so adding a
/// setting, or a kind, changes no existing key); `None` when that is nothing.
pub fn kinds_key(
    kinds: &KindSettings,
    used: impl Iterator<Item = Method>,
) -> Option<serde_json::Value> {
    let (mine, base) = kinds_json(kinds);
    let mut out = serde_json::Map::new();
    for m in used {
        if let Some(v) = non_default_in(&mine, &base, m) {
            out.insert(m.field().to_string(), v);
        }
    }
    (!out.is_empty()).then_some(serde_json::Value::Object(out))
}

/// Every kind whose settings differ from its defaults, with those settings
/// (what a prefix identity records from the kind's first step).
pub fn non_default_kinds(
    kinds: &KindSettings,
) -> std::collections::BTreeMap<Method, serde_json::Value> {
    let (mine, base) = kinds_json(kinds);
    Method::ALL
        .iter()
        .filter_map(|m| Some((*m, non_default_in(&mine, &base, *m)?)))
        .collect()
}

/// `kinds` and the defaults, as JSON (serialised once per call above).
fn kinds_json(kinds: &KindSettings) -> (serde_json::Value, serde_json::Value) {
    (
        serde_json::to_value(kinds).expect("settings serialise"),
        serde_json::to_value(KindSettings::default()).expect("settings serialise"),
    )
}

/// Kind `m`'s settings in `mine` that differ from `base`, as an object
/// (`None`: all at their defaults).
fn non_default_in(
    mine: &serde_json::Value,
    base: &serde_json::Value,
    m: Method,
) -> Option<serde_json::Value> {
    let (mine, base) = (&mine[m.field()], &base[m.field()]);
    let fields: serde_json::Map<String, serde_json::Value> = mine
        .as_object()?
        .iter()
        .filter(|(k, v)| base.get(k.as_str()) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!fields.is_empty()).then_some(serde_json::Value::Object(fields))
}

/// Checks a ghost-batch size against the batch.
pub fn check_bn_batch(bn_batch: Option<usize>, batch: usize) -> Result<(), Invalid> {
    if let Some(b) = bn_batch {
        positive("bn_batch", b as u64)?;
        if !batch.is_multiple_of(b) {
            return Err(Invalid::Value(format!(
                "`bn_batch` {b} does not divide the batch {batch}"
            )));
        }
    }
    Ok(())
}

/// Converts a grid value to a whole number.
pub fn whole(v: f64) -> Result<u64, Invalid> {
    if v >= 0.0 && v.fract() == 0.0 && v < 9.0e15 {
        Ok(v as u64)
    } else {
        Err(Invalid::Value(format!("{v} is not a whole number >= 0")))
    }
}

/// Checks that an integer field which must be positive is.
pub fn positive(name: &'static str, v: u64) -> Result<(), Invalid> {
    if v == 0 {
        Err(Invalid::NotPositive(name))
    } else {
        Ok(())
    }
}

/// `(w1, w2)` as stage references.
pub fn pair_refs<'a>(
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

/// A specs' model, serialised as its canonical name (`resnet18`): how keys
/// hold it.
pub fn arch_name<S: serde::Serializer>(arch: &Arch, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&arch.name())
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

/// The probe's indices: `n` of the training images in a fixed order.
pub fn probe_indices(train: Option<Vec<u32>>, len: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut idx = train.unwrap_or_else(|| (0..len as u32).collect());
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0050_524f_4245_u64);
    for i in (1..idx.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx.sort_unstable();
    idx
}

/// The values of `a`: `points` evenly spaced from `start` to `end`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlphaGrid {
    pub start: f64,
    pub end: f64,
    pub points: usize,
}

impl AlphaGrid {
    pub fn values(&self) -> Vec<f64> {
        if self.points == 1 {
            return vec![self.start];
        }
        (0..self.points)
            .map(|i| {
                let t = i as f64 / (self.points - 1) as f64;
                // exact at both ends
                if i + 1 == self.points {
                    self.end
                } else {
                    self.start + t * (self.end - self.start)
                }
            })
            .collect()
    }
}

/// How a training loader draws its batches.
#[derive(Clone, Copy, Debug)]
pub struct TrainingData {
    pub batch: usize,
    /// Order and augmentation of every epoch.
    pub seed: u64,
    /// CIFAR augmentation (random crop of the padded image, flip).
    pub augment: bool,
}

/// A shuffled training loader over `indices` (None: the whole split), with
/// at least one full batch.
pub fn training_loader(
    ds: &Dataset,
    indices: Option<Vec<u32>>,
    how: TrainingData,
    stage: &str,
) -> Result<Loader> {
    let mut cfg = PipelineConfig::train(how.batch, ds.name.normalization(), how.seed);
    if !how.augment {
        cfg.augment = samlab_data::Augment::NONE;
    }
    let loader = Loader::new(ds.train.clone(), indices, cfg)?;
    if loader.batches_per_epoch() == 0 {
        return Err(crate::error::stage_err(
            stage,
            format!(
                "{} training images make no full batch of {}",
                loader.len(),
                how.batch
            ),
        ));
    }
    Ok(loader)
}

/// A training loader's batches as tensors on the stage's device: built by
/// the CPU pipeline's thread on the CPU, assembled on the device
/// elsewhere (`samlab_data::DeviceLoader`: the split copied once, each
/// batch gathered, cropped, flipped and normalised there from the same
/// choices, so the batches are the same either way).
pub enum Feed {
    Cpu(Loader),
    Device(samlab_data::DeviceLoader),
}

impl Feed {
    pub fn new(loader: Loader, device: &Device) -> Result<Feed> {
        Ok(if device.is_cpu() {
            Feed::Cpu(loader)
        } else {
            Feed::Device(samlab_data::DeviceLoader::new(loader, device)?)
        })
    }

    /// The batches of `epoch`, in order.
    pub fn epoch<'a>(
        &'a self,
        epoch: u64,
        device: &'a Device,
    ) -> Box<dyn Iterator<Item = Result<(Tensor, Tensor)>> + 'a> {
        self.epoch_from(epoch, 0, device)
    }

    /// The batches of `epoch` from batch `first` on (a run resumed
    /// mid-epoch): the same batches as those of [`Feed::epoch`] from there.
    pub fn epoch_from<'a>(
        &'a self,
        epoch: u64,
        first: usize,
        device: &'a Device,
    ) -> Box<dyn Iterator<Item = Result<(Tensor, Tensor)>> + 'a> {
        match self {
            Feed::Cpu(l) => Box::new(
                l.epoch_from(epoch, first)
                    .map(move |b| Ok(b.to_tensors(device)?)),
            ),
            Feed::Device(d) => Box::new(d.epoch_from(epoch, first).map(|r| Ok(r?))),
        }
    }
}

/// Mean loss and number of correct predictions of `model` (evaluation
/// mode) over the images `loader` yields: (loss, correct, images).
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
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let pred = logits.argmax(1)?;
        let hits = pred
            .eq(&y)?
            .to_dtype(DType::F32)?
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

/// Which split a loader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SplitName {
    Train,
    Test,
}

impl SplitName {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Test => "test",
        }
    }
}

/// A loader over (a subset of) a split for evaluation.
pub fn eval_loader(
    ds: &Dataset,
    split: SplitName,
    subset: Subset,
    subset_seed: u64,
    batch: usize,
) -> Result<Loader> {
    let data = match split {
        SplitName::Train => &ds.train,
        SplitName::Test => &ds.test,
    };
    let indices = subset.indices(data, ds.num_classes(), subset_seed)?;
    Ok(Loader::new(
        data.clone(),
        indices,
        PipelineConfig::eval(batch, ds.name.normalization()),
    )?)
}

/// Sets one of the grid fields every evaluating stage (Evaluate,
/// Interpolate) has: `train_per_class`, `test_per_class`, `subset_seed`.
pub fn set_eval_grid(
    field: &str,
    v: f64,
    train_subset: &mut Option<Subset>,
    test_subset: &mut Option<Subset>,
    subset_seed: &mut Option<u64>,
) -> Result<(), Invalid> {
    match field {
        "train_per_class" => *train_subset = Some(Subset::PerClass(whole(v)? as usize)),
        "test_per_class" => *test_subset = Some(Subset::PerClass(whole(v)? as usize)),
        "subset_seed" => *subset_seed = Some(whole(v)?),
        _ => return Err(Invalid::UnknownGridField(field.to_string())),
    }
    Ok(())
}

/// What every evaluating stage resolves the same way: which splits, which
/// images of each, and the batch size. Specs flatten it, so its fields sit
/// in their key spec as their own.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalFields {
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
    ) -> Result<EvalFields, Invalid> {
        let splits = splits
            .clone()
            .unwrap_or(vec![SplitName::Train, SplitName::Test]);
        if splits.is_empty() {
            return Err(Invalid::Value("`splits` is empty".into()));
        }
        let batch = batch.unwrap_or(500);
        positive("batch", batch as u64)?;
        let train_subset = train_subset.unwrap_or(Subset::All);
        let test_subset = test_subset.unwrap_or(Subset::All);
        for s in [train_subset, test_subset] {
            if s == Subset::Off || s == Subset::PerClass(0) {
                return Err(Invalid::Value("subsets must be All or PerClass(n) with n >= 1; leave a split out of `splits` instead".into()));
            }
        }
        Ok(EvalFields {
            splits,
            train_subset,
            test_subset,
            batch,
        })
    }

    /// `(split, subset)` of each split read.
    fn parts(&self) -> impl Iterator<Item = (SplitName, Subset)> + '_ {
        self.splits.iter().map(move |s| match s {
            SplitName::Train => (*s, self.train_subset),
            SplitName::Test => (*s, self.test_subset),
        })
    }

    /// Batches in one evaluation of the splits.
    pub fn batches(&self, classes: usize, data: &super::DataShape) -> usize {
        self.parts()
            .map(|(split, sub)| {
                let len = match split {
                    SplitName::Train => data.train_len,
                    SplitName::Test => data.test_len,
                };
                sub.count(len, classes).div_ceil(self.batch)
            })
            .sum()
    }

    /// One evaluation loader per split, by split name.
    pub fn loaders(&self, ds: &Dataset, subset_seed: u64) -> Result<Vec<(&'static str, Loader)>> {
        self.parts()
            .map(|(split, sub)| {
                Ok((
                    split.as_str(),
                    eval_loader(ds, split, sub, subset_seed, self.batch)?,
                ))
            })
            .collect()
    }
}

/// Forward passes of evaluation, in SGD-step equivalents: a forward pass is
/// about a third of a training step.
pub fn forward_cost(batches: usize) -> f64 {
    (batches as u64).div_ceil(3) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_grid_hits_its_ends_exactly() {
        let g = AlphaGrid {
            start: -0.5,
            end: 1.5,
            points: 21,
        };
        let v = g.values();
        assert_eq!(v.len(), 21);
        assert_eq!(v[0], -0.5);
        assert_eq!(v[20], 1.5);
        assert_eq!(v[5], 0.0);
        assert_eq!(v[15], 1.0);
    }
}
