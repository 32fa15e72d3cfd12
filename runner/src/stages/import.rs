//! `Import`: a network trained elsewhere (PyTorch, JAX through
//! safetensors) as the weights of a study, so that Evaluate, Escape,
//! Sharpness, Landscape, Interpolate and Distance read it as they read a
//! Train stage's final weights.
//!
//! The file is a safetensors file with samlab's parameter names, which are
//! the PyTorch CIFAR implementations' (`conv1.weight`, `layer1.0.bn1.running_mean`,
//! `linear.bias`: `runner models` lists the models, models/src/*.rs each
//! file's names): a PyTorch `model.state_dict()` saved with
//! `safetensors.torch.save_file` loads as it is. PyTorch's integer
//! `num_batches_tracked` buffers are left out (samlab's BatchNorm keeps no
//! count), a `strip_prefix` removes a wrapper's prefix (`module.` from
//! `DataParallel`), and f64, f16 and bf16 tensors are converted to f32.
//! Every other name must match the model's, with its shape: a mismatch
//! fails the stage with the missing, unexpected and mis-shaped names.
//!
//! The key holds the file's SHA-256, not its path: a moved checkpoint keeps
//! its key, a changed one gets a new one. A relative `file` is read from the
//! study file's folder, as `imports` are.
//!
//! Writes `model.safetensors` (the checkpoint in samlab's form, as a Train
//! stage's) and `summary.json` (`params`, `tensors`, `left_out`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use samlab_data::DatasetName;
use samlab_models::{Arch, Model};
use serde::{Deserialize, Serialize};

use super::data::{Subset};
use super::settings::{arch_name};
use super::{Deps, Kind, KindPlan, Outcome, PlanInput, RunCtx, Summary, Weights};
use crate::cache::file_sha256;
use crate::error::{Invalid, Result, stage_err};

/// An Import stage as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Import")]
pub struct ImportPartial {
    pub extends: Option<String>,
    /// The model the file holds (`runner models`).
    pub model: Option<String>,
    /// The safetensors file; relative to the study file's folder.
    pub file: Option<String>,
    /// A prefix removed from every name that has it (`module.`).
    pub strip_prefix: Option<String>,
    /// The training images it was trained on, as a subset of the dataset's
    /// training split (default all): what Escape steps on and what
    /// Sharpness and Landscape probe.
    pub train_subset: Option<Subset>,
    pub subset_seed: Option<u64>,
    /// Whether it was trained with augmentation (default true, the standard
    /// CIFAR crop and flip): Escape's steps use the same.
    pub augment: Option<bool>,
}

/// A resolved Import stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImportSpec {
    /// The model the file holds.
    #[serde(serialize_with = "arch_name")]
    pub model: Arch,
    /// The file; resolved against the study's folder, and left out of the
    /// key (its SHA-256 goes in instead).
    #[serde(skip)]
    pub file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    pub train_subset: Subset,
    pub subset_seed: u64,
    pub augment: bool,
    pub classes: usize,
}

impl super::Partial for ImportPartial {
    type Spec = ImportSpec;
    const GRID_FIELDS: &'static [&'static str] = &[];

    fn extends(&self) -> Option<&str> {
        self.extends.as_deref()
    }

    fn grid(&self) -> Option<&super::Grid> {
        None
    }

    fn set_grid(&mut self, field: &str, _v: f64) -> Result<(), Invalid> {
        Err(Invalid::Value(format!(
            "an Import stage has no grid field `{field}`"
        )))
    }

    fn finish(&self, dataset: DatasetName, _deps: &Deps) -> Result<ImportSpec, Invalid> {
        let model = self.model.as_deref().ok_or(Invalid::Missing {
            field: "model",
            hint: " (the model the file holds, e.g. model: \"resnet18\")",
        })?;
        let arch: Arch = model.parse()?;
        let file = self.file.as_deref().ok_or(Invalid::Missing {
            field: "file",
            hint: " (a safetensors file, e.g. file: \"weights/resnet18.safetensors\")",
        })?;
        let train_subset = self.train_subset.unwrap_or(Subset::All);
        if matches!(train_subset, Subset::Off | Subset::PerClass(0)) {
            return Err(Invalid::Value(
                "`train_subset` of an Import stage must hold images (All or PerClass(n > 0))"
                    .into(),
            ));
        }
        Ok(ImportSpec {
            model: arch,
            file: PathBuf::from(file),
            strip_prefix: self.strip_prefix.clone().filter(|p| !p.is_empty()),
            train_subset,
            subset_seed: self.subset_seed.unwrap_or(0),
            augment: self.augment.unwrap_or(true),
            classes: dataset.num_classes(),
        })
    }
}

impl Kind for ImportSpec {
    const NAME: &'static str = "import";
    const HEADLINE: &'static [&'static str] = &[];

    fn resolve_paths(&mut self, study_dir: &Path) {
        if self.file.is_relative() {
            self.file = study_dir.join(&self.file);
        }
    }

    fn model(&self) -> &Arch {
        &self.model
    }

    fn weights(&self) -> Option<Weights<'_>> {
        Some(Weights {
            model: &self.model,
            images: super::data::TrainImages::new(self.train_subset, Subset::Off, self.subset_seed),
            augment: self.augment,
        })
    }

    /// The key holds the file's content hash; reading the file is the
    /// whole cost.
    fn plan(&self, _input: &PlanInput) -> Result<KindPlan, Invalid> {
        let sha = file_sha256(&self.file).map_err(|e| {
            Invalid::Value(format!(
                "cannot read the checkpoint {}: {e}",
                self.file.display()
            ))
        })?;
        let mut plan = KindPlan::plain(self, 1.0);
        plan.key_spec["sha256"] = serde_json::Value::String(sha);
        Ok(plan)
    }

    fn run(&self, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
        let file = self.file.display();
        let loaded = candle_core::safetensors::load(&self.file, &Device::Cpu)
            .map_err(|e| stage_err(ctx.stage, format!("{file}: not a safetensors file: {e}")))?;
        let mut kept: Vec<(String, Tensor)> = Vec::new();
        let mut left_out = 0usize;
        for (name, t) in loaded {
            let name = match &self.strip_prefix {
                Some(p) => name.strip_prefix(p.as_str()).unwrap_or(&name).to_string(),
                None => name,
            };
            if name.ends_with(".num_batches_tracked") {
                left_out += 1;
                continue;
            }
            let t = match t.dtype() {
                DType::F32 => t,
                DType::F64 | DType::F16 | DType::BF16 => t.to_dtype(DType::F32)?,
                other => {
                    return Err(stage_err(
                        ctx.stage,
                        format!(
                            "{file}: tensor `{name}` is {other:?}; weights and BatchNorm \
                             statistics must be floating point"
                        ),
                    ));
                }
            };
            kept.push((name, t));
        }
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        let model = Model::new(&self.model, self.classes, 0, &Device::Cpu)?;
        let hint = prefix_hint(&kept, &model);
        let staged = ctx.out.join("model.safetensors");
        let tensors: std::collections::HashMap<String, Tensor> = kept.iter().cloned().collect();
        candle_core::safetensors::save(&tensors, &staged)
            .map_err(|e| stage_err(ctx.stage, format!("{}: {e}", staged.display())))?;
        model.params.load(&staged).map_err(|e| {
            stage_err(
                ctx.stage,
                format!("{file} does not hold a {}: {e}{hint}", self.model),
            )
        })?;
        // Rewritten from the model, so the entry holds samlab's own form.
        model.params.save(&staged)?;
        let mut summary = Summary::new();
        let params: usize = model.params.all().values().map(|v| v.elem_count()).sum();
        summary.insert("params".into(), params as f64);
        summary.insert("tensors".into(), kept.len() as f64);
        summary.insert("left_out".into(), left_out as f64);
        Ok((summary, Outcome::default()))
    }
}

/// A hint where every name of the file starts with one component the
/// model's names lack (`module.` of a `DataParallel` wrapper).
fn prefix_hint(kept: &[(String, Tensor)], model: &Model) -> String {
    let Some(first) = kept.first().and_then(|(n, _)| n.split_once('.')) else {
        return String::new();
    };
    let prefix = format!("{}.", first.0);
    let all_have = kept.iter().all(|(n, _)| n.starts_with(&prefix));
    let model_has = model.params.all().keys().any(|n| n.starts_with(&prefix));
    if all_have && !model_has {
        format!(" (every name in the file starts with `{prefix}`: add `strip_prefix: \"{prefix}\"`)")
    } else {
        String::new()
    }
}
