//! Content keys of stages and of shared training prefixes.
//!
//! A stage's key is the SHA-256 of one canonical JSON document (object keys
//! sorted, numbers in shortest round-trip form):
//!
//! | goes into the key | left out on purpose |
//! |---|---|
//! | the stage kind (`train`, `evaluate`) | the stage's name and grid labels in the study |
//! | its fully resolved spec, defaults filled in (model by canonical name) | the study file's name, path and other stages |
//! | the SGD/SAM schedule resolved to steps (`Switch at Fraction(0.75)` and `at Epoch(150)` of 200 agree) | SAM settings of a run that never takes a SAM step |
//! | the keys of the stages it depends on (`from`, `of`), by role | absolute paths, mtimes, host names, user names |
//! | the dataset's name and content fingerprint (decoded pixels and labels, not the file it came from) | where the dataset was read from (official archive, folder, JPEG tree: only content counts) |
//! | [`SEMANTICS`], bumped by hand whenever training or evaluation semantics change | the device (a checkpoint trained on CUDA is reused on the CPU; the entry records where it was computed), thread counts, progress settings |
//! | an Import stage's file by the SHA-256 of its content | the file's path and name (a moved checkpoint keeps its key) |
//! | fields added later, when set away from their default (`bn_batch`, Escape's `measure`, `precision: Bf16`, `ghost: Batched`) | the same fields at their default (unset `bn_batch`, `measure: Probe`, `precision: F32`, `ghost: Sequential`), so caches from before they existed stay valid |
//!
//! The key document is built once, here, when the study is planned; the
//! plan keeps it, and the cache entry records it as `spec.json`, so
//! `runner plan --why` can say which fields made a key miss ([`diff`]).
//!
//! A shared prefix (the first `k` epochs of a Train stage) has its own key:
//! the stage's spec without `epochs` (kept when the learning rate depends on
//! the run's length, as the cosine schedule does), without the SGD/SAM
//! schedule and without the final evaluation, plus `k` and a digest of the
//! method of every step before epoch `k`, and a fork's `reshuffle` (epoch,
//! seed) from its epoch on. Two runs share a prefix key exactly when they
//! would compute the same first `k` epochs.
//!
//! This module knows no stage kind: each kind gives its key spec
//! (`Kind::plan`; Train's is `TrainSpec::key_spec` with [`schedule_json`])
//! and, for training, its [`PrefixParts`]; the documents, their canonical
//! form, the hashes and [`diff`] are made here.

use std::collections::BTreeMap;

use samlab_optim::{Method, Resolved};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The version of the training and evaluation semantics. Bump it when a
/// change to the code changes what a stage computes; every key changes.
/// The test `pinned::known_keys_do_not_change` fails until the pin is
/// renewed, so no key changes by accident.
pub const SEMANTICS: u32 = 1;

/// Canonical JSON: object keys sorted at every level.
pub fn canonical(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    write(&m[*k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    write(v, &mut s);
    s
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What identifies a stage's computation, before hashing.
pub struct KeyDoc<'a> {
    pub kind: &'a str,
    pub spec: Value,
    pub deps: Vec<(&'a str, String)>,
    pub dataset: &'a str,
    pub fingerprint: &'a str,
}

impl KeyDoc<'_> {
    /// The key document: what `spec.json` records.
    pub fn document(&self) -> Value {
        let deps: serde_json::Map<String, Value> = self
            .deps
            .iter()
            .map(|(role, key)| (role.to_string(), Value::String(key.clone())))
            .collect();
        serde_json::json!({
            "semantics": SEMANTICS,
            "kind": self.kind,
            "spec": self.spec,
            "deps": deps,
            "dataset": { "name": self.dataset, "fingerprint": self.fingerprint },
        })
    }

    pub fn key(&self) -> String {
        key_of(&self.document())
    }
}

/// The key of a key document.
pub fn key_of(document: &Value) -> String {
    sha256_hex(canonical(document).as_bytes())
}

/// An SGD/SAM schedule resolved to steps, as key documents hold it: the
/// same steps give the same value however the study wrote them (a switch at
/// step 0 is `Always`, PSAM of period 1 is `Always(Sam)`).
pub fn schedule_json(r: &Resolved, total: u64) -> Value {
    use serde_json::json;
    // A step kind by the name a study writes (`Sgd`, `Sam`).
    let name = |m: Method| serde_json::to_value(m).expect("methods serialise");
    match *r {
        Resolved::Always(m) => json!({"Always": name(m)}),
        Resolved::Switch { from, to, at } if at == 0 || from == to => json!({"Always": name(to)}),
        Resolved::Switch { from, at, .. } if at >= total => json!({"Always": name(from)}),
        Resolved::Switch { from, to, at } => {
            json!({"Switch": {"from": name(from), "to": name(to), "at": at}})
        }
        Resolved::Psam {
            period: 1, with, ..
        }
        | Resolved::Psam { until: 0, with, .. } => {
            json!({"Always": name(with)})
        }
        Resolved::Psam {
            with: Method::Sgd, ..
        } => json!({"Always": "Sgd"}),
        Resolved::Psam {
            period,
            until,
            with,
        } => {
            let mut p = json!({"period": period, "until": until.min(total)});
            // Left out at its default (keys from before it existed hold).
            if with != Method::Sam {
                p["with"] = name(with);
            }
            json!({ "Psam": p })
        }
    }
}

/// What a training run's prefixes share, as a training kind gives it: the
/// part of its spec that the first `k` epochs depend on (`spec`, without
/// the schedule, the SAM settings and what only the end reads), the SAM
/// settings (`sam`), which count from the first step of a kind that uses
/// them, and each step kind's own settings (`kinds`), which count from its
/// first step.
pub struct PrefixParts {
    pub spec: Value,
    pub sam: Value,
    /// The kinds whose own settings are not all at their defaults.
    pub kinds: BTreeMap<Method, Value>,
    /// Planned cost of one step of each kind, by [`Method::index`].
    pub costs: Vec<f64>,
    /// The schedule resolved to steps: the method of every step.
    pub schedule: Resolved,
    /// A fork's (epoch, seed): the data order from that epoch on.
    pub reshuffle: Option<samlab_data::Reshuffle>,
    pub epochs: u64,
    /// Steps per epoch.
    pub spe: u64,
}

/// Prefix keys of one training run, and where it keeps prefix checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefixPlan {
    /// `keys[k]`: the key of the first `k` epochs (index 0 unused).
    pub keys: Vec<String>,
    /// Epochs after which to keep a shared-prefix checkpoint (set by the plan).
    pub keep: Vec<u64>,
    pub identity: String,
    /// The SAM settings, which count from the first step that uses them.
    pub sam: String,
    /// Step kinds' own settings (canonical), from each kind's first step.
    pub kinds: BTreeMap<Method, String>,
    /// Planned cost of one step of each kind, by [`Method::index`].
    pub costs: Vec<f64>,
    /// The schedule resolved to steps, as planned: the run trains by it
    /// (`RunCtx::prefix`), so plan and run cannot disagree.
    pub schedule: Resolved,
    /// A fork's (epoch, seed), which counts from its epoch.
    pub reshuffle: Option<samlab_data::Reshuffle>,
    /// Steps per epoch.
    pub spe: u64,
}

impl PrefixPlan {
    /// The prefix keys of a training run made of `parts`, after the stages
    /// it depends on (`deps`: role, key) on the dataset `dataset_fp`.
    pub fn new(parts: PrefixParts, deps: &[(&str, String)], dataset_fp: &str) -> PrefixPlan {
        let PrefixParts {
            spec,
            sam,
            kinds,
            costs,
            schedule,
            reshuffle,
            epochs,
            spe,
        } = parts;
        let deps: serde_json::Map<String, Value> = deps
            .iter()
            .map(|(r, k)| (r.to_string(), k.clone().into()))
            .collect();
        let identity = canonical(&serde_json::json!({
            "semantics": SEMANTICS,
            "spec": spec,
            "deps": deps,
            "spe": spe,
            "dataset": dataset_fp,
        }));
        let sam = canonical(&sam);
        let kinds: BTreeMap<Method, String> =
            kinds.iter().map(|(m, v)| (*m, canonical(v))).collect();
        let mut h = Sha256::new();
        h.update(identity.as_bytes());
        let mut keys = vec![String::new()];
        // The SAM settings count from the first step of a kind that uses
        // them, a kind's own settings from its first step; each step adds
        // its kind's index (SGD 0, SAM 1).
        let mut sam_seen = false;
        let mut seen = vec![false; Method::ALL.len()];
        for k in 1..=epochs {
            // A fork's seed counts from the first epoch it draws.
            if let Some(r) = reshuffle.filter(|r| r.epoch == k - 1) {
                h.update(format!(":reshuffle={},{}", r.epoch, r.seed).as_bytes());
            }
            for s in (k - 1) * spe..k * spe {
                let m = schedule.method(s);
                if m.uses_sam() && !sam_seen {
                    sam_seen = true;
                    h.update(b":sam=");
                    h.update(sam.as_bytes());
                }
                if !seen[m.index()] {
                    seen[m.index()] = true;
                    if let Some(own) = kinds.get(&m) {
                        h.update(format!(":kind.{}=", m.field()).as_bytes());
                        h.update(own.as_bytes());
                    }
                }
                h.update([m.index() as u8]);
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
            kinds,
            costs,
            schedule,
            reshuffle,
            spe,
        }
    }

    /// Epochs of the run.
    pub fn epochs(&self) -> u64 {
        (self.keys.len() as u64).saturating_sub(1)
    }

    /// The cost of the run from the start of epoch `from` to its end, in
    /// SGD-step equivalents.
    pub fn cost_from(&self, from: u64) -> f64 {
        self.cost_from_step(from * self.spe)
    }

    /// Steps of the run.
    pub fn steps(&self) -> u64 {
        self.epochs() * self.spe
    }

    /// The cost of the run from step `step` (of the whole run) to its end:
    /// each kind's steps there, counted in closed form, at its cost.
    pub fn cost_from_step(&self, step: u64) -> f64 {
        let (start, end) = (step.min(self.steps()), self.steps());
        Method::ALL
            .iter()
            .map(|m| self.schedule.count(*m, start, end) as f64 * self.costs[m.index()])
            .sum()
    }

    /// The epoch up to which two runs compute the same thing (0: none).
    pub fn shared_epochs(&self, other: &PrefixPlan) -> u64 {
        if self.identity != other.identity || self.spe != other.spe || self.spe == 0 {
            return 0;
        }
        let (a, b) = (&self.schedule, &other.schedule);
        let n = self.steps().min(other.steps());
        let mut d = (0..n).find(|&i| a.method(i) != b.method(i)).unwrap_or(n);
        if self.sam != other.sam {
            // Same methods up to d: the first step that uses the SAM
            // settings (where they start to count) ends the sharing.
            d = (0..d).find(|&i| a.method(i).uses_sam()).unwrap_or(d);
        }
        for m in Method::ALL {
            if self.kinds.get(m) != other.kinds.get(m) {
                d = (0..d).find(|&i| a.method(i) == *m).unwrap_or(d);
            }
        }
        if self.reshuffle != other.reshuffle {
            // The data order differs from the earlier fork's epoch on.
            let at = |r: Option<samlab_data::Reshuffle>| r.map_or(u64::MAX, |r| r.epoch);
            let e = at(self.reshuffle).min(at(other.reshuffle));
            d = d.min(e.saturating_mul(self.spe));
        }
        d / self.spe
    }
}

/// One field in which two key documents differ: its path (`spec.sam.rho`)
/// and the two values (`None`: absent).
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// The fields in which key document `new` differs from `old`, leaf by leaf,
/// in path order.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Change>) {
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
                names.sort();
                names.dedup();
                for n in names {
                    let p = if path.is_empty() {
                        n.clone()
                    } else {
                        format!("{path}.{n}")
                    };
                    walk(&p, x.get(n), y.get(n), out);
                }
            }
            (a, b) if a == b => {}
            (a, b) => out.push(Change {
                path: path.to_string(),
                old: a.cloned(),
                new: b.cloned(),
            }),
        }
    }
    let mut out = Vec::new();
    walk("", Some(old), Some(new), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        let a = serde_json::json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": 0.5}});
        assert_eq!(
            canonical(&a),
            r#"{"a":{"c":0.5,"d":[1,{"y":1,"z":0}]},"b":1}"#
        );
    }

    #[test]
    fn keys_depend_on_fingerprint_and_deps_not_their_order_of_insertion() {
        let doc = |fp: &'static str, deps: Vec<(&'static str, String)>| KeyDoc {
            kind: "train",
            spec: serde_json::json!({"x": 1}),
            deps,
            dataset: "cifar10",
            fingerprint: fp,
        };
        let a = doc("aa", vec![("from", "k1".into()), ("of", "k2".into())]).key();
        let b = doc("aa", vec![("of", "k2".into()), ("from", "k1".into())]).key();
        assert_eq!(a, b);
        assert_ne!(
            a,
            doc("ab", vec![("from", "k1".into()), ("of", "k2".into())]).key()
        );
        assert_ne!(
            a,
            doc("aa", vec![("from", "k3".into()), ("of", "k2".into())]).key()
        );
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn diff_names_every_changed_leaf_by_path() {
        let old = serde_json::json!({"kind": "train", "spec": {"sam": {"rho": 0.05, "chunk": null}, "seed": 0}, "deps": {}});
        let new = serde_json::json!({"kind": "train", "spec": {"sam": {"rho": 0.1, "chunk": null}, "seed": 0, "x": 1}, "deps": {"from": "k"}});
        let d = diff(&old, &new);
        let paths: Vec<&str> = d.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["deps.from", "spec.sam.rho", "spec.x"]);
        assert_eq!(d[1].old, Some(serde_json::json!(0.05)));
        assert_eq!(d[1].new, Some(serde_json::json!(0.1)));
        assert_eq!((d[0].old.clone(), d[2].old.clone()), (None, None));
        assert!(diff(&old, &old).is_empty());
    }
}

/// Keys of fixed studies, pinned: a change here invalidates every cache, so
/// it must come with a [`SEMANTICS`] bump (and a new pin) on purpose.
#[cfg(test)]
mod pinned {
    use super::SEMANTICS;
    use crate::plan::{DataInfo, plan};

    const STUDY: &str = r#"Study(
        version: 1,
        dataset: "cifar10",
        blocks: {
            "recipe": Train(model: "resnet8", train_subset: PerClass(30), batch: 50,
                epochs: 4, lr: Cosine(lr: 0.1), sam: (rho: 0.05)),
        },
        stages: {
            "sgd": Train(extends: "recipe"),
            "sgd-sam": Train(extends: "recipe", method: Switch(from: Sgd, to: Sam, at: Fraction(0.5)),
                sam: (rho: 0.1, chunk: 25)),
            "psam": Train(extends: "recipe", method: Psam(period: 3, until: Epoch(3)),
                optimizer: (weight_decay: 0.001)),
            "const": Train(extends: "recipe", lr: Constant(lr: 0.05), test_subset: Off, augment: false),
            "eval": Evaluate(of: "sgd", splits: [Test], test_subset: PerClass(10)),
            "escape": Escape(of: "sgd", method: Sam, lr: 0.03, batch: 50, probe: 100, max_steps: 20,
                grid: {"rho": [0.2]}),
            "escape-sgd": Escape(of: "sgd", method: Sgd, lr: 0.03, batch: 50, probe: 100, max_steps: 20),
            "line": Interpolate(w1: "sgd", w2: "sgd-sam", bn: Recomputed(batches: 2),
                alpha: (start: 0.0, end: 1.0, points: 3)),
            "dist": Distance(w1: "sgd", w2: "psam"),
            "sharp": Sharpness(of: "sgd", images: 40, batch: 20, eigen: (k: 2, steps: 8),
                trace: (samples: 4), rho: 0.05, ascent: 2),
            "plane": Landscape(of: "sgd", sharpness: "sharp", x: Eigenvector(1), y: Random,
                images: 40, batch: 20, range: (start: -0.5, end: 0.5, points: 3)),
            "torch": Import(model: "resnet8",
                file: "../tests/reference/import/resnet8-torch.safetensors"),
            "torch-eval": Evaluate(of: "torch", splits: [Test], test_subset: PerClass(10)),
        },
    )"#;

    /// `STUDY` with `extra` stages before its `dist`, planned on a
    /// 50,000-image dataset: each stage's plan by its display name.
    fn planned_with(extra: &str, file: &str) -> impl Fn(&str) -> crate::plan::Planned {
        let text = STUDY.replace(
            r#""dist": Distance"#,
            &format!("{extra}\n            \"dist\": Distance"),
        );
        let study = crate::study::parse(&text, std::path::Path::new(file)).unwrap();
        let info = DataInfo {
            fingerprint: "f".repeat(64),
            train_len: 50_000,
            test_len: 10_000,
        };
        let planned = plan(&study, Some(&info), None).unwrap();
        move |n: &str| {
            let i = study.stages.iter().position(|s| s.display() == n).unwrap();
            planned[i].clone()
        }
    }

    fn keys() -> Vec<(String, String, Vec<String>)> {
        let study = crate::study::parse(STUDY, std::path::Path::new("pinned.ron")).unwrap();
        let info = DataInfo {
            fingerprint: "f".repeat(64),
            train_len: 50_000,
            test_len: 10_000,
        };
        let planned = plan(&study, Some(&info), None).unwrap();
        study
            .stages
            .iter()
            .zip(planned)
            .map(|(s, p)| {
                let prefixes = p
                    .prefix
                    .map(|pp| {
                        pp.keys
                            .into_iter()
                            .skip(1)
                            .map(|k| k[..16].to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                (s.display(), p.key.unwrap()[..16].to_string(), prefixes)
            })
            .collect()
    }

    /// The first 16 hex digits of each stage key and of each prefix key
    /// (epochs 1..=4), computed by the code before the key documents moved
    /// into this module (the move changed no key); Sharpness and Landscape,
    /// and Import (its key holds the committed PyTorch checkpoint's SHA-256),
    /// pinned later, by the code of the commit that pinned them.
    const PINNED: &[(&str, &str, &[&str])] = &[
        (
            "sgd",
            "0d32b179bc8490a5",
            &[
                "26643bf8274d2373",
                "cc8a4a66f67ad34a",
                "7083e9881f8ba638",
                "4c622a24cb5ac566",
            ],
        ),
        (
            "sgd-sam",
            "1ee25107833f1021",
            &[
                "26643bf8274d2373",
                "cc8a4a66f67ad34a",
                "99cc746e81643138",
                "026c5955252471f7",
            ],
        ),
        (
            "psam",
            "5b50c1fb66ad0ccc",
            &[
                "bde679e9612b74fc",
                "2853600fcbd47fb9",
                "4909f1317189259c",
                "00252a1d936fac96",
            ],
        ),
        (
            "const",
            "6fff2f89c477132a",
            &[
                "9f4c2e3a4814e211",
                "e2875ce66b010bf7",
                "b6c61aecb3a4bb8d",
                "713aabe4f8773878",
            ],
        ),
        ("eval", "768782ed92299e26", &[]),
        ("escape[rho=0.2]", "8084aa269959c89e", &[]),
        ("escape-sgd", "7788c49d3111c1da", &[]),
        ("line", "570c5ba7d3ecc2b8", &[]),
        ("dist", "c54588749b508f62", &[]),
        ("sharp", "4fa0a1884c3da5ea", &[]),
        ("plane", "030271ed3e795ea6", &[]),
        ("torch", "790a5b29952062db", &[]),
        ("torch-eval", "7a320955e3eb8ade", &[]),
    ];

    /// Every kind in the registry has a stage among the pinned ones: a new
    /// kind fails this until its keys are pinned too.
    #[test]
    fn every_kind_has_pinned_keys() {
        let study = crate::study::parse(STUDY, std::path::Path::new("pinned.ron")).unwrap();
        for kind in crate::stages::StageSpec::KINDS {
            assert!(
                study.stages.iter().any(|s| s.spec.kind() == *kind),
                "no pinned key of kind {kind}: add a stage of it to pinned::STUDY"
            );
        }
    }

    /// `precision: F32` written out keys as the default does; `Bf16`
    /// splits the stage key and every prefix key (a bf16 prefix is not an
    /// f32 one), in Train and in Escape.
    #[test]
    fn bf16_splits_keys_and_f32_written_out_does_not() {
        let get = planned_with(
            r#""sgd-f32": Train(extends: "recipe", precision: F32),
            "sgd-bf16": Train(extends: "recipe", precision: Bf16),
            "escape-bf16": Escape(of: "sgd", method: Sgd, lr: 0.03, batch: 50, probe: 100, max_steps: 20,
                precision: Bf16),"#,
            "bf16.ron",
        );
        let by_name = |n: &str| {
            let p = get(n);
            (
                p.key.clone().unwrap(),
                p.prefix.as_ref().map(|pp| pp.keys.clone()),
            )
        };
        let (sgd, f32, bf16) = (by_name("sgd"), by_name("sgd-f32"), by_name("sgd-bf16"));
        assert_eq!(sgd, f32);
        assert_ne!(sgd.0, bf16.0);
        let (a, b) = (sgd.1.unwrap(), bf16.1.unwrap());
        assert!(a.iter().zip(&b).skip(1).all(|(x, y)| x != y), "{a:?} {b:?}");
        assert_ne!(by_name("escape-sgd").0, by_name("escape-bf16").0);
    }

    /// `ghost: Sequential` written out keys as the default does; `Batched`
    /// splits the stage key and every prefix key (its f32 bits are not the
    /// sequential form's), in Train and in Escape.
    #[test]
    fn batched_ghost_batches_split_keys_and_sequential_written_out_does_not() {
        let get = planned_with(
            r#""ghost-seq": Train(extends: "recipe", bn_batch: 25, ghost: Sequential),
            "ghost-bn": Train(extends: "recipe", bn_batch: 25),
            "ghost-bat": Train(extends: "recipe", bn_batch: 25, ghost: Batched),
            "escape-seq": Escape(of: "sgd", method: Sgd, lr: 0.03, batch: 50, probe: 100, max_steps: 20,
                ghost: Sequential),
            "escape-bat": Escape(of: "sgd", method: Sgd, lr: 0.03, batch: 50, probe: 100, max_steps: 20,
                bn_batch: 25, ghost: Batched),
            "escape-bn": Escape(of: "sgd", method: Sgd, lr: 0.03, batch: 50, probe: 100, max_steps: 20,
                bn_batch: 25),"#,
            "ghost.ron",
        );
        let by_name = |n: &str| {
            let p = get(n);
            (
                p.key.clone().unwrap(),
                p.prefix.as_ref().map(|pp| pp.keys.clone()),
            )
        };
        let (seq, bn, bat) = (
            by_name("ghost-seq"),
            by_name("ghost-bn"),
            by_name("ghost-bat"),
        );
        assert_eq!(seq, bn);
        assert_ne!(bn.0, bat.0);
        let (a, b) = (bn.1.unwrap(), bat.1.unwrap());
        assert!(a.iter().zip(&b).skip(1).all(|(x, y)| x != y), "{a:?} {b:?}");
        assert_eq!(by_name("escape-sgd").0, by_name("escape-seq").0);
        assert_ne!(by_name("escape-bn").0, by_name("escape-bat").0);
    }

    /// A fork (`reshuffle`) keys apart from its run but shares the run's
    /// prefixes before its epoch: the SGD run's first 2 epochs, and 2 with
    /// a fork at epoch 3 (which shares 3 with the run); a switch and a
    /// fork at the same epoch share nothing after it.
    #[test]
    fn a_reshuffle_counts_in_prefixes_from_its_epoch() {
        let get = planned_with(
            r#""fork2": Train(extends: "recipe", reshuffle: (epoch: 2, seed: 7)),
            "fork3": Train(extends: "recipe", reshuffle: (epoch: 3, seed: 7)),
            "fork2b": Train(extends: "recipe", reshuffle: (epoch: 2, seed: 8)),
            "grid": Train(extends: "recipe", reshuffle: (epoch: 1, seed: 7), grid: {"reshuffle.epoch": [2]}),
            "sw2": Train(extends: "recipe", method: Switch(from: Sgd, to: Sam, at: Epoch(2))),"#,
            "fork.ron",
        );
        let key = |n: &str| get(n).key.unwrap();
        let pp = |n: &str| get(n).prefix.unwrap();
        assert_ne!(key("sgd"), key("fork2"));
        assert_ne!(key("fork2"), key("fork2b"));
        assert_eq!(key("grid[reshuffle.epoch=2]"), key("fork2"));
        let (sgd, f2, f3, f2b) = (pp("sgd"), pp("fork2"), pp("fork3"), pp("fork2b"));
        assert_eq!(f2.keys[..=2], sgd.keys[..=2]);
        assert_ne!(f2.keys[3], sgd.keys[3]);
        assert_eq!(f3.keys[..=3], sgd.keys[..=3]);
        assert_ne!(f2.keys[3], f2b.keys[3]);
        assert_eq!(sgd.shared_epochs(&f2), 2);
        assert_eq!(f2.shared_epochs(&f3), 2);
        assert_eq!(f3.shared_epochs(&sgd), 3);
        assert_eq!(f2.shared_epochs(&f2b), 2);
        assert_eq!(f2.shared_epochs(&f2), 4);
        let sw2 = pp("sw2");
        assert_eq!(f2.shared_epochs(&sw2), 2);
        assert_ne!(f2.keys[3], sw2.keys[3]);
        // The run's checkpoint where the forks part is kept.
        assert!(
            sgd.keep.contains(&2) && sgd.keep.contains(&3),
            "{:?}",
            sgd.keep
        );
    }

    /// A step kind's own settings enter a key only where the run uses the
    /// kind and only where they differ from its defaults; they count in
    /// prefix keys from the kind's first step (SGD epochs before a switch
    /// to LookSAM are shared whatever its k), and its planned cost follows
    /// them. PSAM `with: Sam` written out keys as the default does.
    /// A grid axis by path is the stage written out with that value, and
    /// the short names are aliases of the same paths: equal keys.
    #[test]
    fn grid_paths_are_the_stages_written_out() {
        let get = planned_with(
            r#""rho-path": Train(extends: "recipe", method: Always(Sam), grid: {"sam.rho": [0.2]}),
            "rho-alias": Train(extends: "recipe", method: Always(Sam), grid: {"rho": [0.2]}),
            "rho-set": Train(extends: "recipe", method: Always(Sam), sam: (rho: 0.2)),
            "wd-path": Train(extends: "recipe", grid: {"optimizer.weight_decay": [0.001]}),
            "wd-set": Train(extends: "recipe", optimizer: (weight_decay: 0.001)),
            "lr-path": Train(extends: "recipe", grid: {"lr.lr": [0.05]}),
            "lr-set": Train(extends: "recipe", lr: Cosine(lr: 0.05)),
            "at-path": Train(extends: "recipe", method: Switch(from: Sgd, to: Sam, at: Fraction(0.25)),
                grid: {"method.at": [0.5]}),
            "at-set": Train(extends: "recipe", method: Switch(from: Sgd, to: Sam, at: Fraction(0.5))),
            "esc-path": Escape(of: "sgd", method: Sam, lr: 0.03, batch: 50, probe: 100, max_steps: 20,
                grid: {"sam.chunk": [25]}),
            "esc-set": Escape(of: "sgd", method: Sam, lr: 0.03, batch: 50, probe: 100, max_steps: 20,
                sam: (chunk: 25)),"#,
            "paths.ron",
        );
        let key = |n: &str| get(n).key.unwrap();
        assert_eq!(key("rho-path[sam.rho=0.2]"), key("rho-set"));
        assert_eq!(key("rho-alias[rho=0.2]"), key("rho-set"));
        assert_eq!(key("wd-path[optimizer.weight_decay=0.001]"), key("wd-set"));
        assert_eq!(key("lr-path[lr.lr=0.05]"), key("lr-set"));
        assert_eq!(key("at-path[method.at=0.5]"), key("at-set"));
        assert_eq!(key("esc-path[sam.chunk=25]"), key("esc-set"));
        assert_ne!(key("rho-set"), key("sgd"));
    }

    #[test]
    fn step_kind_settings_enter_keys_where_the_kind_runs() {
        let get = planned_with(
            r#""look": Train(extends: "recipe", method: Always(LookSam)),
            "look-k5": Train(extends: "recipe", method: Always(LookSam), kinds: (look_sam: (k: 5))),
            "look-k3": Train(extends: "recipe", method: Always(LookSam), kinds: (look_sam: (k: 3))),
            "sgd-k3": Train(extends: "recipe", kinds: (look_sam: (k: 3))),
            "grid": Train(extends: "recipe", method: Always(LookSam),
                grid: {"kinds.look_sam.k": [3, 5]}),
            "sam-k3": Train(extends: "recipe", method: Always(Sam), kinds: (look_sam: (k: 3))),
            "sam": Train(extends: "recipe", method: Always(Sam)),
            "sam-all": Train(extends: "recipe", method: Always(Sam), sam: (scope: All, rho_schedule: Constant)),
            "sam-on": Train(extends: "recipe", method: Always(Sam), sam: (scope: Norm)),
            "sam-cos": Train(extends: "recipe", method: Always(Sam), sam: (rho_schedule: Cosine(to: 0.01))),
            "sw-k3": Train(extends: "recipe", method: Switch(from: Sgd, to: LookSam, at: Epoch(2)),
                kinds: (look_sam: (k: 3))),
            "sw-k2": Train(extends: "recipe", method: Switch(from: Sgd, to: LookSam, at: Epoch(2)),
                kinds: (look_sam: (k: 2, alpha: 0.5))),
            "psam-sam": Train(extends: "recipe", method: Psam(period: 3, until: Epoch(3), with: Sam),
                optimizer: (weight_decay: 0.001)),
            "psam-look": Train(extends: "recipe", method: Psam(period: 3, until: Epoch(3), with: LookSam),
                optimizer: (weight_decay: 0.001)),
            "escape-look": Escape(of: "sgd", method: LookSam, lr: 0.03, batch: 50, probe: 100, max_steps: 20,
                kinds: (look_sam: (k: 2))),
            "escape-sgd-k2": Escape(of: "sgd", method: Sgd, lr: 0.03, batch: 50, probe: 100, max_steps: 20,
                kinds: (look_sam: (k: 2))),"#,
            "kinds.ron",
        );
        let key = |n: &str| get(n).key.unwrap();
        let prefixes = |n: &str| get(n).prefix.unwrap().keys;
        assert_eq!(key("look"), key("look-k5"));
        assert_ne!(key("look"), key("look-k3"));
        assert_ne!(key("look"), key("sam"));
        assert_eq!(key("sgd"), key("sgd-k3"));
        // SAM's newer settings at their defaults key as before they existed.
        assert_eq!(key("sam"), key("sam-all"));
        assert_ne!(key("sam"), key("sam-on"));
        assert_ne!(key("sam"), key("sam-cos"));
        assert_eq!(key("sam"), key("sam-k3"));
        assert_eq!(key("psam"), key("psam-sam"));
        assert_ne!(key("psam"), key("psam-look"));
        assert_eq!(key("escape-sgd"), key("escape-sgd-k2"));
        assert_ne!(key("escape-look"), key("escape-sgd"));
        let doc = get("look-k3").doc.unwrap();
        assert_eq!(
            doc["spec"]["kinds"],
            serde_json::json!({"look_sam": {"k": 3}})
        );
        assert!(get("look").doc.unwrap()["spec"].get("kinds").is_none());
        // A grid over a kind's setting by path: the points are the stages
        // written out.
        assert_eq!(key("grid[kinds.look_sam.k=3]"), key("look-k3"));
        assert_eq!(key("grid[kinds.look_sam.k=5]"), key("look"));
        let (a, b) = (prefixes("sw-k3"), prefixes("sw-k2"));
        assert_eq!(a[..=2], b[..=2], "the SGD epochs are shared");
        assert_eq!(a[..=2], prefixes("sgd")[..=2]);
        assert_ne!(a[3], b[3]);
        // Planned cost of the 4 epochs: LookSAM k = 3 costs 4/3 of an SGD
        // step a step, SAM 2.
        let steps = 4.0 * get("sam").prefix.unwrap().spe as f64;
        let train_cost = |n: &str| get(n).prefix.unwrap().cost_from(0);
        assert_eq!(train_cost("sam"), 2.0 * steps);
        assert!((train_cost("look-k3") - 4.0 / 3.0 * steps).abs() < 1e-9);
    }

    #[test]
    fn known_keys_do_not_change() {
        assert_eq!(SEMANTICS, 1, "a new SEMANTICS needs new pins");
        let got = keys();
        assert_eq!(got.len(), PINNED.len());
        for ((stage, key, prefixes), (want_stage, want_key, want_prefixes)) in
            got.iter().zip(PINNED)
        {
            assert_eq!(stage, want_stage);
            assert_eq!(key, want_key, "the key of {stage} changed");
            assert_eq!(
                prefixes, want_prefixes,
                "the prefix keys of {stage} changed"
            );
        }
    }
}
