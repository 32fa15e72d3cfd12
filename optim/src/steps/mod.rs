//! Step kinds: what one optimisation step does, one file per kind.
//!
//! A kind is a type implementing [`StepKind`]. It declares, once:
//! - its own **settings** (`Settings`: a serde struct whose fields have
//!   defaults; a study writes them as `kinds: (<field>: (...))`, and a
//!   setting at its default is left out of the key);
//! - whether its steps use SAM's settings ([`SamConfig`]: rho, m-sharpness
//!   chunks, adaptive scaling), which then count in the run's key from its
//!   first such step on;
//! - its **planned cost** per step in SGD-step units, computed from its
//!   settings (what the plan charges; the passes a step actually ran are
//!   counted in [`StepOutput::passes`]);
//! - its **persistent state**: the kind type itself is the state (fields
//!   kept between steps, e.g. LookSAM's stored direction), saved with the
//!   trainer's state as named tensors and restored for exact resume.
//!
//! `steps!` below lists the kinds. One line per kind makes the [`Method`]
//! variant (the name a schedule writes: `Always(LookSam)`), the field of
//! [`KindSettings`] and the slot of [`KindStates`]. Adding a kind is a new
//! file here plus one line in the list (append: a kind's index is part of
//! shared-prefix keys).

use std::collections::BTreeMap;
use std::fmt::Debug;

use candle_core::Tensor;
use samlab_models::Model;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result, bad};
use crate::sam::{SamConfig, SamGradient, loss_decay, rollback_on_error, sam_chunks, update};
use crate::sgd::{Grads, Sgd};

pub mod esam;
pub mod fsam;
pub mod gsam;
pub mod length_matched;
pub mod look_sam;
pub mod msam;
mod sam;
mod sgd;

pub use sam::{sam_step, sam_step_with};
pub use sgd::{sgd_step, sgd_step_with};

/// How a step computes its ghost batches (a run's `ghost` setting).
///
/// `Sequential` (the default) runs one pass per slice of `bn_batch`
/// images, as every kind can; `Batched` runs the slices as one batched
/// pass per SAM pass ([`crate::batched`]), for the kinds that declare
/// [`StepKind::BATCHED`] (SGD and SAM, with ASAM, SAM-ON and m-sharpness).
/// The two compute the same step in another summation order: f64 agrees
/// to about 1e-12, f32 trajectories part after the first ReLU flip, so a
/// run's form is part of its key where it is `Batched`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GhostForm {
    #[default]
    Sequential,
    Batched,
}

impl GhostForm {
    /// Whether this is the default form (what a key leaves out).
    pub fn is_sequential(&self) -> bool {
        *self == GhostForm::Sequential
    }
}

/// What a step reads besides the model, the optimiser and the batch.
#[derive(Clone, Copy, Debug)]
pub struct StepSettings<'a> {
    pub sam: &'a SamConfig,
    /// Ghost batches: BatchNorm over slices of this many images (`None`:
    /// the whole batch, or the whole chunk).
    pub bn_batch: Option<usize>,
    /// How the slices are computed: one pass each, or batched.
    pub ghost: GhostForm,
}

impl<'a> StepSettings<'a> {
    /// SAM's settings `sam` with ghost batches of `bn_batch` images,
    /// computed one pass per slice.
    pub fn sequential(sam: &'a SamConfig, bn_batch: Option<usize>) -> StepSettings<'a> {
        StepSettings {
            sam,
            bn_batch,
            ghost: GhostForm::Sequential,
        }
    }
}

/// What a step kind's settings are checked against for a run
/// ([`StepKind::check_run`]): SAM's settings, the ghost batch and, where
/// known, the batch size.
#[derive(Clone, Copy, Debug)]
pub struct RunShape<'a> {
    /// SAM's settings and the ghost batches.
    pub settings: StepSettings<'a>,
    /// Images per step (`None` where not known yet: a
    /// [`Trainer`](crate::Trainer) is built without its data).
    pub batch: Option<usize>,
}

/// What one step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    pub method: Method,
    /// Mean training loss of the batch (first pass).
    pub loss: f64,
    /// Correctly classified samples of the batch (first pass: at the
    /// weights before the step, training mode).
    pub correct: usize,
    /// SAM: correctly classified samples of the perturbed passes at
    /// `w + eps` (what SAM's reference code logs as training accuracy);
    /// `None` for a step without a perturbed pass.
    pub perturbed_correct: Option<usize>,
    pub samples: usize,
    /// Forward+backward passes over the whole batch, in SGD-step units.
    pub passes: f64,
}

impl StepOutput {
    /// An SGD step's: one pass over the `samples` of the batch, no
    /// perturbed pass.
    pub(crate) fn sgd(loss: f64, correct: usize, samples: usize) -> StepOutput {
        StepOutput {
            method: Method::Sgd,
            loss,
            correct,
            perturbed_correct: None,
            samples,
            passes: 1.0,
        }
    }

    /// Whether the step took a perturbed pass (a SAM-type step): what
    /// counts it as one, whatever its kind is called.
    pub fn perturbed(&self) -> bool {
        self.perturbed_correct.is_some()
    }
}

/// What a step reads and changes besides its kind's settings and state.
pub struct StepCtx<'a> {
    pub model: &'a Model,
    pub opt: &'a mut Sgd,
    /// SAM's settings (read by kinds that use them) and the ghost batches
    /// (kinds that are not [`StepKind::BATCHED`] are refused
    /// `ghost: Batched` by [`check_ghost`], in `check_run` and again by
    /// [`KindStates::step`]).
    pub settings: StepSettings<'a>,
    pub x: &'a Tensor,
    pub y: &'a Tensor,
    pub lr: f64,
}

impl StepCtx<'_> {
    /// The run's shape as this step sees it, its batch included, for
    /// [`StepKind::check_run`].
    pub fn shape(&self) -> Result<RunShape<'_>> {
        Ok(RunShape {
            settings: self.settings,
            batch: Some(self.y.dim(0)?),
        })
    }
}

impl StepCtx<'_> {
    /// A SAM-type step, what SAM, GSAM, F-SAM and LookSAM's SAM steps
    /// share: SAM's settings checked, then, as one step that changes
    /// nothing if it fails ([`rollback_on_error`]), SAM's chunk loop on the
    /// batch with the kind's `perturb` and `combine` ([`sam_chunks`]),
    /// `keep` on its result (what the kind stores; it may also rescale the
    /// chunks' mean direction, `perturbed`) and the base optimiser's update
    /// with that direction. Returns what the step did ([`sam_output`]) and
    /// what `keep` gave.
    pub(crate) fn sam_update<T>(
        self,
        method: Method,
        perturb: impl FnMut(&samlab_models::ParamStore, &Grads) -> Result<Grads>,
        combine: impl FnMut(Grads, Grads) -> Result<(Grads, Option<Grads>)>,
        keep: impl FnOnce(&mut SamGradient) -> Result<T>,
    ) -> Result<(StepOutput, T)> {
        let StepSettings { sam, bn_batch, .. } = self.settings;
        sam.check()?;
        rollback_on_error(self.model, || {
            let (model, x, y) = (self.model, self.x, self.y);
            let decay = loss_decay(self.opt);
            let mut r = sam_chunks(model, sam, bn_batch, decay, x, y, perturb, None, combine)?;
            let kept = keep(&mut r)?;
            update(model, self.opt, &r.perturbed, self.lr)?;
            Ok((sam_output(method, &r, y.dim(0)?), kept))
        })
    }
}

/// What a step of kind `method` on a batch of `samples` did whose passes
/// were `r`'s: the first pass over the batch plus the second passes over
/// the samples they covered (two passes where they covered the batch).
pub(crate) fn sam_output(method: Method, r: &SamGradient, samples: usize) -> StepOutput {
    StepOutput {
        method,
        loss: r.loss,
        correct: r.correct,
        perturbed_correct: Some(r.perturbed_correct),
        samples,
        passes: 1.0 + r.second_samples as f64 / samples as f64,
    }
}

/// A kind of optimisation step (see the module docs).
pub trait StepKind: Debug + Default {
    /// The kind's own settings; `Default` gives each field its default.
    type Settings: Clone + Debug + Default + PartialEq + Serialize + DeserializeOwned;

    /// Whether the kind's steps read SAM's settings.
    const USES_SAM: bool;

    /// Whether the kind computes ghost batches in the batched form too
    /// ([`GhostForm::Batched`]); a kind that does not is refused it.
    const BATCHED: bool = false;

    /// Whether how many passes a step takes depends on the data (ESAM's
    /// selection of the samples whose loss rose most), not only on the
    /// settings.
    const DATA_DEPENDENT_PASSES: bool = false;

    /// Checks the settings (called once, where a study is read).
    fn check(_settings: &Self::Settings) -> Result<()> {
        Ok(())
    }

    /// Checks the settings with the run's SAM settings, ghost batch and
    /// batch size, for a run that takes steps of this kind: a kind whose
    /// step cannot take one of them (m-sharpness chunks, say) says so
    /// here, naming the setting (a study's stage calls it where it is read,
    /// [`Trainer`](crate::Trainer) for every kind its schedule uses, and the
    /// step again with its batch).
    fn check_run(_settings: &Self::Settings, _run: &RunShape) -> Result<()> {
        Ok(())
    }

    /// What one step costs on average, as a fraction of an SGD step
    /// (forward+backward passes over the batch), from the settings.
    fn cost(settings: &Self::Settings) -> f64;

    /// Takes one step, updating the kind's state.
    fn step(&mut self, settings: &Self::Settings, ctx: StepCtx<'_>) -> Result<StepOutput>;

    /// The state kept between steps, as named tensors (empty: none).
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Restores what [`state`](Self::state) returned.
    fn load_state(&mut self, tensors: BTreeMap<String, Tensor>) -> Result<()> {
        match tensors.keys().next() {
            None => Ok(()),
            Some(k) => Err(bad(format!("this kind keeps no state, found `{k}`"))),
        }
    }
}

/// Whether a run of kind `m` can take its ghost-batch form: `Batched`
/// needs a kind with the batched form ([`StepKind::BATCHED`]) and slices
/// to batch (`bn_batch`, or SAM's m-sharpness chunks); without them the
/// step would be the plain one under another key.
pub fn check_ghost(m: Method, run: &RunShape) -> Result<()> {
    let StepSettings {
        sam,
        bn_batch,
        ghost,
    } = run.settings;
    if ghost == GhostForm::Sequential {
        return Ok(());
    }
    if !m.batched() {
        let kinds: Vec<String> = Method::ALL
            .iter()
            .filter(|k| k.batched())
            .map(|k| format!("{k:?}"))
            .collect();
        return Err(bad(format!(
            "`ghost: Batched` is built for the {} kinds only; {m:?} computes its ghost batches one pass each (leave `ghost` unset)",
            kinds.join(" and ")
        )));
    }
    if bn_batch.is_none() && (!m.uses_sam() || sam.chunk.is_none()) {
        return Err(bad(format!(
            "`ghost: Batched` has nothing to batch: {m:?} steps without ghost batches (`bn_batch`){} are one pass over the whole batch (set `bn_batch`, or leave `ghost` unset)",
            if m.uses_sam() {
                " or m-sharpness chunks (`sam.chunk`)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// Settings of a kind that has none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

/// Defines [`Method`], [`KindSettings`] and [`KindStates`] from the list of
/// step kinds: `Variant => type, settings field;`.
macro_rules! steps {
    ($($variant:ident => $kind:ty, settings $field:ident;)*) => {
        /// The kinds of step, by the name a schedule writes.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum Method {
            $($variant,)*
        }

        impl Method {
            /// Every kind, in the order of the list (a kind's index is part
            /// of shared-prefix keys: append, never reorder).
            pub const ALL: &'static [Method] = &[$(Method::$variant),*];

            /// Whether the kind's steps read SAM's settings.
            pub fn uses_sam(self) -> bool {
                match self { $(Method::$variant => <$kind as StepKind>::USES_SAM,)* }
            }

            /// Whether the kind has the batched ghost-batch form
            /// ([`StepKind::BATCHED`]).
            pub fn batched(self) -> bool {
                match self { $(Method::$variant => <$kind as StepKind>::BATCHED,)* }
            }

            /// Whether the kind's passes per step depend on the data
            /// ([`StepKind::DATA_DEPENDENT_PASSES`]).
            pub fn data_dependent_passes(self) -> bool {
                match self { $(Method::$variant => <$kind as StepKind>::DATA_DEPENDENT_PASSES,)* }
            }

            /// The kind's field in [`KindSettings`] (`kinds: (<field>: ...)`).
            pub fn field(self) -> &'static str {
                match self { $(Method::$variant => stringify!($field),)* }
            }
        }

        /// Every kind's own settings, each at its defaults unless a study
        /// sets them (`kinds: (look_sam: (k: 5))`).
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct KindSettings {
            $(pub $field: <$kind as StepKind>::Settings,)*
        }

        impl KindSettings {
            /// What one step of kind `m` costs on average, in SGD steps.
            pub fn cost(&self, m: Method) -> f64 {
                match m { $(Method::$variant => <$kind as StepKind>::cost(&self.$field),)* }
            }

            /// Checks kind `m`'s settings with the shape of a run that
            /// takes its steps ([`StepKind::check_run`]).
            pub fn check_run(&self, m: Method, run: &RunShape) -> Result<()> {
                check_ghost(m, run)?;
                match m {
                    $(Method::$variant => <$kind as StepKind>::check_run(&self.$field, run)
                        .map_err(|e| within(&format!("kinds.{}", stringify!($field)), e)),)*
                }
            }

            /// Checks every kind's settings; an error names the kind's field.
            pub fn check(&self) -> Result<()> {
                $(
                    <$kind as StepKind>::check(&self.$field)
                        .map_err(|e| within(&format!("kinds.{}", stringify!($field)), e))?;
                )*
                Ok(())
            }
        }

        /// The state every kind keeps between steps.
        #[derive(Debug, Default)]
        pub struct KindStates {
            $(pub $field: $kind,)*
        }

        impl KindStates {
            /// Takes one step of kind `m` with `settings` (refused where
            /// the context asks for a form the kind lacks: [`check_ghost`]).
            pub fn step(&mut self, m: Method, settings: &KindSettings, ctx: StepCtx<'_>) -> Result<StepOutput> {
                check_ghost(m, &ctx.shape()?)?;
                match m { $(Method::$variant => self.$field.step(&settings.$field, ctx),)* }
            }

            /// Every kind's state, named `<field>.<name>`.
            pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
                let mut out = Vec::new();
                $(
                    for (name, t) in self.$field.state()? {
                        out.push((format!("{}.{name}", stringify!($field)), t));
                    }
                )*
                Ok(out)
            }

            /// Restores what [`tensors`](Self::tensors) returned; a name of
            /// no kind is an error.
            pub fn load(&mut self, tensors: BTreeMap<String, Tensor>) -> Result<()> {
                let mut by_kind: BTreeMap<&str, BTreeMap<String, Tensor>> = BTreeMap::new();
                for (name, t) in tensors {
                    let (field, rest) = name
                        .split_once('.')
                        .ok_or_else(|| bad(format!("step-kind state `{name}` names no kind")))?;
                    let field = Method::ALL
                        .iter()
                        .map(|m| m.field())
                        .find(|f| *f == field)
                        .ok_or_else(|| bad(format!("step-kind state `{name}` names no kind")))?;
                    by_kind.entry(field).or_default().insert(rest.to_string(), t);
                }
                $(
                    self.$field
                        .load_state(by_kind.remove(stringify!($field)).unwrap_or_default())
                        .map_err(|e| within(&format!("state of {}", stringify!($field)), e))?;
                )*
                Ok(())
            }
        }
    };
}

steps! {
    Sgd => sgd::SgdKind, settings sgd;
    Sam => sam::SamKind, settings sam;
    LookSam => look_sam::LookSam, settings look_sam;
    Gsam => gsam::Gsam, settings gsam;
    Msam => msam::Msam, settings msam;
    Fsam => fsam::Fsam, settings fsam;
    Esam => esam::Esam, settings esam;
    LengthMatchedSgd => length_matched::LengthMatched, settings length_matched_sgd;
}

impl Method {
    /// The kind's position in [`Method::ALL`].
    pub fn index(self) -> usize {
        Method::ALL
            .iter()
            .position(|m| *m == self)
            .expect("every kind is listed")
    }
}

/// `sum_i <a_i, b_i>` over the tensors of `a` (each tensor's sum in its
/// dtype, the sum over tensors in f64, in name order).
pub(crate) fn dot(a: &crate::Grads, b: &crate::Grads) -> Result<f64> {
    let mut s = 0f64;
    for (name, t) in a {
        let u = b
            .get(name)
            .ok_or_else(|| bad(format!("no tensor `{name}` to pair with")))?;
        s += (t * u)?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(s)
}

/// A state counter (a whole number below 2^53) as a tensor.
pub(crate) fn counter_tensor(n: u64) -> Result<Tensor> {
    Ok(Tensor::new(&[n as f64], &candle_core::Device::Cpu)?)
}

/// Reads a counter written by [`counter_tensor`].
pub(crate) fn read_counter(t: &Tensor) -> Result<u64> {
    let v = t
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    match v.as_slice() {
        [c] if *c >= 0.0 && c.fract() == 0.0 && *c < 9.0e15 => Ok(*c as u64),
        _ => Err(bad(format!("bad counter {v:?}"))),
    }
}

/// `e` with `what` in front of its message, where it is a bad setting.
fn within(what: &str, e: Error) -> Error {
    match e.kind {
        ErrorKind::BadConfig(m) => bad(format!("{what}: {m}")),
        other => other.into(),
    }
}
