//! The plan: every stage's key document and key (built by [`crate::key`]),
//! what the cache already holds of it, where a training run can start (its
//! rolling checkpoint, or a prefix another run of the study will have
//! computed by then), and what is left to do. `runner plan --why` adds, for
//! every stage to run, the nearest cached entry of its kind and what differs.

use std::collections::HashSet;

use serde_json::Value;

use crate::cache::{Cache, Lookup, ResumeFrom, Verify, resume_point};
use crate::error::Result;
use crate::key::{Change, KeyDoc, PrefixPlan};
use crate::stages::{DataShape, PlanInput};
use crate::study::Study;

/// What the plan needs to know of the dataset.
#[derive(Clone, Debug)]
pub struct DataInfo {
    pub fingerprint: String,
    pub train_len: usize,
    pub test_len: usize,
}

impl DataInfo {
    pub fn of(ds: &samlab_data::Dataset) -> DataInfo {
        DataInfo {
            fingerprint: ds.fingerprint.to_hex(),
            train_len: ds.train.len(),
            test_len: ds.test.len(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    /// A valid entry exists.
    Cached,
    /// An earlier stage of this plan has the same key.
    Duplicate(usize),
    /// An entry exists but does not match its manifest: recomputed.
    Damaged(String),
    /// Training can start after `epoch` epochs (and `step` steps of the
    /// next), from a rolling checkpoint or a shared prefix.
    Resume {
        epoch: u64,
        step: u64,
        from: ResumeFrom,
    },
    ToRun,
    /// The dataset is not available here, so keys cannot be computed.
    Unknown,
}

impl Status {
    pub fn describe(&self) -> String {
        match self {
            Status::Cached => "cached".into(),
            Status::Duplicate(_) => "same as an earlier stage".into(),
            Status::Damaged(why) => format!("damaged, to rerun ({why})"),
            Status::Resume {
                epoch,
                step: 0,
                from,
            } => format!("partially cached: from epoch {epoch} ({})", from.as_str()),
            Status::Resume { epoch, step, from } => format!(
                "partially cached: from step {step} of epoch {} ({})",
                epoch + 1,
                from.as_str()
            ),
            Status::ToRun => "to run".into(),
            Status::Unknown => "to run (dataset not available here: cache state unknown)".into(),
        }
    }

    /// Whether the stage has work left.
    pub fn to_compute(&self) -> bool {
        !matches!(self, Status::Cached | Status::Duplicate(_))
    }
}

#[derive(Clone, Debug)]
pub struct Planned {
    /// The key document (`None` when the dataset is unavailable): what the
    /// key hashes, and what the entry's `spec.json` records.
    pub doc: Option<Value>,
    /// The stage's key (`None` when the dataset is unavailable).
    pub key: Option<String>,
    pub status: Status,
    /// SGD-step equivalents left to run (evaluation counts a forward pass
    /// as a third of a step).
    pub cost: f64,
    /// A training run's prefix keys and steps.
    pub prefix: Option<PrefixPlan>,
}

/// Plans `study`; without `data` (dataset not available) keys and cache
/// states are unknown and costs assume the official split sizes.
pub fn plan(study: &Study, data: Option<&DataInfo>, cache: Option<&Cache>) -> Result<Vec<Planned>> {
    let shape = DataShape {
        train_len: data.map_or(50_000, |d| d.train_len),
        test_len: data.map_or(10_000, |d| d.test_len),
    };
    let mut out: Vec<Planned> = Vec::new();
    let mut full_costs = Vec::new();
    // Key documents, keys and prefix plans.
    for stage in &study.stages {
        let deps: Vec<(&'static str, String)> = stage
            .deps
            .iter()
            .filter_map(|(role, i)| Some((*role, out[*i].key.clone()?)))
            .collect();
        let input = PlanInput {
            data: shape,
            deps: &deps,
            fingerprint: data.map_or("", |d| &d.fingerprint),
        };
        let kp = stage
            .spec
            .plan(&input)
            .map_err(|m| study.stage_error(stage, m))?;
        let doc = data.filter(|_| deps.len() == stage.deps.len()).map(|d| {
            KeyDoc {
                kind: stage.spec.kind(),
                spec: kp.key_spec.clone(),
                deps: deps.clone(),
                dataset: study.dataset.as_str(),
                fingerprint: &d.fingerprint,
            }
            .document()
        });
        full_costs.push(kp.cost);
        out.push(Planned {
            key: doc.as_ref().map(crate::key::key_of),
            doc,
            status: Status::ToRun,
            cost: 0.0,
            prefix: kp.prefix,
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
                    if k > 0 && k <= pi.epochs() && !keep.contains(&k) {
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
        let full_cost = full_costs[i];
        let Some(key) = out[i].key.clone() else {
            out[i].status = Status::Unknown;
            out[i].cost = full_cost;
            continue;
        };
        if let Some(j) = (0..i).find(|&j| out[j].key.as_deref() == Some(&key)) {
            out[i].status = Status::Duplicate(j);
            continue;
        }
        let found = cache.map_or(Lookup::Missing, |c| {
            c.check_with(&c.entry_dir(&key), Verify::Memo)
        });
        let (status, cost) = match found {
            Lookup::Valid(..) => (Status::Cached, 0.0),
            found => {
                let damaged = match found {
                    Lookup::Damaged(_, why) => Some(why),
                    _ => None,
                };
                let mut status = damaged.clone().map_or(Status::ToRun, Status::Damaged);
                let mut cost = full_cost;
                if let Some(p) = &out[i].prefix {
                    let coming = |pk: &str| will_exist.contains(pk);
                    let start =
                        resume_point(cache, &key, Some(p), p.epochs(), Verify::Memo, &coming).point;
                    if let Some(start) = start {
                        if damaged.is_none() {
                            status = Status::Resume {
                                epoch: start.epoch,
                                step: start.step,
                                from: start.from,
                            };
                        }
                        cost = p.cost_from_step(start.epoch * p.spe + start.step);
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

/// Why a stage is not cached: the nearest cached entry of its kind and
/// the fields of the key document that differ (none cached: `nearest` is
/// `None`).
#[derive(Clone, Debug)]
pub struct Why {
    pub index: usize,
    /// The nearest entry's key and the changes from it to this stage.
    pub nearest: Option<(String, Vec<Change>)>,
}

/// For every stage of `planned` with work left, [`Why`] it is not cached:
/// compared with every cached entry of the same kind (their `spec.json`),
/// the one with the fewest differing fields. Like cargo's "dirty because".
pub fn why(planned: &[Planned], cache: &Cache) -> Vec<Why> {
    let docs = cache.documents();
    planned
        .iter()
        .enumerate()
        .filter(|(_, p)| p.status.to_compute())
        .filter_map(|(index, p)| {
            let doc = p.doc.as_ref()?;
            let nearest = docs
                .iter()
                .filter(|(_, d)| d.get("kind") == doc.get("kind"))
                .map(|(k, d)| (k.clone(), crate::key::diff(d, doc)))
                .filter(|(_, c)| !c.is_empty())
                .min_by_key(|(k, c)| (c.len(), k.clone()));
            Some(Why { index, nearest })
        })
        .collect()
}
