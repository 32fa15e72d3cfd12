//! Stage kinds. A kind is one module that implements two traits:
//!
//! - [`Partial`] for the stage as a study writes it (every field optional,
//!   so stages can `extends` each other, merged as values by
//!   [`settings::merged`]): its references to other stages, its grid fields, and resolution into a spec;
//! - [`Kind`] for the resolved spec (built by `finish` with the resolved
//!   specs it refers to, so nothing is filled in later): what goes into its key, its cost for `runner plan`, how it runs, the measures
//!   its tables show and its plots.
//!
//! `registry!` below turns the list of kinds into [`RawStage`] and
//! [`StageSpec`] and forwards every call through the traits. Adding a kind
//! is one new module plus one line in that list (ARCHITECTURE.md walks
//! through it). What several kinds use lives in [`settings`] (settings as
//! written), [`data`] (the images a stage reads) and [`link`] (what a stage
//! takes from the stages it reads), and grid paths in [`path`].

pub mod data;
pub mod link;
pub mod path;
pub mod settings;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use candle_core::Device;
use samlab_data::{Dataset, DatasetName};
use samlab_models::{Arch, Precision};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Cache;
use crate::error::{Invalid, Result};
use crate::key::PrefixPlan;
use crate::progress::Progress;

pub use data::Subset;
pub use settings::Grid;

/// A stage as written in a study.
pub trait Partial: Clone + Debug + Default + DeserializeOwned + Serialize {
    /// The resolved form.
    type Spec: Kind;
    /// The fields a `grid` may vary by a short name (`rho`,
    /// `train_per_class`): the alias table over the paths every numeric
    /// setting has (`sam.rho`; [`path`]).
    const GRID_FIELDS: &'static [&'static str];
    /// The block or stage it extends.
    fn extends(&self) -> Option<&str>;
    /// The stages it needs: (role, stage name).
    fn refs(&self) -> Vec<(&'static str, &str)> {
        Vec::new()
    }
    fn grid(&self) -> Option<&Grid>;
    /// Grid fields named by path besides [`GRID_FIELDS`](Self::GRID_FIELDS)
    /// (`kinds.look_sam.k`: every numeric setting of the step kinds).
    fn grid_paths() -> Vec<String> {
        Vec::new()
    }
    /// Sets one grid field (one of [`GRID_FIELDS`](Self::GRID_FIELDS) or
    /// [`grid_paths`](Self::grid_paths)) to `v`.
    fn set_grid(&mut self, field: &str, v: f64) -> Result<(), Invalid>;
    /// The resolved spec, or what is missing or wrong, built with the
    /// resolved stages it refers to ([`refs`](Self::refs), by role): what it
    /// takes from them (an Evaluate stage's model) is there from the start.
    fn finish(&self, dataset: DatasetName, deps: &Deps) -> Result<Self::Spec, Invalid>;
}

/// The resolved stages a stage refers to, by role (`of`, `w1`), in the
/// order of [`Partial::refs`].
pub type Deps<'a> = [(&'static str, &'a StageSpec)];

/// A stage with every field resolved: what its key is made of, and how it runs.
pub trait Kind: Clone + Debug + PartialEq + Serialize {
    /// The kind's name in keys, `spec.json`, `runner plan` and tables.
    const NAME: &'static str;
    /// The summary measures a comparison table shows for this kind, in
    /// order; a sweep over one grid field plots each against that field.
    const HEADLINE: &'static [&'static str];
    /// Whether a stage gridded over one field (besides `seed`) gets the
    /// generic sweep plots of its headline measures; a kind that draws its
    /// sweeps itself (Escape: steps against rho) says no.
    const SWEEPS: bool = true;
    /// The columns of its `metrics.csv` that say which row it is rather
    /// than measure something (Evaluate's `split`, Landscape's `a` and
    /// `b`): the long metrics table keeps them as the row's coordinates. A
    /// column holding anything but numbers is one too, whatever it is named.
    const INDEX: &'static [&'static str] = &[];
    /// Its censored measure, if it has one (Escape: a run may end its
    /// budget without escaping): tables and claims read censoring from it.
    const CENSORING: Option<Censoring> = None;
    /// Makes the paths it names absolute: a relative path is read from
    /// `study_dir`, the study file's folder (an Import stage's `file`).
    fn resolve_paths(&mut self, _study_dir: &Path) {}
    /// The model it trains or reads.
    fn model(&self) -> &Arch;
    /// The network it leaves behind as `model.safetensors`, for the stages
    /// that read one (`of`, `w1`/`w2`): a Train stage's final weights, an
    /// Import stage's file; `None` for kinds that leave measurements only.
    fn weights(&self) -> Option<Weights<'_>> {
        None
    }
    /// Images in one of its SGD-step equivalents, for GPU-hours from a
    /// measured images/s: a training or escape step's batch; `None` for
    /// kinds whose work is not training steps.
    fn images_per_step(&self) -> Option<usize> {
        None
    }
    /// What its training steps compute in, for picking a measured rate.
    fn precision(&self) -> Precision {
        Precision::F32
    }
    /// How long it runs, for `runner plan`: epochs, steps or `-`.
    fn length(&self) -> String {
        "-".into()
    }
    /// What planning needs: the spec as it goes into the key, the cost, and
    /// for a training run its steps (shared prefixes, resume points).
    fn plan(&self, input: &PlanInput) -> Result<KindPlan, Invalid>;
    fn run(&self, ctx: &RunCtx) -> Result<(Summary, Outcome)>;
    /// The plots of this kind's completed stages, written into `out.dir`;
    /// returns the file names.
    fn plots(_done: &[Done<'_, Self>], _out: &PlotOut) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// A network a stage leaves behind, and what the stages that read it take
/// from it: the model, and the training images it was trained on (Escape
/// steps on them, Sharpness and Landscape probe them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights<'a> {
    pub model: &'a Arch,
    /// The images it trained on.
    pub images: data::TrainImages,
    /// Whether its training augmented the images (Escape's steps do the same).
    pub augment: bool,
}

/// A measure whose runs may end without reaching what it measures (Escape's
/// steps: a run that never escapes within its budget). A table shows such a
/// measure with the share of runs that reached it and never averages or
/// compares a censored row; a claim refuses it unless told to count such
/// runs at their budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Censoring {
    /// The measure (and every measure named with it as a prefix,
    /// `escape_steps_batch`).
    pub measure: &'static str,
    /// The summary flag, 1 for a run that reached it.
    pub reached: &'static str,
    /// The summary measure of a run's budget (the steps it ran).
    pub budget: &'static str,
    /// What reaching it is called in tables (`escaped`).
    pub verb: &'static str,
}

impl Censoring {
    /// Whether `measure` is censored by this.
    pub fn applies_to(&self, measure: &str) -> bool {
        measure.starts_with(self.measure)
    }
}

/// Sizes of the dataset's splits, for costs and steps per epoch.
#[derive(Clone, Copy, Debug)]
pub struct DataShape {
    pub train_len: usize,
    pub test_len: usize,
}

/// What a kind is planned with.
pub struct PlanInput<'a> {
    pub data: DataShape,
    /// The keys of the stages it depends on, by role (those known).
    pub deps: &'a [(&'static str, String)],
    /// The dataset's content fingerprint (empty when unknown).
    pub fingerprint: &'a str,
}

/// What planning a stage found out from its kind.
#[derive(Clone, Debug)]
pub struct KindPlan {
    /// The spec as it goes into the key document.
    pub key_spec: serde_json::Value,
    /// The whole stage, in SGD-step equivalents.
    pub cost: f64,
    /// A training run's prefix keys and steps.
    pub prefix: Option<PrefixPlan>,
}

impl KindPlan {
    /// A stage whose key spec is its serialised spec.
    pub fn plain(spec: &impl Serialize, cost: f64) -> KindPlan {
        KindPlan {
            key_spec: serde_json::to_value(spec).expect("specs serialise"),
            cost,
            prefix: None,
        }
    }
}

/// A completed stage of one kind, for its plots.
pub struct Done<'a, S> {
    /// Its name in the study, its file-name form (`sam-rho0.1-seed2`) and
    /// its display name (`sam[rho=0.1,seed=2]`).
    pub name: &'a str,
    pub stem: String,
    pub display: &'a str,
    /// The row it belongs to in tables: its name and grid point without the
    /// seed (`sam[rho=0.1]`).
    pub label: String,
    /// Its cache key (where its `metrics.csv` is).
    pub key: &'a str,
    pub summary: Option<&'a Summary>,
    pub spec: &'a S,
}

/// Where plots go and what they may read.
pub struct PlotOut<'a> {
    pub dir: &'a Path,
    pub cache: &'a Cache,
}

/// Declares each kind's module and defines [`RawStage`], [`StageSpec`] and
/// their forwarding from the list of kinds: `Variant => module::Partial`.
macro_rules! registry {
    ($($variant:ident => $module:ident :: $partial:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// A stage as written in a study.
        #[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
        #[serde(rename = "Stage")]
        pub enum RawStage {
            $($variant($module::$partial),)*
        }

        /// A stage with every field resolved.
        #[derive(Clone, Debug, PartialEq)]
        pub enum StageSpec {
            $($variant(<$module::$partial as Partial>::Spec),)*
        }

        impl RawStage {
            pub fn kind(&self) -> &'static str {
                match self { $(RawStage::$variant(_) => stringify!($variant),)* }
            }
            pub fn extends(&self) -> Option<&str> {
                match self { $(RawStage::$variant(p) => p.extends(),)* }
            }
            /// `self` with every unset field taken from `parent` (same kind only).
            pub fn merge_parent(self, parent: &RawStage) -> Result<RawStage, Invalid> {
                match (self, parent) {
                    $((RawStage::$variant(c), RawStage::$variant(p)) => Ok(RawStage::$variant(settings::merged(&c, p)?)),)*
                    #[allow(unreachable_patterns)]
                    (c, p) => Err(Invalid::Value(format!(
                        "a {} stage cannot extend a {} block",
                        c.kind(),
                        p.kind()
                    ))),
                }
            }
            /// The stages this one needs: (role, stage name).
            pub fn refs(&self) -> Vec<(&'static str, &str)> {
                match self { $(RawStage::$variant(p) => p.refs(),)* }
            }
            pub fn grid(&self) -> Option<&Grid> {
                match self { $(RawStage::$variant(p) => p.grid(),)* }
            }
            /// Every field a grid of this stage may vary, by name or path.
            pub fn grid_fields(&self) -> Vec<String> {
                match self {
                    $(RawStage::$variant(_) => {
                        let mut v: Vec<String> = <$module::$partial as Partial>::GRID_FIELDS
                            .iter()
                            .map(|f| f.to_string())
                            .collect();
                        v.extend(<$module::$partial as Partial>::grid_paths());
                        v
                    })*
                }
            }
            /// Sets one grid field: a kind's own name for it (its alias
            /// table, `GRID_FIELDS`, and `grid_paths`) or any numeric
            /// setting by path ([`path::set`]).
            pub fn set_grid(&mut self, field: &str, v: f64) -> Result<(), Invalid> {
                match self {
                    $(RawStage::$variant(p) => {
                        // A kind that lists the paths under a setting
                        // (`kinds.*`) sets and checks them itself.
                        let head = field.split('.').next();
                        let own = <$module::$partial as Partial>::GRID_FIELDS.contains(&field)
                            || <$module::$partial as Partial>::grid_paths()
                                .iter()
                                .any(|g| g.split('.').next() == head);
                        if own {
                            p.set_grid(field, v)
                        } else {
                            *p = path::set(p, field, v)?;
                            Ok(())
                        }
                    })*
                }
            }
            /// The resolved spec, or what is missing or wrong.
            pub fn finish(&self, dataset: DatasetName, deps: &Deps) -> Result<StageSpec, Invalid> {
                match self { $(RawStage::$variant(p) => p.finish(dataset, deps).map(StageSpec::$variant),)* }
            }
        }

        impl StageSpec {
            /// Every kind's name, in registry order.
            pub const KINDS: &'static [&'static str] =
                &[$(<<$module::$partial as Partial>::Spec as Kind>::NAME,)*];
            /// The kind's name in keys and tables (`train`, `escape`).
            pub fn kind(&self) -> &'static str {
                match self { $(StageSpec::$variant(_) => <<$module::$partial as Partial>::Spec as Kind>::NAME,)* }
            }
            pub fn headline(&self) -> &'static [&'static str] {
                match self { $(StageSpec::$variant(_) => <<$module::$partial as Partial>::Spec as Kind>::HEADLINE,)* }
            }
            pub fn index_columns(&self) -> &'static [&'static str] {
                match self { $(StageSpec::$variant(_) => <<$module::$partial as Partial>::Spec as Kind>::INDEX,)* }
            }
            pub fn censoring(&self) -> Option<Censoring> {
                match self { $(StageSpec::$variant(_) => <<$module::$partial as Partial>::Spec as Kind>::CENSORING,)* }
            }
            pub fn sweeps(&self) -> bool {
                match self { $(StageSpec::$variant(_) => <<$module::$partial as Partial>::Spec as Kind>::SWEEPS,)* }
            }
            pub fn model(&self) -> &Arch {
                match self { $(StageSpec::$variant(s) => s.model(),)* }
            }
            pub fn weights(&self) -> Option<Weights<'_>> {
                match self { $(StageSpec::$variant(s) => s.weights(),)* }
            }
            pub fn resolve_paths(&mut self, study_dir: &Path) {
                match self { $(StageSpec::$variant(s) => s.resolve_paths(study_dir),)* }
            }
            pub fn length(&self) -> String {
                match self { $(StageSpec::$variant(s) => s.length(),)* }
            }
            pub fn images_per_step(&self) -> Option<usize> {
                match self { $(StageSpec::$variant(s) => s.images_per_step(),)* }
            }
            pub fn precision(&self) -> Precision {
                match self { $(StageSpec::$variant(s) => s.precision(),)* }
            }
            pub fn plan(&self, input: &PlanInput) -> Result<KindPlan, Invalid> {
                match self { $(StageSpec::$variant(s) => s.plan(input),)* }
            }
            pub fn run(&self, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
                match self { $(StageSpec::$variant(s) => s.run(ctx),)* }
            }
        }

        /// Every kind's plots of the completed stages `done`.
        pub fn plots(done: &[Done<'_, StageSpec>], out: &PlotOut) -> Result<Vec<String>> {
            let mut written = Vec::new();
            $(
                let mine: Vec<Done<'_, <$module::$partial as Partial>::Spec>> = done
                    .iter()
                    .filter_map(|d| match d.spec {
                        StageSpec::$variant(spec) => Some(Done {
                            name: d.name,
                            label: d.label.clone(),
                            stem: d.stem.clone(),
                            display: d.display,
                            key: d.key,
                            summary: d.summary,
                            spec,
                        }),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    })
                    .collect();
                if !mine.is_empty() {
                    written.extend(<<$module::$partial as Partial>::Spec as Kind>::plots(&mine, out)?);
                }
            )*
            Ok(written)
        }
    };
}

registry! {
    Train => train::TrainPartial,
    Import => import::ImportPartial,
    Evaluate => evaluate::EvalPartial,
    Escape => escape::EscapePartial,
    Interpolate => interpolate::InterpPartial,
    Distance => distance::DistancePartial,
    Sharpness => sharpness::SharpnessPartial,
    Landscape => landscape::LandscapePartial,
}

/// What a running stage can use.
pub struct RunCtx<'a> {
    pub cache: &'a Cache,
    pub dataset: &'a Dataset,
    pub device: &'a Device,
    /// The stage's display name and key.
    pub stage: &'a str,
    pub key: &'a str,
    /// Entry directories of the stages it depends on, by role.
    pub deps: Vec<(&'static str, PathBuf)>,
    /// The directory the stage writes its outputs into.
    pub out: &'a Path,
    pub progress: &'a Progress,
    /// For training: the prefix keys of the run, by epoch, and the epochs
    /// at which to keep a shared-prefix checkpoint.
    pub prefix: Option<&'a PrefixPlan>,
    /// For training: a rolling checkpoint mid-epoch once this much time
    /// has passed since the last one (`--checkpoint-every`).
    pub checkpoint_every: Option<std::time::Duration>,
}

/// What running a stage did, beyond the files it wrote.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The epoch it started from (0 when from scratch), and the steps of
    /// the next one a mid-epoch checkpoint had done.
    pub start_epoch: u64,
    pub start_step: u64,
    /// Where the start came from (`partial`, `prefix` or empty).
    pub resumed_from: String,
    /// Steps, and SGD-step-equivalent passes, computed by this process.
    pub steps_run: u64,
    pub passes_run: f64,
}

/// A summary: metric name to value, in sorted order.
pub type Summary = BTreeMap<String, f64>;
