//! The plan: every stage's key, what the cache already holds of it, where
//! a training run can start (its rolling checkpoint, or a prefix another
//! run of the study will have computed by then), and what is left to do.

use std::collections::HashSet;

use samlab_optim::Method;

use crate::cache::{Cache, Lookup};
use crate::error::Result;
use crate::key::KeyDoc;
use crate::stages::train::PrefixPlan;
use crate::stages::{StageSpec, Subset};
use crate::study::Study;

/// What the plan needs to know of the dataset.
#[derive(Clone, Debug)]
pub struct DataInfo {
    pub fingerprint: String,
    pub train_len: usize,
    pub test_len: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    /// A valid entry exists.
    Cached,
    /// An earlier stage of this plan has the same key.
    Duplicate(usize),
    /// An entry exists but does not match its manifest: recomputed.
    Damaged(String),
    /// Training can start after `epoch` epochs, from a rolling checkpoint
    /// (`partial`) or a shared prefix (`prefix`).
    Resume {
        epoch: u64,
        from: &'static str,
    },
    ToRun,
    /// The dataset is not available here, so keys cannot be computed.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Planned {
    /// The stage's key (`None` when the dataset is unavailable).
    pub key: Option<String>,
    pub status: Status,
    /// SGD-step equivalents left to run (an Evaluate stage counts one per
    /// three batches of its size: a forward pass is about a third of a step).
    pub cost: u64,
    pub prefix: Option<PrefixPlan>,
    /// Steps per epoch (training).
    pub spe: u64,
}

/// Plans `study`; without `data` (dataset not available) keys and cache
/// states are unknown and costs assume the official split sizes.
pub fn plan(study: &Study, data: Option<&DataInfo>, cache: Option<&Cache>) -> Result<Vec<Planned>> {
    let (train_len, test_len) = data.map_or((50_000, 10_000), |d| (d.train_len, d.test_len));
    let mut out: Vec<Planned> = Vec::new();
    // Keys and prefix plans.
    for stage in &study.stages {
        let deps: Vec<(&str, String)> = stage
            .deps
            .iter()
            .filter_map(|(role, i)| Some((*role, out[*i].key.clone()?)))
            .collect();
        let err = |m: String| -> crate::Error {
            crate::error::ErrorKind::Study {
                file: study.file.display().to_string(),
                line: stage.line,
                message: format!("stage {}: {m}", stage.display()),
            }
            .into()
        };
        let (spec_json, prefix, spe) = match &stage.spec {
            StageSpec::Train(t) => {
                let spe = t.steps_per_epoch(train_len);
                if spe == 0 {
                    return Err(err(format!(
                        "{} training images make no full batch of {}",
                        t.train_subset.count(train_len, t.classes),
                        t.batch
                    )));
                }
                let resolved = t.resolved(spe).map_err(err)?;
                let identity = t.prefix_identity(spe, &deps, data.map_or("", |d| &d.fingerprint));
                (
                    t.key_spec(spe).map_err(err)?,
                    Some(PrefixPlan::new(identity, &resolved, t.epochs, spe)),
                    spe,
                )
            }
            other => (other.plain_key_spec(), None, 0),
        };
        let key = data.filter(|_| deps.len() == stage.deps.len()).map(|d| {
            KeyDoc {
                kind: stage.spec.kind(),
                spec: spec_json,
                deps: deps.clone(),
                dataset: study.dataset.as_str(),
                fingerprint: &d.fingerprint,
            }
            .key()
        });
        out.push(Planned {
            key,
            status: Status::ToRun,
            cost: 0,
            prefix,
            spe,
        });
    }
    // Branch points: keep a checkpoint where two runs part.
    for i in 0..out.len() {
        let mut keep = Vec::new();
        if let Some(pi) = &out[i].prefix {
            for (j, other) in out.iter().enumerate() {
                if i == j || other.key == out[i].key {
                    continue;
                }
                if let Some(pj) = &other.prefix {
                    let k = pi.shared_epochs(pj);
                    let own = (pi.methods.len() as u64) / pi.spe;
                    if k > 0 && k <= own && !keep.contains(&k) {
                        keep.push(k);
                    }
                }
            }
        }
        keep.sort();
        if let Some(p) = &mut out[i].prefix {
            p.keep = keep;
        }
    }
    // Cache states, simulating the run in order.
    let mut will_exist: HashSet<String> = HashSet::new();
    for i in 0..out.len() {
        let stage = &study.stages[i];
        let full_cost = match &stage.spec {
            StageSpec::Train(t) => {
                let spe = out[i].spe;
                t.resolved(spe)
                    .expect("checked above")
                    .cost(0, t.epochs * spe)
            }
            StageSpec::Evaluate(e) => e.cost(train_len, test_len),
            StageSpec::Escape(e) => e.cost(),
            StageSpec::Interpolate(e) => e.cost(train_len, test_len),
            StageSpec::Distance(_) => 1,
        };
        let Some(key) = out[i].key.clone() else {
            out[i].status = Status::Unknown;
            out[i].cost = full_cost;
            continue;
        };
        if let Some(j) = (0..i).find(|&j| out[j].key.as_deref() == Some(&key)) {
            out[i].status = Status::Duplicate(j);
            continue;
        }
        let found = cache.map_or(Lookup::Missing, |c| c.check(&c.entry_dir(&key)));
        let (status, cost) = match found {
            Lookup::Valid(..) => (Status::Cached, 0),
            found => {
                let damaged = match found {
                    Lookup::Damaged(_, why) => Some(why),
                    _ => None,
                };
                let mut status = damaged.clone().map_or(Status::ToRun, Status::Damaged);
                let mut cost = full_cost;
                if let (StageSpec::Train(t), Some(p)) = (&stage.spec, &out[i].prefix) {
                    let resolved = t.resolved(p.spe).expect("checked above");
                    let total = t.epochs * p.spe;
                    let mut best: Option<(u64, &'static str)> = None;
                    if let Some(cache) = cache
                        && let Some((e, dir)) = cache
                            .partials(&key)
                            .into_iter()
                            .rev()
                            .find(|(e, _)| *e < t.epochs)
                        && matches!(cache.check(&dir), Lookup::Valid(..))
                    {
                        best = Some((e, "partial"));
                    }
                    let from = best.map_or(0, |b| b.0);
                    for k in (from + 1..t.epochs).rev() {
                        let pk = &p.keys[k as usize];
                        let in_cache = cache.is_some_and(|c| {
                            c.prefix_dir(pk).join(crate::cache::MANIFEST).exists()
                        });
                        if will_exist.contains(pk) || in_cache {
                            best = Some((k, "prefix"));
                            break;
                        }
                    }
                    if let Some((epoch, from)) = best {
                        if damaged.is_none() {
                            status = Status::Resume { epoch, from };
                        }
                        cost = resolved.cost(epoch * p.spe, total);
                    }
                }
                (status, cost)
            }
        };
        out[i].status = status;
        out[i].cost = cost;
        if let Some(p) = &out[i].prefix {
            for k in &p.keep {
                will_exist.insert(p.keys[*k as usize].clone());
            }
        }
    }
    Ok(out)
}

/// SAM steps of a training stage over the whole run (for display).
pub fn sam_steps(spec: &crate::stages::train::TrainSpec, spe: u64) -> u64 {
    spec.resolved(spe)
        .map(|r| r.count(Method::Sam, 0, spec.epochs * spe))
        .unwrap_or(0)
}

/// Human-readable subset.
pub fn show_subset(s: Subset) -> String {
    match s {
        Subset::All => "all".into(),
        Subset::PerClass(n) => format!("{n}/class"),
        Subset::Off => "off".into(),
    }
}
